"""Weight-only INT4 quantization of the LLM's linear layers: block-wise symmetric scales, in the Q/DQ form.

Each ``MatMul`` by a weight ``W`` of shape ``(K, N)`` becomes ``MatMul(x, DequantizeLinear(W4, scales))``: one
positive scale ``amax / 7`` per block of ``block_size`` consecutive input channels of each output column, and ``W4 =
round(W / scale)`` in [-7, 7] as packed int4, with no zero point; ``DequantizeLinear`` carries ``block_size`` (opset
21).
That is the weight-only pattern TensorRT builds into its INT4 GEMMs (its ONNX parser wants positive scales and no zero
point, which is why this is not ONNX Runtime's ``MatMulNBitsQuantizer``: its symmetric mode maps each block's largest
weight to -8 and its scale can be negative), and ONNX Runtime's CPU provider fuses it into ``MatMulNBits`` at load.
Activations stay in floating point.

Two ways to pick the INT4 values, both with the same scales and format: round to nearest (``rtn``), which needs no
data, and GPTQ (``gptq``, Frantar et al. 2022), which rounds one input channel at a time and moves the rounding
error onto the channels not yet rounded, weighted by the inverse of ``H = X^T X`` of the layer's calibration inputs
``X``, so that the layer's output on those inputs moves least. GPTQ's inputs come from the source export run on the
calibration samples (``luvc.calibration.hessians``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from luvc.errors import critical

DEFAULT_BLOCK_SIZE = 128  # what NVIDIA's INT4 AWQ/RTN recipes and ONNX Runtime's GenAI builder use
LEVELS = 7  # the largest quantized magnitude: [-7, 7], symmetric
DEQUANTIZE_OPSET = 21  # DequantizeLinear with int4 inputs and block_size
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
GPTQ_DAMPING = 0.01  # added to H's diagonal, as a share of its mean: what GPTQ's reference implementation uses

# a block quantizer: (the MatMul's node name, its (K, N) weight) -> (int4 values (K, N), scales (blocks, N))
BlockQuantizer = Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]]


def check_block_size(block_size: int) -> None:
    """Refuse a block size that is not a power of two of at least 16 (what TensorRT and ONNX Runtime's MatMulNBits
    take)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16:
        critical(f"--block-size {block_size}: INT4 blocks hold a power of two of at least 16 input channels (128).")
    if block_size & (block_size - 1):
        critical(f"--block-size {block_size} is not a power of two; pass 32, 64, 128 or 256.")


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
        key = (node, hashlib.sha1(np.ascontiguousarray(weights).view(np.uint8)).hexdigest())
        if key not in done:
            hessian = hessians.get(node)
            found = (
                quantize_blocks(weights, block_size) if hessian is None else gptq_blocks(weights, hessian, block_size)
            )
            done[key] = found
        return done[key]

    return quantize


def weight_products(model: onnx.ModelProto, excluded: Sequence[str] = ()) -> dict[str, tuple[str, int]]:
    """The ``MatMul`` nodes INT4 quantizes in ``model`` (loaded with or without its external data): those by a 2-D
    float initializer, outside ``excluded``, as node name -> (activation input, input channels ``K``)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    skip, products = set(excluded), {}
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and node.name not in skip and weight.data_type in FLOATS and len(weight.dims) == 2:
            products[node.name] = (node.input[0], int(weight.dims[0]))
    return products


def quantize_weights(
    model: onnx.ModelProto, block_size: int, excluded: list[str], quantizer: BlockQuantizer | None = None
) -> onnx.ModelProto:
    """``model`` (weights loaded) with every ``MatMul`` by a 2-D float initializer, outside ``excluded``, reading it
    as INT4 through a blocked ``DequantizeLinear`` (one per weight, however many products use it); the weights no
    longer read are dropped and the opset rises to 21. ``quantizer`` picks the values (default: round to nearest)."""
    check_block_size(block_size)
    quantizer = quantizer or (lambda _, weights: quantize_blocks(weights, block_size))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    products = weight_products(model, excluded)
    dequantized: dict[str, str] = {}  # weight name -> the DequantizeLinear output that replaces it
    nodes = []
    for node in graph.node:
        if node.name in products:
            weight = initializers[node.input[1]]
            if weight.name not in dequantized:
                values, scales = quantizer(node.name, numpy_helper.to_array(weight))
                names = (f"{weight.name}_int4", f"{weight.name}_int4_scales", f"{weight.name}_dequantized")
                graph.initializer.extend(
                    [numpy_helper.from_array(values, names[0]), numpy_helper.from_array(scales, names[1])]
                )
                nodes.append(
                    onnx.helper.make_node(
                        "DequantizeLinear",
                        names[:2],
                        names[2:],
                        f"{node.name}_weight_dequantize",
                        axis=0,
                        block_size=block_size,
                    )
                )
                dequantized[weight.name] = names[2]
            node.input[1] = dequantized[weight.name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in read or tensor.name not in dequantized]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < DEQUANTIZE_OPSET:
            opset.version = DEQUANTIZE_OPSET
    return model


def int4_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Name -> bytes of every INT4 initializer of ``model`` (loaded with or without its external data)."""
    return {
        tensor.name: (int(np.prod(tensor.dims)) + 1) // 2
        for tensor in model.graph.initializer
        if tensor.data_type == onnx.TensorProto.INT4
    }
