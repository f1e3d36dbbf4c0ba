"""Fuse each SPU unit's gathers onto one shared index, and its residual energy into one reduction.

Pattern (under ``/llm/layers.{i}/spu/``): ``GatherElements(data, Expand(index, shape), axis=1)`` where ``index`` is
the layer's ``(B, S_new, 1)`` gather index, expanded once per gathered tensor (hidden states, rotary cos and sin).
Emits ``GatherND(data, index, batch_dims=1)`` for each: every gather of the layer reads the same index tensor, and
the Expand nodes and their shape arithmetic disappear.

``fuse_spu_energy``: a score's ``ReduceSum(Pow(x, 2))`` becomes ``ReduceSumSquare(x)`` (same axes and keepdims), one
node and one kernel launch fewer per cut. The low-pass products, TopK and the index sort are left as they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from luvc.export.naming import in_unit, renamed_for_op


@dataclasses.dataclass(frozen=True)
class SpuGather:
    """One SPU gather: ``data`` rows picked by the layer's ``(B, S_new, 1)`` ``index``, expanded for this gather."""

    data: gs.Tensor
    index: gs.Tensor


def match_spu_gather(node: gs.Node) -> SpuGather | None:
    """The data and shared index of an SPU ``GatherElements`` over an expanded ``(B, S_new, 1)`` index."""
    if node.op != "GatherElements" or not in_unit(node.name, "spu") or node.attrs.get("axis") != 1:
        return None
    data, expanded = node.inputs
    if len(expanded.inputs) != 1 or expanded.inputs[0].op != "Expand":
        return None
    index = expanded.inputs[0].inputs[0]
    shape = index.shape
    if shape is None or len(shape) != 3 or shape[2] != 1 or data.shape is None or len(data.shape) != 3:
        return None
    return SpuGather(data, index)


def fuse_spu_gathers(graph: gs.Graph) -> gs.Graph:
    """Rewrite every matched SPU gather as ``GatherND(data, index, batch_dims=1)`` (see the module docstring)."""
    names = {node.name for node in graph.nodes}
    for node in [n for n in graph.nodes if n.op == "GatherElements"]:
        match = match_spu_gather(node)
        if match is None:
            continue
        node.op = "GatherND"
        node.attrs = {"batch_dims": 1}
        node.inputs = [match.data, match.index]
        names.discard(node.name)
        node.name = renamed_for_op(node.name, "GatherND", names)
        names.add(node.name)
    return graph.cleanup().toposort()


def _is_square(node: gs.Node) -> bool:
    """``Pow(x, 2)`` with a constant exponent."""
    if node.op != "Pow" or not isinstance(node.inputs[1], gs.Constant):
        return False
    exponent = np.asarray(node.inputs[1].values)
    return exponent.size == 1 and float(exponent.reshape(())) == 2.0


def fuse_spu_energy(graph: gs.Graph) -> gs.Graph:
    """Rewrite every SPU ``ReduceSum(Pow(x, 2))`` whose square has no other reader as ``ReduceSumSquare(x)``."""
    names = {node.name for node in graph.nodes}
    graph_outputs = {id(tensor) for tensor in graph.outputs}
    for node in [n for n in graph.nodes if n.op == "ReduceSum" and in_unit(n.name, "spu")]:
        squared = node.inputs[0]
        if len(squared.inputs) != 1 or not _is_square(squared.inputs[0]):
            continue
        if len(squared.outputs) != 1 or id(squared) in graph_outputs:  # the square is read elsewhere too
            continue
        node.op = "ReduceSumSquare"
        node.inputs[0] = squared.inputs[0].inputs[0]
        names.discard(node.name)
        node.name = renamed_for_op(node.name, "ReduceSumSquare", names)
        names.add(node.name)
    return graph.cleanup().toposort()
