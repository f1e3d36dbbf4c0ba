"""INT8 Q/DQ graphs for ONNX Runtime's x86 CPU kernels: uint8 activations, uint8 weights where u8s8 would saturate,
the same outputs, and every projection fused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from luvc.runtime.qdq_cpu import (
    SIGNED_WEIGHTS,
    UNSIGNED_WEIGHTS,
    encode_for_cpu,
    int8_encoding,
    u8s8_is_exact,
    unsigned_activations,
    unsigned_weights,
    uses_unsigned_activations,
)

WIDTH, OUT = 64, 96


def shared_input_projections(weights=None, quantized_outputs: bool = True) -> onnx.ModelProto:
    """A norm-like output quantized once (int8, zero point 0, as an export writes it) and read by two projections,
    each with per-channel int8 weights (``weights``, default random) and a quantized output (or a float one, as
    calibrate writes them): the q/k/v and gate/up layout."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "y_zero"),
        numpy_helper.from_array(np.full(WIDTH, 1.5, np.float32), "gain"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["normed"], name="norm"),
        helper.make_node("QuantizeLinear", ["normed", "x_scale", "x_zero"], ["normed_q"], name="normed_Q"),
        helper.make_node("DequantizeLinear", ["normed_q", "x_scale", "x_zero"], ["normed_dq"], name="normed_DQ"),
    ]
    for name in ("a", "b"):
        weight = rng.integers(-127, 128, (WIDTH, OUT), dtype=np.int8) if weights is None else weights
        initializers += [
            numpy_helper.from_array(weight, f"{name}_w"),
            numpy_helper.from_array(rng.uniform(0.001, 0.01, OUT).astype(np.float32), f"{name}_w_scale"),
            numpy_helper.from_array(np.zeros(OUT, np.int8), f"{name}_w_zero"),
        ]
        product = f"{name}_mm" if quantized_outputs else name
        nodes += [
            helper.make_node(
                "DequantizeLinear", [f"{name}_w", f"{name}_w_scale", f"{name}_w_zero"], [f"{name}_wf"], axis=1
            ),
            helper.make_node("MatMul", ["normed_dq", f"{name}_wf"], [product], name=f"{name}_proj"),
        ]
        if quantized_outputs:
            nodes += [
                helper.make_node("QuantizeLinear", [f"{name}_mm", "y_scale", "y_zero"], [f"{name}_q"]),
                helper.make_node("DequantizeLinear", [f"{name}_q", "y_scale", "y_zero"], [name]),
            ]
    graph = helper.make_graph(
        nodes,
        "projections",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, OUT]) for name in ("a", "b")],
        initializers,
        value_info=[helper.make_tensor_value_info("normed_q", TensorProto.INT8, [1, WIDTH])],  # as shape inference
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def optimized(model: onnx.ModelProto, tmp_path, name: str) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, onnx.load(options.optimized_model_filepath)


X86_ONLY = pytest.mark.skipif(
    not uses_unsigned_activations(), reason="ONNX Runtime fuses int8 Q/DQ MatMuls as is off x86"
)


@X86_ONLY
def test_every_projection_of_a_shared_activation_fuses_with_the_same_outputs(tmp_path):
    """On this CPU's encoding (u8s8 with VNNI, u8u8 without): an AMD Zen 3 gave other outputs under u8s8."""
    model = shared_input_projections()
    signed_session, signed = optimized(model, tmp_path, "signed")
    # ONNX Runtime's own int8 -> uint8 rewrite skips a QuantizeLinear read twice: both projections stay float
    assert [node.op_type for node in signed.graph.node].count("QLinearMatMul") == 0

    encode_for_cpu(model)
    unsigned_session, unsigned = optimized(model, tmp_path, "unsigned")
    assert [node.op_type for node in unsigned.graph.node].count("QLinearMatMul") == 2

    x = np.random.default_rng(1).normal(size=(1, WIDTH)).astype(np.float32)
    for before, after in zip(signed_session.run(None, {"x": x}), unsigned_session.run(None, {"x": x})):
        np.testing.assert_array_equal(after, before)
        assert np.count_nonzero(before) > OUT // 2


def test_only_int8_activation_pairs_move():
    model = shared_input_projections()
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    initializers["y_zero"].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), "y_zero"))  # already uint8
    assert unsigned_activations(model) == 1
    weights = [node for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0].endswith("_w")]
    assert all(node.input[2].endswith("_w_zero") for node in weights)  # weights stay int8
    model = shared_input_projections()
    model.graph.node.append(helper.make_node("Identity", ["normed_q"], ["raw"]))  # read as int8 by another node
    assert unsigned_activations(model) == 2


@pytest.mark.parametrize(
    ("u8s8_exact", "machine", "encoding"),
    [
        (False, "x86_64", UNSIGNED_WEIGHTS),  # AVX2 (AMD Zen 3, Intel to Coffee Lake), AVX-512 before VNNI: saturates
        (True, "x86_64", SIGNED_WEIGHTS),  # VNNI or AMX
        (True, "AMD64", SIGNED_WEIGHTS),  # Windows' name
        (False, "aarch64", None),  # Arm: the int8 graph runs as exported
    ],
)
def test_the_encoding_follows_whether_u8s8_is_exact(u8s8_exact, machine, encoding):
    assert int8_encoding(u8s8_exact, machine) == encoding


@X86_ONLY
def test_the_probe_agrees_with_the_cpu_features():
    """ONNX Runtime's u8s8 kernels are exact where the CPU has VNNI (AVX-512 VNNI or AVX-VNNI) and saturate on AVX2
    alone; /proc/cpuinfo names the features (under an emulator it names the host's, so this test is for real CPUs)."""
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    assert u8s8_is_exact() == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


@X86_ONLY
@pytest.mark.parametrize("encoding", [UNSIGNED_WEIGHTS, SIGNED_WEIGHTS])
def test_products_that_saturate_vpmaddubsw_are_exact_against_int32(tmp_path, encoding):
    """Activations quantized to 127 (uint8 255) against weights of 127 and -127: every pair of products is 2 x 32385,
    past int16, and a whole column sums far past it. u8u8 must be exact on every x86 CPU; u8s8 is checked only where
    this CPU has VNNI (it is the encoding chosen there), and is expected off by much on one without."""
    if encoding == SIGNED_WEIGHTS and not u8s8_is_exact():
        pytest.skip("ONNX Runtime's u8s8 kernels saturate on this CPU (no VNNI), so the runtime never picks u8s8 here")
    weights = np.full((WIDTH, OUT), 127, np.int8)
    weights[:, OUT // 2 :] = -127
    weights[::2, OUT // 4] = -127  # one column whose pairs cancel: 0
    model = shared_input_projections(weights, quantized_outputs=False)
    encode_for_cpu(model, encoding)
    session, optimized_model = optimized(model, tmp_path, encoding)
    fused = {"QLinearMatMul", "MatMulIntegerToFloat"}
    assert sum(node.op_type in fused for node in optimized_model.graph.node) == 2

    x = np.full((1, WIDTH), 127 * 0.02 / 1.5, np.float32)  # quantizes to 127 after the norm's gain
    x[0, 1::3] *= -1
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    quantized = np.rint(x * 1.5 / 0.02).astype(np.int64)
    for name, output in zip(("a", "b"), session.run(None, {"x": x})):
        zero_point = initializers.get(f"{name}_w/uint8_zero_point", 0)  # 128 where the weights went uint8
        stored = initializers[f"{name}_w"].astype(np.int64) - zero_point
        np.testing.assert_array_equal(stored, weights)  # the same numbers, whichever encoding
        exact = (quantized @ stored).astype(np.float64) * 0.02 * initializers[f"{name}_w_scale"]
        np.testing.assert_allclose(output, exact, rtol=1e-6, atol=1e-6)


def test_unsigned_weights_shift_inline_weights_and_retype_external_ones(tmp_path):
    model = shared_input_projections()
    before = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    onnx.save_model(model, tmp_path / "g.onnx", save_as_external_data=True, location="w.data", size_threshold=4096)
    stored = onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)
    assert unsigned_weights(stored) == {"a_w", "b_w"}  # 64 x 96 bytes each: external
    types = {tensor.name: tensor.data_type for tensor in stored.graph.initializer}
    assert types["a_w"] == types["b_w"] == TensorProto.UINT8
    zero_points = {
        t.name: numpy_helper.to_array(t) for t in stored.graph.initializer if t.name.endswith("uint8_zero_point")
    }
    assert all((values == 128).all() and values.shape == (OUT,) for values in zero_points.values())

    inline = shared_input_projections()
    assert unsigned_weights(inline) == set()
    after = {tensor.name: numpy_helper.to_array(tensor) for tensor in inline.graph.initializer}
    assert after["a_w"].dtype == np.uint8
    np.testing.assert_array_equal(after["a_w"].astype(np.int16) - 128, before["a_w"])
    assert after["x_zero"].dtype == np.int8  # activations are unsigned_activations' work


def test_a_weight_read_by_something_else_than_its_dequantize_stays_int8():
    model = shared_input_projections()
    model.graph.node.append(helper.make_node("Cast", ["a_w"], ["a_w_float"], to=TensorProto.FLOAT))
    unsigned_weights(model)
    types = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    assert types["a_w"] == TensorProto.INT8
    assert types["b_w"] == TensorProto.UINT8


EMULATED_ZEN3 = "EPYC-Milan-v1"  # QEMU's AMD Zen 3: AVX2, no AVX-512, no VNNI


@pytest.mark.slow
@X86_ONLY
def test_an_avx2_only_cpu_computes_what_the_graph_means():
    """This file's tests again on an emulated AMD Zen 3 (QEMU user mode, ``apt-get install qemu-user``; .ci/run
    installs it), whatever CPU runs the suite: there ONNX Runtime's u8s8 kernels saturate (the probe says so), and the
    u8u8 encoding gives the signed graph's outputs exactly. The feature-flag test is left out: under QEMU,
    /proc/cpuinfo is the host's."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("QEMU user mode is not installed: `apt-get install qemu-user`")
    emulated = [qemu, "-cpu", EMULATED_ZEN3, sys.executable]
    probe = subprocess.run(
        [*emulated, "-c", "from luvc.runtime.qdq_cpu import int8_encoding as e; print(e())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.stdout.split() == [UNSIGNED_WEIGHTS], probe.stderr[-2000:]
    # without tests/conftest.py (it imports torch and the exporter, which this file needs not: about a minute emulated)
    options = ["-q", "-rs", "-p", "no:xdist", "-o", "addopts=", "--noconftest", "-m", "not slow"]
    tests = subprocess.run(
        [*emulated, "-m", "pytest", *options, __file__, "-k", "not probe_agrees"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-4000:]
    assert " passed" in tests.stdout and " failed" not in tests.stdout
    skipped = [line for line in tests.stdout.splitlines() if line.startswith("SKIPPED")]
    # the u8s8 cases, and only them: never chosen there
    assert len(skipped) == 2 and all("never picks u8s8 here" in line for line in skipped), skipped


@X86_ONLY
@pytest.mark.parametrize("encoding", [UNSIGNED_WEIGHTS, SIGNED_WEIGHTS])
def test_shared_external_int8_weights_run_in_either_encoding(tmp_path, monkeypatch, encoding):
    """The pipeline's path: int8 weights in an external file, given to the session as shared arrays (as weights over
    ``SMALL_BYTES`` are); in u8u8 each is handed out shifted (one copy), and the outputs are the signed graph's."""
    from luvc.runtime import weights as weights_module
    from luvc.runtime.weights import MappedWeights

    monkeypatch.setattr(weights_module, "SMALL_BYTES", 0)  # this graph's 6 KiB weights shared as a model's MiBs are
    if encoding == SIGNED_WEIGHTS and not u8s8_is_exact():
        pytest.skip("ONNX Runtime's u8s8 kernels saturate on this CPU (no VNNI), so the runtime never picks u8s8 here")
    model = shared_input_projections(quantized_outputs=False)
    stored = onnx.ModelProto.FromString(
        model.SerializeToString()
    )  # save_model moves the data out of the proto it saves
    onnx.save_model(stored, tmp_path / "g.onnx", save_as_external_data=True, location="w.data", size_threshold=4096)
    weights = MappedWeights(tmp_path, int8_encoding=encoding)
    options = ort.SessionOptions()
    serialized, values = weights.session_model(onnx.load(str(tmp_path / "g.onnx"), load_external_data=False), options)
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    assert len(values) == 2  # the two weight matrices, shared
    assert weights.converted_bytes == (2 * WIDTH * OUT if encoding == UNSIGNED_WEIGHTS else 0)

    x = np.random.default_rng(3).normal(size=(1, WIDTH)).astype(np.float32) * 3
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # DequantizeLinear, float MatMul
    unfused = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for fused, reference in zip(session.run(None, {"x": x}), unfused.run(None, {"x": x})):
        np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)
