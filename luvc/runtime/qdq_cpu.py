"""INT8 Q/DQ graphs as ONNX Runtime's x86 CPU kernels want them: uint8 activations, and products that never saturate.

An export's INT8 graphs quantize activations to int8 with zero point 0, as TensorRT requires. ONNX Runtime on x86
fuses a Q/DQ MatMul into ``QLinearMatMul`` only with uint8 activations, and its own int8-to-uint8 rewrite
(``QDQS8ToU8Transformer``) skips a QuantizeLinear read by more than one node, which every norm output feeding q/k/v
or gate/up is. Those projections then ran in float and dequantized their weights on every run: 190 of a 242 ms decode
step at 2B widths, against 65 ms in fp32. ``unsigned_activations`` moves every such pair to uint8 (zero point + 128:
the same values) before ONNX Runtime sees the graph, so every projection fuses.

uint8 activations times int8 weights (u8s8) are exact only on CPUs with VNNI (``VPDPBUSD``, or AMX): without it
(AVX2, and AVX-512 before Cascade Lake) ONNX Runtime's u8s8 kernels use ``VPMADDUBSW``, which adds two products into a
saturating int16 (255 x 127 x 2 > 32767), and an AMD Zen 3 computed other numbers than the graph means (31 of 96
outputs off by up to 2.5 scale steps in ``tests/runtime/test_qdq_cpu.py``). ``u8s8_is_exact`` asks the kernel; where
it saturates, the weights move to uint8 as well (zero point 128: the same values again), and ONNX Runtime's u8u8
kernels widen to int16 before multiplying, exactly, as its quantization guide advises ("the U8U8 format ... doesn't
have saturation issues").
"""

from __future__ import annotations

import collections
import functools
import platform

import numpy as np
import onnx
from onnx import numpy_helper

X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
SIGNED_WEIGHTS, UNSIGNED_WEIGHTS = "u8s8", "u8u8"
# the probe's product: 64 uint8 255s times int8 127s, 2 x 32385 per pair of products (VPMADDUBSW's int16 holds 32767)
PROBE_WIDTH = 64


def uses_unsigned_activations(machine: str | None = None) -> bool:
    """Whether ONNX Runtime's CPU kernels on this machine (or ``machine``, as ``platform.machine()`` names it) run Q/DQ
    MatMuls with uint8 activations (x86 only)."""
    return (machine or platform.machine()).lower() in X86


@functools.cache
def u8s8_is_exact() -> bool:
    """Whether ONNX Runtime's uint8 x int8 products on this CPU accumulate exactly: one ``MatMulInteger`` whose pairs
    of products saturate ``VPMADDUBSW``, checked against its int32 value. The kernel itself is asked, not the CPU's
    feature flags, so it is right wherever ONNX Runtime picks its kernels from other facts than /proc/cpuinfo shows
    (an emulator, a hypervisor hiding a feature, a later release that stops saturating). About 10 ms, once."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    weights = numpy_helper.from_array(np.full((PROBE_WIDTH, 1), 127, np.int8), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["activations", "weights"], ["product"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("activations", TensorProto.UINT8, [1, PROBE_WIDTH])],
        [helper.make_tensor_value_info("product", TensorProto.INT32, [1, 1])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (product,) = session.run(None, {"activations": np.full((1, PROBE_WIDTH), 255, np.uint8)})
    return int(product[0, 0]) == 255 * 127 * PROBE_WIDTH


def int8_encoding(u8s8_exact: bool | None = None, machine: str | None = None) -> str | None:
    """How ONNX Runtime on this CPU runs an INT8 export's products: ``"u8s8"`` (uint8 activations, the export's int8
    weights) where its u8s8 kernels are exact (``u8s8_is_exact``, or ``u8s8_exact``: VNNI or AMX), ``"u8u8"``
    (weights to uint8 too) where they saturate (AVX2, AVX-512 before VNNI), None off x86 (the graph runs as
    exported)."""
    if not uses_unsigned_activations(machine):
        return None
    exact = u8s8_is_exact() if u8s8_exact is None else u8s8_exact
    return SIGNED_WEIGHTS if exact else UNSIGNED_WEIGHTS


def encode_for_cpu(model: onnx.ModelProto, encoding: str | None = None) -> set[str]:
    """Rewrite the Q/DQ pairs of ``model`` in place for this CPU's ``int8_encoding`` (or ``encoding``: ``"u8s8"``,
    ``"u8u8"``, or ``""`` to leave them as exported). Return the
    names of the external weights now typed uint8, whose stored int8 bytes the caller gives shifted
    (``shift_to_uint8``); inline ones are converted here."""
    encoding = int8_encoding() if encoding is None else encoding
    if not encoding:
        return set()
    unsigned_activations(model)
    return unsigned_weights(model) if encoding == UNSIGNED_WEIGHTS else set()


def shift_to_uint8(values: np.ndarray) -> np.ndarray:
    """int8 values as uint8 with zero point 128 (the same numbers): flipping the sign bit adds 128 modulo 256."""
    return values.view(np.uint8) ^ np.uint8(0x80)


def unsigned_activations(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place: each activation QuantizeLinear with a scalar int8 zero point, and the
    DequantizeLinear nodes reading it (all of its readers, with the same zero point), to uint8 with the zero point
    plus 128. Return how many QuantizeLinear nodes changed."""
    pairs = _signed_pairs(model)
    graph = model.graph
    for quantize, readers, zero_point in pairs:
        name = f"{quantize.output[0]}/uint8_zero_point"
        unsigned = np.array(int(zero_point) + 128, dtype=np.uint8)
        graph.initializer.append(numpy_helper.from_array(unsigned, name))
        for node in (quantize, *readers):
            node.input[2] = name
    moved = {quantize.output[0] for quantize, _, _ in pairs}
    kept = [info for info in graph.value_info if info.name not in moved]  # their recorded type was int8
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return len(pairs)


def unsigned_weights(model: onnx.ModelProto) -> set[str]:
    """Rewrite ``model`` in place: each int8 weight read only by DequantizeLinear nodes with one int8 zero point
    (scalar or per channel) becomes uint8 with that zero point plus 128. Inline weights are converted; external ones
    are only retyped, and their names returned: their file still holds int8 bytes."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            readers[name].append(node)
    external: set[str] = set()
    for name, weight in initializers.items():
        if weight.data_type != onnx.TensorProto.INT8 or not readers[name]:
            continue
        zero_points = {_int8_zero_point(initializers, reader) for reader in readers[name]}
        if any(reader.op_type != "DequantizeLinear" or reader.input[0] != name for reader in readers[name]):
            continue
        if len(zero_points) != 1 or None in zero_points:
            continue
        (zero_point_name,) = zero_points
        shifted_name = f"{name}/uint8_zero_point"
        shifted = shift_to_uint8(numpy_helper.to_array(initializers[zero_point_name]))
        graph.initializer.append(numpy_helper.from_array(shifted, shifted_name))
        for reader in readers[name]:
            reader.input[2] = shifted_name
        if weight.data_location == onnx.TensorProto.EXTERNAL:
            weight.data_type = onnx.TensorProto.UINT8
            external.add(name)
        else:
            weight.CopyFrom(numpy_helper.from_array(shift_to_uint8(numpy_helper.to_array(weight)), name))
    names = set(initializers)
    kept = [info for info in graph.value_info if info.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return external


def _int8_zero_point(initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> str | None:
    """The name of ``node``'s zero point when it is an int8 initializer, else None."""
    if len(node.input) < 3 or node.input[2] not in initializers:
        return None
    return node.input[2] if initializers[node.input[2]].data_type == onnx.TensorProto.INT8 else None


def _signed_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto], int]]:
    """(QuantizeLinear, its DequantizeLinear readers, the int8 zero point) for every activation pair that can move."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    graph_outputs = {output.name for output in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            readers[name].append(node)
    pairs = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers or node.output[0] in graph_outputs:
            continue
        zero_point = _int8_scalar(initializers, node)
        dequantizes = readers[node.output[0]]
        if zero_point is None or any(attribute.name == "output_dtype" for attribute in node.attribute):
            continue
        if dequantizes and all(
            reader.op_type == "DequantizeLinear" and _int8_scalar(initializers, reader) == zero_point
            for reader in dequantizes
        ):
            pairs.append((node, dequantizes, zero_point))
    return pairs


def _int8_scalar(initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> int | None:
    """The node's zero point when it is one int8 value held in an initializer, else None."""
    name = _int8_zero_point(initializers, node)
    if name is None:
        return None
    values = numpy_helper.to_array(initializers[name]).reshape(-1)
    return int(values[0]) if values.size == 1 else None
