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
"""

from __future__ import annotations

import onnx

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
