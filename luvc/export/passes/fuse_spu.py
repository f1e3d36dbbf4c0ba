"""Fuse each SPU unit's gathers onto one shared index.

Pattern (under ``/llm/layers.{i}/spu/``): ``GatherElements(data, Expand(index, shape), axis=1)`` where ``index`` is
the layer's ``(B, S_new, 1)`` gather index, expanded once per gathered tensor (hidden states, rotary cos and sin).
Emits ``GatherND(data, index, batch_dims=1)`` for each: every gather of the layer reads the same index tensor, and
the Expand nodes and their shape arithmetic disappear. Scoring (low-pass product, residual energy), TopK and the
index sort are left as they are: they are already the canonical small form.
"""

from __future__ import annotations

import dataclasses

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
