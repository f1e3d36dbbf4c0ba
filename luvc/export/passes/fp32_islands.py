"""FP32 islands in fp16 graphs: softmax and norm statistics run in float32 (DESIGN.md section 4).

Matches ``Softmax``/``LogSoftmax`` and normalisation nodes (``LayerNormalization``, ``RMSNormalization``,
``GroupNormalization``, ``InstanceNormalization``) whose data input is float16, and emits
``Cast(float32) -> op -> Cast(float16)`` with the op's scale and bias constants widened to float32. SPU scores
are already float32 in the exported graph (``luvc.compress.spu`` computes them in float32).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

ISLAND_OPS = frozenset(
    {"Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization", "GroupNormalization", "InstanceNormalization"}
)


def _is_fp16(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float16


def keep_fp32_islands(graph: gs.Graph) -> gs.Graph:
    """Wrap every fp16 softmax and norm node in casts so that its arithmetic runs in float32."""
    widened: dict[str, gs.Constant] = {}  # one float32 copy of a constant however many norms read it
    for node in [n for n in graph.nodes if n.op in ISLAND_OPS and n.inputs and _is_fp16(n.inputs[0])]:
        wide_inputs = []
        for index, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float16:
                if tensor.name not in widened:
                    widened[tensor.name] = gs.Constant(f"{tensor.name}/fp32", tensor.values.astype(np.float32))
                wide_inputs.append(widened[tensor.name])
            elif _is_fp16(tensor):
                wide = gs.Variable(f"{node.name}/input_{index}/fp32", dtype=np.float32, shape=tensor.shape)
                graph.nodes.append(
                    gs.Node("Cast", f"{node.name}/Cast_in_{index}", {"to": onnx.TensorProto.FLOAT}, [tensor], [wide])
                )
                wide_inputs.append(wide)
            else:
                wide_inputs.append(tensor)
        node.inputs = wide_inputs
        original = node.outputs[0]
        wide_out = gs.Variable(f"{node.name}/output_0/fp32", dtype=np.float32, shape=original.shape)
        node.outputs[0] = wide_out
        graph.nodes.append(
            gs.Node("Cast", f"{node.name}/Cast_out", {"to": onnx.TensorProto.FLOAT16}, [wide_out], [original])
        )
    return graph.cleanup().toposort()
