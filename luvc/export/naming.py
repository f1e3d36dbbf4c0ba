"""Names in exported graphs: ORT-GenAI-style node names from module paths, and readable symbolic dimensions.

The ONNX exporter records each node's module path (``pkg.torch.onnx.name_scopes``); ``name_nodes`` turns it into
``/vision/blocks.{i}/oim/<Op>``, ``/llm/layers.{i}/spu/<Op>``, ``/llm/layers.{i}/self_attn/q_proj/<Op>`` and
names every intermediate tensor ``{node}/output_{k}``. Passes and lint select nodes by these prefixes.
"""

from __future__ import annotations

import ast
import collections
import re
from collections.abc import Mapping

import onnx

# module path of the export wrappers (luvc.export.llm, the adapters' vision graphs) -> graph path; first match wins
MODULE_RULES: tuple[tuple[str, str], ...] = (
    (r"^_\w*metadata_hook", ""),  # nodes the exporter adds outside any module
    (r"^language_model\.luvc_spu\.(\d+)", r"llm/layers.\1/spu"),
    (r"^language_model\b\.?", "llm/"),
    (r"^lm_head", "llm/lm_head"),
    (r"^embed_tokens", "embed/embed_tokens"),
    (r"^encoder\.luvc_oim\.(\d+)", r"vision/blocks.\1/oim"),
    (r"^encoder\b\.?", "vision/"),
    (r"^model\.vision_tower\.(?:vision_model\.)?encoder\.layers\.(\d+)\.luvc_oim", r"vision/blocks.\1/oim"),
    (r"^model\.vision_tower\.(?:vision_model\.)?encoder\.layers\.", "vision/blocks."),
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
