"""Simplifying passes: constant folding, Identity removal, inverse pairs that cancel.

Each returns the graph; the pipeline repeats them until the node count stops changing.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

WIDENING = {  # casting from the key to any of its values and back loses nothing
    np.dtype(np.float16): {np.dtype(np.float32), np.dtype(np.float64)},
    np.dtype(np.float32): {np.dtype(np.float64)},
    np.dtype(np.int32): {np.dtype(np.int64)},
    np.dtype(np.bool_): {np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32)},
}


# the largest folded tensor kept: any. Without a threshold onnx-graphsurgeon folds everything too, but warns of each
# output over 1 MiB (a real-size patch-embedding weight reshaped for its Gemm, which is meant to be folded)
FOLD_ANY_SIZE = 1 << 62


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Evaluate every subgraph whose inputs are all constants (low-pass and DFT matrices, shape arithmetic, weights
    reshaped), with onnx-graphsurgeon's folder (ONNX Runtime underneath)."""
    return graph.fold_constants(error_ok=True, size_threshold=FOLD_ANY_SIZE).cleanup().toposort()


def _bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor) -> bool:
    """Send ``node``'s consumers to ``source``; keep graph outputs named (then the node stays)."""
    out = node.outputs[0]
    if out in graph.outputs:
        return False
    for consumer in list(out.outputs):
        consumer.inputs = [source if tensor is out else tensor for tensor in consumer.inputs]
    node.outputs = []
    return True


def remove_identity(graph: gs.Graph) -> gs.Graph:
    """Drop ``Identity`` nodes (their consumers read the input directly)."""
    for node in [n for n in graph.nodes if n.op == "Identity"]:
        _bypass(graph, node, node.inputs[0])
    return graph.cleanup().toposort()


def _single_producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 and tensor.inputs[0].op == op else None


def cancel_inverse_pairs(graph: gs.Graph) -> gs.Graph:
    """Bypass ``Transpose(p) -> Transpose(inverse p)``, ``Cast(to wider) -> Cast(back)`` and
    ``Reshape -> Reshape`` back to the first input's static shape."""
    for node in list(graph.nodes):
        if not node.outputs or node.op not in ("Transpose", "Cast", "Reshape"):
            continue
        first = _single_producer(node.inputs[0], node.op)
        if first is None:
            continue
        source = first.inputs[0]
        if node.op == "Transpose":
            p, q = first.attrs.get("perm"), node.attrs.get("perm")
            cancels = p is not None and q is not None and [p[i] for i in q] == list(range(len(p)))
        elif node.op == "Cast":
            src, mid, dst = (
                np.dtype(t.dtype) if t.dtype is not None else None for t in (source, node.inputs[0], node.outputs[0])
            )
            cancels = src is not None and src == dst and mid in WIDENING.get(src, ())
        else:
            shape, out = source.shape, node.outputs[0].shape
            cancels = (
                shape is not None
                and out is not None
                and all(isinstance(d, int) for d in shape)
                and list(shape) == list(out)
            )
        if cancels:
            _bypass(graph, node, source)
    return graph.cleanup().toposort()
