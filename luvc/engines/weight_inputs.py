"""Weights as engine inputs: the engines of one export hold no copy of the weights they share.

Every graph of an export with a ``weights.data`` points into that file, and a tensor that several graphs use (the
LLM of each prefill bucket and of decode, the vision encoder of each bucket) is stored there once. A TensorRT engine
built from such a graph would copy its weights into the engine, so a process running the engines of three buckets
and decode held the LLM four times on the device.

In the ``shared`` layout the builder turns each external weight that a ``MatMul``/``Gemm`` multiplies by, or that a
``Gather`` looks rows up in, into a network input of the same name. The runtime reads each such tensor of
``weights.data`` once onto the device (``luvc.runtime.weights.MappedWeights``) and binds that buffer to every engine
that takes it. What stays inside the engines is small: norm scales, biases, convolution kernels (a patch embedding),
constants, and weights behind a ``DequantizeLinear`` (INT8/FP8/INT4 exports, whose quantized weights TensorRT folds at
build time: TensorRT 10.3's ``IDequantizeLayer`` takes per-channel and block-quantized input only from an
``IConstantLayer``). The ``embedded`` layout is the earlier one: every engine holds its own weights.

A weight-only export's LM head is INT8 (``luvc.calibration.weight_only``), which would sit inside every prefill and
decode engine: at Qwen2-VL-2B's widths 222.6 MiB each, more than the rest of an INT4 LLM. Its float table is on the
device anyway (the embedding engine looks tokens up in it), so the engines that compute the head once per request (the
prefills) multiply by that table again (``with_float_lm_head``), and only decode, which reads the whole head every
step, keeps the INT8 copy (``engine_graph``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx

from luvc.export.graph_metadata import FloatLmHead
from luvc.export.manifest import ExternalTensor

LAYOUTS = ("shared", "embedded")
# (op type, input index) through which a weight may reach the engine as a tensor: the matrix of a product and an
# embedding table. TensorRT takes both as tensors with no change of kernel class; convolution kernels and weights a
# DequantizeLinear reads are folded at build time and stay inside.
SHAREABLE_USES = frozenset({("MatMul", 1), ("Gemm", 1), ("Gather", 0)})


def shareable_weights(model: onnx.ModelProto) -> list[ExternalTensor]:
    """The external initializers of ``model`` (loaded without its external data) that become engine inputs: every
    use of each is in ``SHAREABLE_USES``."""
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, index))
    return [
        ExternalTensor.of(tensor)
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL and uses.get(tensor.name, {("", -1)}) <= SHAREABLE_USES
    ]


def with_weight_inputs(model: onnx.ModelProto, weights: list[ExternalTensor]) -> onnx.ModelProto:
    """A copy of ``model`` in which ``weights`` are graph inputs (same name, type and shape) instead of
    initializers."""
    moved = {tensor.name for tensor in weights}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [tensor for tensor in copy.graph.initializer if tensor.name not in moved]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    copy.graph.input.extend(
        onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.shape)) for tensor in weights
    )
    return copy


def external_initializers(models: Iterable[onnx.ModelProto]) -> dict[str, onnx.TensorProto]:
    """The external initializers of ``models`` (loaded without their external data) by name: where each tensor's
    data is, for a graph that reads a tensor another graph holds."""
    return {
        tensor.name: tensor
        for model in models
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    }


def with_float_lm_head(model: onnx.ModelProto, tables: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose INT8 LM head (``FloatLmHead`` in its metadata) multiplies by its float table again,
    ``Gemm(x, table, transB=1)`` as exported, the table's external data found in ``tables``; the head's INT8 weight
    and scales go when nothing else reads them. ``model`` itself where it records no such head or the export holds no
    float table of that name."""
    head = FloatLmHead.of(model)
    if head is None or head.table not in tables:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    nodes, dequantize = [], None
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] == head.dequantized:
            node = onnx.helper.make_node("Gemm", [node.input[0], head.table], list(node.output), node.name, transB=1)
        elif node.op_type == "DequantizeLinear" and node.output[0] == head.dequantized:
            dequantize = node
        nodes.append(node)
    read = {name for node in nodes for name in node.input} | {output.name for output in graph.output}
    dropped = set()
    if dequantize is not None and head.dequantized not in read:  # the INT8 weight and its scales, read by no other
        nodes.remove(dequantize)
        dropped = set(dequantize.input) - {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name not in dropped and tensor.name != head.table]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, tables[head.table]])
    return copy


def engine_graph(model: onnx.ModelProto, kind: str, tables: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Graph ``model`` of ``kind`` as its engine is built in the shared layout: outside decode, an INT8 LM head reads
    its float table (``with_float_lm_head``); decode reads the whole head each step and keeps it INT8."""
    return model if kind == "decode" else with_float_lm_head(model, tables)
