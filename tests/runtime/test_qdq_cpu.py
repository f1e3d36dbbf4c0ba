"""INT8 activations as uint8 for ONNX Runtime's x86 CPU kernels: the same outputs, and every projection fused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from luvc.runtime.qdq_cpu import unsigned_activations, uses_unsigned_activations

WIDTH, OUT = 64, 96


def shared_input_projections() -> onnx.ModelProto:
    """A norm-like output quantized once (int8, zero point 0, as an export writes it) and read by two projections,
    each with per-channel int8 weights and a quantized output: the q/k/v and gate/up layout."""
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
        weight = rng.integers(-127, 128, (WIDTH, OUT), dtype=np.int8)
        initializers += [
            numpy_helper.from_array(weight, f"{name}_w"),
            numpy_helper.from_array(rng.uniform(0.001, 0.01, OUT).astype(np.float32), f"{name}_w_scale"),
            numpy_helper.from_array(np.zeros(OUT, np.int8), f"{name}_w_zero"),
        ]
        nodes += [
            helper.make_node(
                "DequantizeLinear", [f"{name}_w", f"{name}_w_scale", f"{name}_w_zero"], [f"{name}_wf"], axis=1
            ),
            helper.make_node("MatMul", ["normed_dq", f"{name}_wf"], [f"{name}_mm"], name=f"{name}_proj"),
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


@pytest.mark.skipif(not uses_unsigned_activations(), reason="ONNX Runtime fuses int8 Q/DQ MatMuls as is off x86")
def test_every_projection_of_a_shared_activation_fuses_with_the_same_outputs(tmp_path):
    model = shared_input_projections()
    signed_session, signed = optimized(model, tmp_path, "signed")
    # ONNX Runtime's own int8 -> uint8 rewrite skips a QuantizeLinear read twice: both projections stay float
    assert [node.op_type for node in signed.graph.node].count("QLinearMatMul") == 0

    assert unsigned_activations(model) == 3  # the shared input and the two outputs
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
