"""Collapse each OIM and SPU subgraph into one plugin node (``luvc::OrthoMerge``, ``luvc::SpectrumPrune``).

Selector: the node-name prefix (``/vision/blocks.{i}/oim/``, ``/llm/layers.{i}/spu/``). The plugin node takes the
subgraph's non-constant inputs, produces the tensors used outside it, and carries the subgraph's constants
(merge indices and weights, low-pass matrices, budgets) as attributes named after them. Only for engines built
with the LUVC plugin library: ONNX Runtime cannot run these nodes.
"""

from __future__ import annotations

import collections

import onnx_graphsurgeon as gs

from luvc.export.naming import NodePlace, place_of

PLUGIN_OPS = {"oim": "OrthoMerge", "spu": "SpectrumPrune"}
DOMAIN = "luvc"


def collapse_to_plugins(graph: gs.Graph) -> gs.Graph:
    """Replace every OIM/SPU prefix subgraph by one plugin node (see the module docstring)."""
    groups: dict[NodePlace, list[gs.Node]] = collections.defaultdict(list)
    for node in graph.nodes:
        place = place_of(node.name)
        if place is not None and place.unit and node.domain != DOMAIN:
            groups[place].append(node)
    for place, nodes in groups.items():
        members = set(map(id, nodes))
        produced = {id(t) for node in nodes for t in node.outputs}
        inputs, constants, outputs = [], {}, []
        for node in nodes:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant):
                    constants[tensor.name.replace("/", "_").strip("_")] = tensor
                elif id(tensor) not in produced and tensor not in inputs:
                    inputs.append(tensor)
            for tensor in node.outputs:
                used_outside = any(id(consumer) not in members for consumer in tensor.outputs)
                if used_outside or tensor in graph.outputs:
                    outputs.append(tensor)
        for node in nodes:
            node.outputs = []
        op = PLUGIN_OPS[place.unit]
        graph.nodes.append(gs.Node(op, f"{place.unit_prefix}/{op}", dict(constants), inputs, outputs, domain=DOMAIN))
    return graph.cleanup().toposort()
