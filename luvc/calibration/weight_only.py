"""Weight-only INT4 quantization of the LLM's linear layers: block-wise symmetric scales, in the Q/DQ form.

Each ``MatMul`` by a weight ``W`` of shape ``(K, N)`` becomes ``MatMul(x, DequantizeLinear(W4, scales))``: one
positive scale ``amax / 7`` per block of ``block_size`` consecutive input channels of each output column, and ``W4 =
round(W / scale)`` in [-7, 7] as packed int4, with no zero point; ``DequantizeLinear`` carries ``block_size`` (opset
21).
That is the weight-only pattern TensorRT builds into its INT4 GEMMs (its ONNX parser wants positive scales and no zero
point, which is why this is not ONNX Runtime's ``MatMulNBitsQuantizer``: its symmetric mode maps each block's largest
weight to -8 and its scale can be negative), and ONNX Runtime's CPU provider fuses it into ``MatMulNBits`` at load.
Activations stay in floating point, so nothing is calibrated.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from luvc.errors import critical

DEFAULT_BLOCK_SIZE = 128  # what NVIDIA's INT4 AWQ/RTN recipes and ONNX Runtime's GenAI builder use
LEVELS = 7  # the largest quantized magnitude: [-7, 7], symmetric
DEQUANTIZE_OPSET = 21  # DequantizeLinear with int4 inputs and block_size
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def check_block_size(block_size: int) -> None:
    """Refuse a block size that is not a power of two of at least 16 (what TensorRT and ONNX Runtime's MatMulNBits
    take)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16:
        critical(f"--block-size {block_size}: INT4 blocks hold a power of two of at least 16 input channels (128).")
    if block_size & (block_size - 1):
        critical(f"--block-size {block_size} is not a power of two; pass 32, 64, 128 or 256.")


def quantize_blocks(weights: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(int4 values (K, N), scales (ceil(K / block_size), N))`` of a ``(K, N)`` weight: round to nearest with one
    scale ``amax / 7`` per block of input channels (1 for an all-zero block, so every scale is positive)."""
    rows, columns = weights.shape
    blocks = -(-rows // block_size)
    padded = np.zeros((blocks * block_size, columns), dtype=np.float32)
    padded[:rows] = weights
    amax = np.abs(padded.reshape(blocks, block_size, columns)).max(axis=1)
    scales = np.where(amax > 0, amax / LEVELS, 1.0).astype(np.float32)
    values = np.rint(padded / np.repeat(scales, block_size, axis=0)).clip(-LEVELS, LEVELS)[:rows]
    return values.astype(ml_dtypes.int4), scales.astype(weights.dtype)


def quantize_weights(model: onnx.ModelProto, block_size: int, excluded: list[str]) -> onnx.ModelProto:
    """``model`` (weights loaded) with every ``MatMul`` by a 2-D float initializer, outside ``excluded``, reading it
    as INT4 through a blocked ``DequantizeLinear`` (one per weight, however many products use it); the weights no
    longer read are dropped and the opset rises to 21."""
    check_block_size(block_size)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    skip = set(excluded)
    dequantized: dict[str, str] = {}  # weight name -> the DequantizeLinear output that replaces it
    nodes = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and node.name not in skip and weight.data_type in FLOATS and len(weight.dims) == 2:
            if weight.name not in dequantized:
                values, scales = quantize_blocks(numpy_helper.to_array(weight), block_size)
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
