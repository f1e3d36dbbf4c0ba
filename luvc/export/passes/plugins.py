"""Collapse each OIM and SPU subgraph into one plugin node (``luvc::OrthoMerge``, ``luvc::SpectrumPrune``).

Selector: the node-name prefix (``/vision/blocks.{i}/oim/``, ``/llm/layers.{i}/spu/``). The plugin node takes the
subgraph's non-constant inputs, produces the tensors used outside it, and carries the subgraph's constants
(merge indices and weights, low-pass matrices, budgets) as attributes named after them. Only for engines built
with the LUVC plugin library: ONNX Runtime cannot run these nodes.
"""

from __future__ import annotations

import collections
import re

import onnx_graphsurgeon as gs

PLUGIN_OPS = {"oim": "OrthoMerge", "spu": "SpectrumPrune"}
PREFIX = re.compile(r"^(/(?:vision/blocks|llm/layers)\.\d+/(oim|spu))/")
DOMAIN = "luvc"


def collapse_to_plugins(graph: gs.Graph) -> gs.Graph:
    """Replace every OIM/SPU prefix subgraph by one plugin node (see the module docstring)."""
    groups: dict[str, list[gs.Node]] = collections.defaultdict(list)
    for node in graph.nodes:
        match = PREFIX.match(node.name or "")
        if match and node.domain != DOMAIN:
            groups[match.group(1)].append(node)
    for prefix, nodes in groups.items():
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
        kind = PREFIX.match(prefix + "/").group(2)
        graph.nodes.append(
            gs.Node(PLUGIN_OPS[kind], f"{prefix}/{PLUGIN_OPS[kind]}", dict(constants), inputs, outputs, domain=DOMAIN)
        )
    return graph.cleanup().toposort()
