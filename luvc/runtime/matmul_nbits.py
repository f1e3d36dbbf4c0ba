"""Weight-only INT8 products as ONNX Runtime's ``MatMulNBits``, with their weights converted once per export.

An ``int8w`` export (and an INT4 export's INT8 LM head) stores each product's weight as int8 ``(K, N)`` with a scale
per output channel, read through a ``DequantizeLinear`` into a float ``MatMul``. ONNX Runtime's CPU EP runs that as
``MatMulNBits(bits=8)``: its ``QDQSelectorActionTransformer`` rewrites every such pair while the session is made,
transposing and re-blocking the weight, and it did so in every LLM session (prefill per bucket, text prefill, decode)
of every start: 1.6 of a decode session's 3.5 s at Qwen2-VL-2B's widths (8 layers), and one converted copy of the
LLM's weights per session.

``weight_only_products`` finds the pairs that rewrite would take and ``as_matmul_nbits`` makes it before ONNX Runtime
sees the graph, with the weight in the operator's layout (``blocked_weight``: uint8 ``(N, K/32, 32)``, zero point
128) and one scale per block (``blocked_scales``), the same numbers ONNX Runtime makes itself (the decode graph's
logits are bit-identical). ``luvc.runtime.weights.MappedWeights`` converts each weight once, keeps it in the start-up
cache (``luvc.cache``) and gives the one array to every session; ONNX Runtime then only prepacks it (per session).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx
from onnx import helper

MS_DOMAIN = "com.microsoft"
BITS = 8
# what ONNX Runtime's own rewrite uses (its session options ``session.qdq_matmulnbits_block_size`` and
# ``session.qdq_matmulnbits_accuracy_level`` default to these): 32 weights a block, activations quantized to int8
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4
ZERO_POINT = 1 << (BITS - 1)  # MatMulNBits' default zero point when none is given
WEIGHT_SUFFIX, SCALES_SUFFIX = "/matmul_nbits", "/matmul_nbits_scales"


@dataclasses.dataclass(frozen=True)
class NBitsProduct:
    """One ``DequantizeLinear -> MatMul`` pair with a per-output-channel int8 weight ``(k, n)``: the weight's and
    the scales' initializer names, and the two nodes."""

    dequantize: onnx.NodeProto
    matmul: onnx.NodeProto
    weight: str
    scales: str
    k: int
    n: int

    @property
    def blocked_names(self) -> tuple[str, str]:
        """The names of the converted weight and scales in the rewritten graph."""
        return self.weight + WEIGHT_SUFFIX, self.scales + SCALES_SUFFIX


def weight_only_products(model: onnx.ModelProto) -> list[NBitsProduct]:
    """The pairs of ``model`` whose product ONNX Runtime runs as ``MatMulNBits``: a ``MatMul`` whose second input is
    the only reader of a ``DequantizeLinear`` of a 2-D int8 initializer along axis 1 (one scale per column, no zero
    point or a zero one) and whose first input is not itself dequantized (an INT8 Q/DQ product, which fuses
    otherwise)."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    readers: collections.Counter[str] = collections.Counter(name for node in graph.node for name in node.input)
    graph_outputs = {output.name for output in graph.output}
    products = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        activation = producers.get(node.input[0])
        if activation is not None and activation.op_type == "DequantizeLinear":
            continue
        if readers[dequantize.output[0]] != 1 or dequantize.output[0] in graph_outputs:
            continue
        weight = initializers.get(dequantize.input[0])
        scales = initializers.get(dequantize.input[1])
        if weight is None or scales is None or weight.data_type != onnx.TensorProto.INT8 or len(weight.dims) != 2:
            continue
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in dequantize.attribute}
        if attributes.get("axis", 1) != 1 or attributes.get("block_size", 0) or list(scales.dims) != [weight.dims[1]]:
            continue
        if len(dequantize.input) > 2 and dequantize.input[2] and not _is_zero(initializers.get(dequantize.input[2])):
            continue
        products.append(NBitsProduct(dequantize, node, weight.name, scales.name, *map(int, weight.dims)))
    return products


def _is_zero(tensor: onnx.TensorProto | None) -> bool:
    """Whether ``tensor`` is an inline initializer of zeros (an external one is not read here)."""
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    return not np.any(onnx.numpy_helper.to_array(tensor))


def blocks(k: int) -> int:
    """Blocks of ``BLOCK_SIZE`` along a weight's ``k`` input rows (the last one padded)."""
    return -(-k // BLOCK_SIZE)


def blocked_weight(weight: np.ndarray) -> np.ndarray:
    """An int8 ``(K, N)`` weight as ``MatMulNBits``' ``B``: uint8 ``(N, blocks(K), BLOCK_SIZE)``, each output
    channel's column in blocks of ``BLOCK_SIZE`` input rows, offset by the zero point (the last block padded with it,
    a zero weight)."""
    k, n = weight.shape
    unsigned = np.full((n, blocks(k) * BLOCK_SIZE), ZERO_POINT, dtype=np.uint8)
    unsigned[:, :k] = weight.T.view(np.uint8) ^ np.uint8(ZERO_POINT)  # flipping the sign bit adds 128 modulo 256
    return unsigned.reshape(n, blocks(k), BLOCK_SIZE)


def blocked_scales(scales: np.ndarray, k: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """One scale per output channel as ``MatMulNBits``' scales: ``(N * blocks(k),)`` of ``dtype`` (the type the
    graph's activations have), the channel's scale for each of its blocks."""
    return np.repeat(np.asarray(scales, dtype=dtype).reshape(-1, 1), blocks(k), axis=1).reshape(-1)


def as_matmul_nbits(model: onnx.ModelProto, products: list[NBitsProduct], tensors: dict[str, onnx.TensorProto]) -> None:
    """Rewrite ``model`` in place: each pair of ``products`` becomes one ``MatMulNBits`` reading the converted
    weight and scales (``NBitsProduct.blocked_names``), whose initializers ``tensors`` holds by name (inline, or
    ``given`` declarations); the weights and scales no node reads any longer are dropped."""
    graph = model.graph
    fused = {id(product.matmul): product for product in products}
    gone = {id(product.dequantize) for product in products}
    nodes = []
    for node in graph.node:
        if id(node) in gone:
            continue
        product = fused.get(id(node))
        if product is None:
            nodes.append(node)
            continue
        weight, scales = product.blocked_names
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], weight, scales],
                list(node.output),
                name=f"{node.name or node.output[0]}/matmul_nbits",
                domain=MS_DOMAIN,
                K=product.k,
                N=product.n,
                bits=BITS,
                block_size=BLOCK_SIZE,
                accuracy_level=ACCURACY_LEVEL,
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    declared = {tensor.name for tensor in graph.initializer}
    graph.initializer.extend(tensor for name, tensor in tensors.items() if name not in declared)
    read = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def given(name: str, array: np.ndarray, location: str) -> onnx.TensorProto:
    """An initializer declaration of ``array``'s type and shape whose data the session is given as a shared
    initializer (``SessionOptions.add_initializer``); ``location`` is a file beside the graph for it to name (ONNX
    Runtime checks that it exists, and never reads it)."""
    tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor
