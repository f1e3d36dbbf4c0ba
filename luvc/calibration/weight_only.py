"""Weight-only quantization of the LLM's linear layers (INT4, or INT8 as W8A16), in the Q/DQ form.

Each ``MatMul`` by a weight ``W`` of shape ``(K, N)`` becomes ``MatMul(x, DequantizeLinear(Wq, scales))`` with
symmetric values and positive scales, no zero point:

- ``int4``: one scale ``amax / 7`` per block of ``block_size`` consecutive input channels of each output column,
  ``Wq = round(W / scale)`` in [-7, 7] as packed int4; ``DequantizeLinear`` carries ``block_size`` (opset 21);
- ``int8w`` (and the LM head at either precision): one scale ``amax / 127`` per output column, ``Wq`` in
  [-127, 127] as int8, ``DequantizeLinear`` on axis 1.

Those are the weight-only patterns TensorRT builds into its INT4 and INT8 GEMMs (its ONNX parser wants positive
scales and no zero point, which is why this is not ONNX Runtime's ``MatMulNBitsQuantizer``: its symmetric mode maps
each block's largest weight to -8 and its scale can be negative), and ONNX Runtime's CPU provider fuses both into
``MatMulNBits`` at load (4 or 8 bits). Activations stay in floating point.

The LM head (151936 x 1536 at Qwen2-VL-2B's widths: 38% of the weights one decode step reads at 8 layers, 9% at
28) is INT8 at both precisions: a decode step reads all of it, and at INT4 its float copy would be most of the step.
Its ``Gemm`` (``transB``: the tied embedding table as stored) becomes a ``MatMul`` by the transposed quantized table;
the embedding lookup keeps the float table.

Two ways to pick the INT4 values, both with the same scales and format: round to nearest (``rtn``), which needs no
data, and GPTQ (``gptq``, Frantar et al. 2022), which rounds one input channel at a time and moves the rounding
error onto the channels not yet rounded, weighted by the inverse of ``H = X^T X`` of the layer's calibration inputs
``X``, so that the layer's output on those inputs moves least. GPTQ's inputs come from the source export run on the
calibration samples (``luvc.calibration.hessians``). INT8 rounds to nearest: a step of ``amax / 127`` leaves little
for GPTQ to recover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from luvc.errors import critical
from luvc.export.graph_metadata import FloatLmHead
from luvc.export.manifest import ExportManifest, ExternalTensor, external_tensors

DEFAULT_BLOCK_SIZE = 128  # what NVIDIA's INT4 AWQ/RTN recipes and ONNX Runtime's GenAI builder use
LEVELS = 7  # the largest quantized magnitude: [-7, 7], symmetric
DEQUANTIZE_OPSET = 21  # DequantizeLinear with int4 inputs and block_size
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
GPTQ_DAMPING = 0.01  # added to H's diagonal, as a share of its mean: what GPTQ's reference implementation uses

INT8_LEVELS = 127
LM_HEAD = "/lm_head/"  # the node-name fragment of the LM head's product

# a block quantizer: (the MatMul's node name, its (K, N) weight) -> (int4 values (K, N), scales (blocks, N))
BlockQuantizer = Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """How a weight-only precision stores one product's weight: ``bits`` a value, one scale per block of input
    channels of each output column (``blocked``) or per output column (DequantizeLinear axis 1)."""

    name: str
    bits: int
    blocked: bool


INT4 = WeightFormat("int4", 4, blocked=True)
INT8 = WeightFormat("int8", 8, blocked=False)
# weight-only precision -> the format of the decoder layers' products (the LM head is INT8 at each: ``LM_HEAD``)
LAYER_FORMATS = {"int4": INT4, "int8w": INT8}
BLOCKED_PRECISIONS = frozenset(name for name, form in LAYER_FORMATS.items() if form.blocked)  # take --block-size
QUANTIZED_TYPES = {onnx.TensorProto.INT4: INT4, onnx.TensorProto.INT8: INT8}


def check_block_size(block_size: int, hidden_size: int | None = None) -> None:
    """Refuse a block size that is not a power of two of at least 16 (what TensorRT and ONNX Runtime's MatMulNBits
    take), or, with the LLM's ``hidden_size``, one of more input channels than it, which most of its products read
    (such a block would be a whole column, padded with zeros); the message names the sizes this model takes."""
    largest = 256 if hidden_size is None else min(256, 1 << (max(hidden_size, 16).bit_length() - 1))
    takes = ", ".join(str(1 << bits) for bits in range(4, largest.bit_length()))
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16:
        critical(
            f"--block-size {block_size}: INT4 blocks hold a power of two of at least 16 input channels; pass {takes}."
        )
    if block_size & (block_size - 1):
        critical(f"--block-size {block_size} is not a power of two; pass {takes}.")
    if hidden_size is not None and block_size > hidden_size:
        critical(
            f"--block-size {block_size} is more than the {hidden_size} input channels of this model's products; pass "
            f"{takes}."
        )


def quantize_blocks(weights: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(int4 values (K, N), scales (ceil(K / block_size), N))`` of a ``(K, N)`` weight: round to nearest with one
    scale ``amax / 7`` per block of input channels (1 for an all-zero block, so every scale is positive), in the
    weight's dtype; the values are rounded with the scales as stored."""
    rows, columns = weights.shape
    blocks = -(-rows // block_size)
    padded = np.zeros((blocks * block_size, columns), dtype=np.float32)
    padded[:rows] = weights
    amax = np.abs(padded.reshape(blocks, block_size, columns)).max(axis=1)
    smallest = float(np.finfo(weights.dtype).tiny)  # a float16 amax / 7 must not round to a zero scale
    scales = np.where(amax > 0, np.maximum(amax / LEVELS, smallest), 1.0).astype(weights.dtype)
    values = np.rint(padded / np.repeat(scales.astype(np.float32), block_size, axis=0)).clip(-LEVELS, LEVELS)[:rows]
    return values.astype(ml_dtypes.int4), scales


def quantize_channels(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 values (K, N), scales (N,))`` of a ``(K, N)`` weight: round to nearest with one scale ``amax / 127``
    per output column (1 for an all-zero column), in the weight's dtype; the values are rounded with the scales as
    stored."""
    amax = np.abs(weights.astype(np.float32)).max(axis=0)
    smallest = float(np.finfo(weights.dtype).tiny)
    scales = np.where(amax > 0, np.maximum(amax / INT8_LEVELS, smallest), 1.0).astype(weights.dtype)
    values = np.rint(weights.astype(np.float32) / scales.astype(np.float32)).clip(-INT8_LEVELS, INT8_LEVELS)
    return values.astype(np.int8), scales


def gptq_blocks(
    weights: np.ndarray, hessian: np.ndarray, block_size: int, damping: float = GPTQ_DAMPING, act_order: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of a ``(K, N)`` weight with the ``(K, K)`` Hessian ``X^T X`` of its inputs: values and scales in the
    format ``quantize_blocks`` gives, with each input channel's rounding error spread over the channels not yet
    rounded so that ``X @ W`` moves least. ``act_order``: round the channels with the largest inputs first (GPTQ's
    "act-order"); the scales are each block's ``amax / 7`` of the weights as given ("static groups"), so the blocks
    stay contiguous input channels whatever the order."""
    import torch

    rows, columns = weights.shape
    work = torch.tensor(np.asarray(weights, dtype=np.float32).T.copy())  # (N, K): one output column per row
    h = torch.tensor(np.asarray(hessian, dtype=np.float64))
    dead = torch.diag(h) == 0  # channels no input ever reached: their weights cannot matter
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    _, scales = quantize_blocks(work.T.numpy().astype(weights.dtype), block_size)
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(rows)
    work, h = work[:, order], h[order][:, order]
    column_scales = torch.tensor(np.asarray(scales, dtype=np.float32))[order // block_size].T  # (N, K), in order
    h += damping * torch.diag(h).mean() * torch.eye(rows, dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    rounded_values = torch.zeros_like(work)
    for start in range(0, rows, block_size):  # GPTQ's lazy batches: the updates beyond a batch go in one product
        end = min(start + block_size, rows)
        batch, errors = work[:, start:end].clone(), torch.zeros(columns, end - start)
        local = inverse[start:end, start:end]
        for i in range(end - start):
            scale = column_scales[:, start + i]
            rounded = torch.round(batch[:, i] / scale).clamp(-LEVELS, LEVELS)
            rounded_values[:, start + i] = rounded
            error = (batch[:, i] - rounded * scale) / local[i, i]
            batch[:, i:] -= error[:, None] * local[i, i:][None, :]
            errors[:, i] = error
        work[:, end:] -= errors @ inverse[start:end, end:]
    values = torch.zeros_like(rounded_values)
    values[:, order] = rounded_values
    return values.T.numpy().astype(ml_dtypes.int4), scales


def gptq_quantizer(hessians: Mapping[str, np.ndarray], block_size: int) -> BlockQuantizer:
    """A block quantizer that runs GPTQ with ``hessians[node name]`` (round to nearest for a node without one), once
    per node and weight however many graphs hold them."""
    import hashlib

    done: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def quantize(node: str, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (node, hashlib.sha1(np.ascontiguousarray(weights).data).hexdigest())
        if key not in done:
            hessian = hessians.get(node)
            found = (
                quantize_blocks(weights, block_size) if hessian is None else gptq_blocks(weights, hessian, block_size)
            )
            done[key] = found
        return done[key]

    return quantize


def name_float_head(model: onnx.ModelProto, source: onnx.ModelProto, kept: Mapping[tuple[str, int, int], str]) -> None:
    """Re-record ``model``'s ``FloatLmHead`` under the name a graph that stays float reads the same bytes by (``kept``:
    names by file, offset and length; ``source``: the graph ``model`` was quantized from, loaded without its external
    data): a tied table is the embedding graph's ``embed_tokens.weight`` however the head's graph named it."""
    head = FloatLmHead.of(model)
    if head is None:
        return
    table = next((t for t in source.graph.initializer if t.name == head.table), None)
    if table is None or table.data_location != onnx.TensorProto.EXTERNAL:
        return
    entry = ExternalTensor.of(table)
    alias = kept.get((entry.location, entry.offset, entry.length))
    if alias is not None and alias != head.table:
        FloatLmHead(alias, head.dequantized).record(model)


def float_tensor_names(
    folder: Path, manifest: ExportManifest, quantized: Collection[str]
) -> dict[tuple[str, int, int], str]:
    """The external tensors of the export's graphs outside ``quantized`` (embed, vision: they stay as they are), names
    by file, offset and length."""
    kept = {}
    for name in manifest.graphs.keys() - set(quantized):
        model = onnx.load(str(Path(folder) / manifest.graphs[name].file), load_external_data=False)
        kept.update({(t.location, t.offset, t.length): t.name for t in external_tensors(model)})
    return kept


@dataclasses.dataclass(frozen=True)
class WeightProduct:
    """A product by a weight that weight-only quantization can replace: ``MatMul(x, W)`` with ``W`` a 2-D float
    initializer ``(K, N)``, or ``Gemm(x, W)`` with ``transB`` (``W`` stored ``(N, K)``, as the tied embedding table of
    an LM head is), no bias and unit ``alpha``."""

    activation: str
    weight: str
    input_channels: int
    transposed: bool


def weight_products(model: onnx.ModelProto, excluded: Sequence[str] = ()) -> dict[str, WeightProduct]:
    """The products weight-only quantization replaces in ``model`` (loaded with or without its external data), outside
    ``excluded``, by node name."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    skip, products = set(excluded), {}
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) >= 2 else None
        if node.name in skip or weight is None or weight.data_type not in FLOATS or len(weight.dims) != 2:
            continue
        if node.op_type == "MatMul":
            products[node.name] = WeightProduct(node.input[0], weight.name, int(weight.dims[0]), transposed=False)
        elif node.op_type == "Gemm" and _plain_gemm(node):
            transposed = bool(_attributes(node).get("transB", 0))
            channels = int(weight.dims[1] if transposed else weight.dims[0])
            products[node.name] = WeightProduct(node.input[0], weight.name, channels, transposed)
    return products


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _plain_gemm(node: onnx.NodeProto) -> bool:
    """A ``Gemm`` that is a product only: no bias, ``alpha`` 1, ``A`` not transposed."""
    attributes = _attributes(node)
    return len(node.input) == 2 and attributes.get("alpha", 1.0) == 1.0 and not attributes.get("transA", 0)


def quantize_weights(
    model: onnx.ModelProto,
    block_size: int,
    excluded: list[str],
    quantizer: BlockQuantizer | None = None,
    layers: WeightFormat = INT4,
) -> onnx.ModelProto:
    """``model`` (weights loaded) with every product ``weight_products`` finds outside ``excluded`` reading its weight
    through a ``DequantizeLinear`` (one per weight, however many products use it): the LM head INT8 per channel, the
    others in the ``layers`` format (INT4: ``quantizer`` picks the values, default round to nearest). The weights no
    longer read are dropped and the opset rises to 21."""
    check_block_size(block_size)
    quantizer = quantizer or (lambda _, weights: quantize_blocks(weights, block_size))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    products = weight_products(model, excluded)
    dequantized: dict[tuple[str, bool, str], str] = {}  # (weight, transposed, format) -> DequantizeLinear's output
    nodes, float_head = [], None
    for node in graph.node:
        product = products.get(node.name)
        if product is None:
            nodes.append(node)
            continue
        head = LM_HEAD in node.name.lower()
        form = INT8 if head else layers
        key = (product.weight, product.transposed, form.name)
        if key not in dequantized:
            values = numpy_helper.to_array(initializers[product.weight])
            values = np.ascontiguousarray(values.T) if product.transposed else values
            prefix = f"{product.weight}{'_transposed' if product.transposed else ''}_{form.name}"
            quantized, scales = quantizer(node.name, values) if form.blocked else quantize_channels(values)
            names = (prefix, f"{prefix}_scales", f"{prefix}_dequantized")
            graph.initializer.extend(
                [numpy_helper.from_array(quantized, names[0]), numpy_helper.from_array(scales, names[1])]
            )
            layout: dict[str, Any] = {"axis": 0, "block_size": block_size} if form.blocked else {"axis": 1}
            nodes.append(
                onnx.helper.make_node(
                    "DequantizeLinear", names[:2], names[2:], f"{node.name}_weight_dequantize", **layout
                )
            )
            dequantized[key] = names[2]
        if head and product.transposed:  # the tied table, which the embedding graph keeps in float
            float_head = FloatLmHead(table=product.weight, dequantized=dequantized[key])
        if node.op_type == "Gemm":  # the same product as a MatMul by the (K, N) weight, under the node's name
            node = onnx.helper.make_node("MatMul", [node.input[0], dequantized[key]], list(node.output), node.name)
        else:
            node.input[1] = dequantized[key]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in graph.node for name in node.input}
    replaced = {weight for weight, _, _ in dequantized}
    kept = [tensor for tensor in graph.initializer if tensor.name in read or tensor.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < DEQUANTIZE_OPSET:
            opset.version = DEQUANTIZE_OPSET
    if float_head is not None:
        float_head.record(model)
    return model


def quantized_weights(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Name -> (format, stored bytes) of every INT4 and INT8 weight of ``model`` (loaded with or without its external
    data)."""
    found = {}
    for tensor in model.graph.initializer:
        form = QUANTIZED_TYPES.get(tensor.data_type)
        if form is not None:
            found[tensor.name] = (form.name, (int(np.prod(tensor.dims)) * form.bits + 7) // 8)
    return found
