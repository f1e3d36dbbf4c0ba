"""INT8 Q/DQ graphs as ONNX Runtime's x86 CPU kernels want them: activations quantized to uint8.

An export's INT8 graphs quantize activations to int8 with zero point 0, as TensorRT requires. ONNX Runtime on x86
fuses a Q/DQ MatMul into ``QLinearMatMul`` only with uint8 activations, and its own int8-to-uint8 rewrite
(``QDQS8ToU8Transformer``) skips a QuantizeLinear read by more than one node, which every norm output feeding q/k/v
or gate/up is. Those projections then ran in float and dequantized their weights on every run: 190 of a 242 ms decode
step at 2B widths, against 65 ms in fp32. ``unsigned_activations`` moves every such pair to uint8 (zero point + 128:
the same values) before ONNX Runtime sees the graph, so every projection fuses.
"""

from __future__ import annotations

import collections
import platform

import numpy as np
import onnx
from onnx import numpy_helper

X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def uses_unsigned_activations() -> bool:
    """Whether ONNX Runtime's CPU kernels on this machine run Q/DQ MatMuls with uint8 activations (x86 only)."""
    return platform.machine().lower() in X86


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
    if len(node.input) < 3 or node.input[2] not in initializers:
        return None
    tensor = initializers[node.input[2]]
    if tensor.data_type != onnx.TensorProto.INT8:
        return None
    values = numpy_helper.to_array(tensor).reshape(-1)
    return int(values[0]) if values.size == 1 else None
