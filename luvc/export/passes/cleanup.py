"""Simplifying passes: constant folding, Identity removal, inverse pairs that cancel.

Each returns the graph; the pipeline repeats them until the node count stops changing.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from luvc.export.inspect import value_dims

WIDENING: dict[np.dtype, set[np.dtype]] = {  # casting from the key to any of its values and back loses nothing
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
            cancels = src is not None and src == dst and mid in WIDENING.get(src, set())
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


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) or (isinstance(d, str) and d) for d in shape)


def _reshape_target(source: list, target: list) -> list[int] | None:
    """A constant shape for ``Reshape`` (``allowzero=0``) from ``source`` to ``target`` (dims: ints or symbols): a
    literal for a number, 0 for a symbol at the same place in the source (copied), -1 for the one symbol left; None
    when two are left or the target has an empty dim (0 would mean "copy")."""
    dims, inferred = [], 0
    for axis, dim in enumerate(target):
        if isinstance(dim, int):
            if dim == 0:
                return None
            dims.append(dim)
        elif axis < len(source) and source[axis] == dim:
            dims.append(0)
        else:
            inferred += 1
            dims.append(-1)
    return dims if inferred <= 1 else None


def _expand_target(source: list, target: list) -> list[int] | None:
    """A constant shape for ``Expand`` from ``source`` to ``target``: 1 where the target keeps the source's dim
    (aligned right), a literal for a number; None when a symbol is not the source's own."""
    offset = len(target) - len(source)
    dims = []
    for axis, dim in enumerate(target):
        kept = axis >= offset and source[axis - offset] == dim
        if kept:
            dims.append(1)
        elif isinstance(dim, int):
            dims.append(dim)
        else:
            return None
    return dims


def _infer_missing_shapes(graph: gs.Graph) -> None:
    """Give the graph's tensors whose shape is unknown (or partly) the shape ONNX's inference finds."""
    model = gs.export_onnx(graph, do_type_check=False)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    tensors = graph.tensors()
    for info in inferred.graph.value_info:
        tensor = tensors.get(info.name)
        if tensor is None or isinstance(tensor, gs.Constant) or _known(tensor.shape):
            continue
        shape = value_dims(info)
        if _known(shape):
            tensor.shape = shape


def constant_shapes(graph: gs.Graph) -> gs.Graph:
    """``Reshape`` and ``Expand`` whose shape is computed at run time (``Shape``, ``Slice``, ``Concat`` of a symbolic
    sequence length) while the exporter proved their output shape: bypass those that change nothing, give the others a
    constant shape (0: the input's dim, -1: the one dim left, 1: a dim ``Expand`` keeps). The shape arithmetic then has
    no consumer and goes: after an SPU cut every decoder layer builds its own, for its own sequence length, and on a
    GPU each of those small nodes is a launch, some placed on the CPU. Shapes the exporter left unknown are taken from
    ONNX's shape inference with data propagation (through ``Shape``, ``Slice``, ``Concat``). What a constant shape
    makes constant (an ``Expand`` of a constant) is folded."""
    _infer_missing_shapes(graph)
    changed = False
    for node in list(graph.nodes):
        if node.op not in ("Reshape", "Expand") or len(node.inputs) < 2 or isinstance(node.inputs[1], gs.Constant):
            continue
        source, target = node.inputs[0].shape, node.outputs[0].shape
        if not (_known(source) and _known(target)):
            continue
        if list(source) == list(target) and _bypass(graph, node, node.inputs[0]):
            changed = True
            continue
        if node.op == "Reshape":
            dims = _reshape_target(list(source), list(target))
            if dims is not None:  # torch.onnx writes allowzero=1; the zeros here are copies, never empty dims
                node.attrs["allowzero"] = 0
        else:
            dims = _expand_target(list(source), list(target))
        if dims is not None:
            name = f"{node.name or node.outputs[0].name}/constant_shape"
            node.inputs[1] = gs.Constant(name, np.array(dims, dtype=np.int64))
            changed = True
    return fold_constants(graph) if changed else graph.cleanup().toposort()  # a constant shape may make more constant
