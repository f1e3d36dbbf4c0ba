"""Names in exported graphs: the node-naming scheme, ORT-GenAI-style node names from module paths, and readable
symbolic dimensions.

The ONNX exporter records each node's module path (``pkg.torch.onnx.name_scopes``); ``name_nodes`` turns it into
``/vision/blocks.{i}/oim/<Op>``, ``/llm/layers.{i}/spu/<Op>``, ``/llm/layers.{i}/self_attn/q_proj/<Op>`` and
names every intermediate tensor ``{node}/output_{k}``. This module is the one home of that scheme: passes, plugins,
lint, localisation, quantization exclusions and the manifest build names with ``layer_prefix``/``unit_prefix`` and
read them with ``place_of``.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import re
from collections.abc import Collection, Mapping

import onnx

# stack -> graph path of its layers; the LUVC unit each stack's layers hold (OIM after an encoder block, SPU before a
# decoder layer)
STACKS = {"vision": "vision/blocks", "llm": "llm/layers"}
UNITS = {"vision": "oim", "llm": "spu"}
PLUGIN_DOMAIN = "luvc"  # ONNX domain and TensorRT plugin namespace of the plugin nodes (luvc.export.plugin_ops)
PLUGIN_VERSION = "1"
PLUGIN_OPS = {"oim": "OrthoMerge", "spu": "SpectrumPrune"}  # unit -> plugin node op type
_PLACE = re.compile(r"^/(vision|llm)/(?:blocks|layers)\.(\d+)/(?:(oim|spu)/)?")


@dataclasses.dataclass(frozen=True)
class NodePlace:
    """Where a node sits: encoder block or decoder layer ``index`` of ``stack``, inside its LUVC ``unit`` or not."""

    stack: str  # "vision" or "llm"
    index: int
    unit: str | None  # "oim", "spu" or None

    @property
    def layer(self) -> str:
        """The layer's name on the PyTorch side (``vision.blocks.3``, ``llm.layers.1``): parity's layer keys."""
        return layer_name(self.stack, self.index)

    @property
    def unit_prefix(self) -> str | None:
        return unit_prefix(self.stack, self.index) if self.unit else None


def layer_name(stack: str, index: int) -> str:
    """``vision.blocks.3`` / ``llm.layers.1``: a layer as parity names it (its module path in the export wrappers)."""
    return f"{STACKS[stack].replace('/', '.')}.{index}"


def layer_prefix(stack: str, index: int) -> str:
    """``/vision/blocks.3/``: the prefix of every node of that layer (its LUVC unit included)."""
    return f"/{STACKS[stack]}.{index}/"


def unit_prefix(stack: str, index: int) -> str:
    """``/vision/blocks.3/oim`` / ``/llm/layers.1/spu``: the LUVC unit of that layer (the manifest's node prefixes)."""
    return f"{layer_prefix(stack, index)}{UNITS[stack]}"


def place_of(node_name: str | None) -> NodePlace | None:
    """The layer (and LUVC unit) a node name places it in; ``None`` for nodes outside the layer stacks."""
    match = _PLACE.match(node_name or "")
    if match is None:
        return None
    return NodePlace(match.group(1), int(match.group(2)), match.group(3))


def place_of_layer(layer: str) -> NodePlace:
    """The place of a parity layer name (``vision.blocks.3``), outside its unit."""
    for stack, path in STACKS.items():
        head = path.replace("/", ".") + "."
        if layer.startswith(head) and layer[len(head) :].isdigit():
            return NodePlace(stack, int(layer[len(head) :]), None)
    raise ValueError(f"{layer!r} names no layer of {sorted(STACKS)}")


def in_unit(node_name: str | None, unit: str) -> bool:
    """Whether the node belongs to an LUVC unit of kind ``unit`` (``oim`` or ``spu``)."""
    place = place_of(node_name)
    return place is not None and place.unit == unit


# module path of the export wrappers (luvc.export.llm, the adapters' vision graphs) -> graph path; first match wins
MODULE_RULES: tuple[tuple[str, str], ...] = (
    (r"^_\w*metadata_hook", ""),  # nodes the exporter adds outside any module
    (r"^language_model\.luvc_spu\.(\d+)", rf"{STACKS['llm']}.\1/{UNITS['llm']}"),
    (r"^language_model\b\.?", "llm/"),
    (r"^lm_head", "llm/lm_head"),
    (r"^embed_tokens", "embed/embed_tokens"),
    (r"^encoder\.luvc_oim\.(\d+)", rf"{STACKS['vision']}.\1/{UNITS['vision']}"),
    (r"^encoder\b\.?", "vision/"),
    (
        r"^model\.vision_tower\.(?:vision_model\.)?encoder\.layers?\.(\d+)\.luvc_oim",  # CLIP layers, InternViT layer
        rf"{STACKS['vision']}.\1/{UNITS['vision']}",
    ),
    (r"^model\.vision_tower\.(?:vision_model\.)?encoder\.layers?\.", f"{STACKS['vision']}."),
    (r"^model\.vision_tower\.(?:vision_model\.)?", "vision/"),
    (r"^model\.multi_modal_projector", "vision/projector"),
)
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def graph_path(module_path: str) -> str:
    """``language_model.layers.3.self_attn`` -> ``llm/layers.3/self_attn`` (numbers stay with their list)."""
    for pattern, replacement in MODULE_RULES:
        if re.match(pattern, module_path):
            module_path = re.sub(pattern, replacement, module_path, count=1)
            break
    segments: list[str] = []
    for part in re.split(r"[./]", module_path):
        if part.isdigit() and segments:
            segments[-1] += f".{part}"
        elif part:
            segments.append(part)
    return "/".join(segments)


def _module_path(node: onnx.NodeProto) -> str:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def name_nodes(model: onnx.ModelProto, root: str) -> None:
    """Rename every node ``/{path}/{OpType}[_k]`` from its module path (``root`` for top-level nodes), and every
    intermediate tensor ``{node}/output_{k}``. Graph inputs, outputs and initializers keep their names."""
    graph = model.graph
    keep = {t.name for t in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    counts: collections.Counter[str] = collections.Counter()
    renamed: dict[str, str] = {}
    for node in graph.node:
        path = graph_path(_module_path(node)) or root
        base = f"/{path}/{node.op_type}"
        counts[base] += 1
        node.name = base if counts[base] == 1 else f"{base}_{counts[base] - 1}"
        for index, output in enumerate(node.output):
            if output and output not in keep:
                renamed[output] = f"{node.name}/output_{index}"
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)


def renamed_for_op(node_name: str, op: str, taken: Collection[str]) -> str:
    """The name a node takes when a pass changes its op: ``/{path}/{op}`` with the first ``_k`` suffix no name in
    ``taken`` has (another node of the unit may already carry the plain name)."""
    base = f"{node_name.rsplit('/', 1)[0]}/{op}"
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    return name


def rename_dims(model: onnx.ModelProto, names: Mapping[str, str]) -> None:
    """Replace exporter symbols (``s81``) by dimension names (``sequence_length``) in every shape, including
    expressions such as ``s81 + 1``."""
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    graph = model.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda match: names[match.group(1)], dim.dim_param)
