"""Weight-only products as ONNX Runtime's ``MatMulNBits``, with their weights converted once per export.

An ``int8w`` export (and an INT4 export's INT8 LM head) stores each product's weight as int8 ``(K, N)`` with a scale
per output channel, an INT4 export as int4 with a scale per block of input rows, each read through a
``DequantizeLinear`` into a float ``MatMul``. ONNX Runtime's CPU EP runs such a pair as ``MatMulNBits``: its
``QDQSelectorActionTransformer`` rewrites every one while the session is made, transposing and re-blocking the weight,
and it did so in every LLM session (prefill per bucket, text prefill, decode) of every start: 1.6 of a decode
session's 3.5 s at Qwen2-VL-2B's widths (8 layers, int8w), and one converted copy of the LLM's weights per session.

``weight_only_products`` finds the pairs that rewrite would take and ``as_matmul_nbits`` makes it before ONNX Runtime
sees the graph, with the weight in the operator's layout (``blocked_weight``: uint8 ``(N, blocks, block bytes)``,
each column's values offset by the default zero point, INT4 two to a byte) and one scale per block
(``blocked_scales``): the same numbers ONNX Runtime makes itself (the graphs' outputs are bit-identical).
``luvc.runtime.weights.MappedWeights`` converts each weight once, keeps it in the start-up cache (``luvc.cache``)
and gives the one array to every session; ONNX Runtime then only prepacks it (per session).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx
from onnx import helper

MS_DOMAIN = "com.microsoft"
# what ONNX Runtime's own rewrite of a per-channel INT8 weight uses (its session options
# ``session.qdq_matmulnbits_block_size`` and ``session.qdq_matmulnbits_accuracy_level`` default to these): 32 weights a
# block; activations quantized to int8 inside the product
INT8_BLOCK_SIZE = 32
ACCURACY_LEVEL = 4
WEIGHT_SUFFIX, SCALES_SUFFIX = "/matmul_nbits", "/matmul_nbits_scales"


@dataclasses.dataclass(frozen=True)
class NBitsProduct:
    """One ``DequantizeLinear -> MatMul`` pair with a weight ``(k, n)`` of ``bits`` (8: one scale per output
    column; 4: one per ``block_size`` input rows of a column): the weight's and the scales' initializer names, and the
    two nodes."""

    dequantize: onnx.NodeProto
    matmul: onnx.NodeProto
    weight: str
    scales: str
    k: int
    n: int
    bits: int = 8
    block_size: int = INT8_BLOCK_SIZE

    @property
    def blocked_names(self) -> tuple[str, str]:
        """The names of the converted weight and scales in the rewritten graph."""
        return self.weight + WEIGHT_SUFFIX, self.scales + SCALES_SUFFIX

    @property
    def blocks(self) -> int:
        """Blocks of ``block_size`` along the weight's ``k`` input rows (the last one padded)."""
        return -(-self.k // self.block_size)

    @property
    def blocked_shape(self) -> tuple[int, int, int]:
        """The shape of the converted weight: ``(N, blocks, bytes of a block)``."""
        return self.n, self.blocks, self.block_size * self.bits // 8


def weight_only_products(model: onnx.ModelProto) -> list[NBitsProduct]:
    """The pairs of ``model`` whose product ONNX Runtime runs as ``MatMulNBits``: a ``MatMul`` whose second input is
    the only reader of a ``DequantizeLinear`` of a 2-D initializer, int8 along axis 1 (one scale per column) or int4
    in blocks along axis 0 (``block_size``), with no zero point or a zero one, and whose first input is not itself
    dequantized (an INT8 Q/DQ product, which fuses otherwise)."""
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
        if weight is None or scales is None or len(weight.dims) != 2:
            continue
        if len(dequantize.input) > 2 and dequantize.input[2] and not _is_zero(initializers.get(dequantize.input[2])):
            continue
        k, n = map(int, weight.dims)
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in dequantize.attribute}
        axis, block_size = attributes.get("axis", 1), attributes.get("block_size", 0)
        if weight.data_type == onnx.TensorProto.INT8 and axis == 1 and not block_size and list(scales.dims) == [n]:
            products.append(NBitsProduct(dequantize, node, weight.name, scales.name, k, n))
        elif weight.data_type == onnx.TensorProto.INT4 and axis == 0 and block_size >= 16:
            product = NBitsProduct(dequantize, node, weight.name, scales.name, k, n, 4, block_size)
            if list(scales.dims) == [product.blocks, n] and not block_size & (block_size - 1):
                products.append(product)
    return products


def _is_zero(tensor: onnx.TensorProto | None) -> bool:
    """Whether ``tensor`` is an inline initializer of zeros (an external one is not read here)."""
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    return not np.any(onnx.numpy_helper.to_array(tensor))


def unpacked_int4(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The int8 values of an INT4 tensor of ``shape`` stored as ONNX packs it (two to a byte, the first in the low
    nibble, row-major)."""
    size = shape[0] * shape[1]
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:size].astype(np.int8)
    return ((nibbles ^ 8) - 8).reshape(shape)  # sign-extended from 4 bits


def blocked_weight(product: NBitsProduct, weight: np.ndarray) -> np.ndarray:
    """``product``'s weight (int8 values ``(K, N)``, INT4 ones unpacked) as ``MatMulNBits``' ``B``: uint8
    ``product.blocked_shape``, each output column's values in blocks of ``block_size`` input rows, offset by the zero
    point ``2**(bits-1)`` (the last block padded with it, a zero weight), INT4 two to a byte (the first in the low
    nibble)."""
    zero_point = 1 << (product.bits - 1)
    rows = product.blocks * product.block_size
    unsigned = np.full((product.n, rows), zero_point, dtype=np.uint8)
    unsigned[:, : product.k] = (weight.T.astype(np.int16) + zero_point).astype(np.uint8)
    packed = unsigned[:, 0::2] | (unsigned[:, 1::2] << 4) if product.bits == 4 else unsigned
    return packed.reshape(product.blocked_shape)


def blocked_scales(product: NBitsProduct, scales: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """``product``'s scales as ``MatMulNBits``' scales: ``(N * blocks,)`` of ``dtype`` (the type the graph's
    activations have), a column's blocks in order; a per-column scale repeated for each of its blocks."""
    values = np.asarray(scales, dtype=dtype)
    if product.bits == 8:  # one per column, (N,)
        return np.repeat(values.reshape(-1, 1), product.blocks, axis=1).reshape(-1)
    return np.ascontiguousarray(values.T).reshape(-1)  # (blocks, N) -> each column's blocks


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
                bits=product.bits,
                block_size=product.block_size,
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
