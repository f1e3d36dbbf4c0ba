"""Export lint: what TensorRT cannot take, or takes badly, in an exported graph (DESIGN.md section 4).

Runs after every export; ``check_graph`` fails with every finding and its fix. Rules:

- ``op``: DFT/STFT (not in TensorRT), NonZero, Unique, Compress (data-dependent shapes), Loop and Scan;
- ``dynamic-shape``: a dimension the exporter could only describe by an unbacked symbol (``u0``), i.e. a shape that
  depends on tensor values with no bound;
- ``topk``: TopK whose k is not a constant, or is above TensorRT's limit of 3840;
- ``dense-mask``: a boolean or ``*mask*`` graph input, or a boolean or large-negative constant, whose last two axes
  are equal and at least the image-token count (or the same dynamic axis): a mask quadratic in the image tokens (a
  graph traced at one sequence length, a hybrid model's prefill, holds its causal masks as constants: allowed);
- ``fp16-norm``: norm statistics computed in float16 (a norm op, or ReduceMean over a square, on float16 data);
- ``cuda-cpu``: an op on a type ONNX Runtime's CUDA EP has no kernel for (``CUDA_TYPES``): it runs on the CPU between
  device tensors, two copies per run, and ONNX Runtime refuses to capture the graph as a CUDA graph (seen on an H200
  with the LUVC prefill's int64 Pad).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from luvc.errors import critical
from luvc.export.inspect import value_dims

TOPK_LIMIT = 3840
FORBIDDEN_OPS = {
    "DFT": "TensorRT has no DFT; write spectra as products with constant cos/sin matrices (luvc.compress.spu)",
    "STFT": "TensorRT has no STFT; use constant matrices",
    "NonZero": "data-dependent output shape; use TopK with a constant k and Gather",
    "Unique": "data-dependent output shape; keep shapes static",
    "Compress": "data-dependent output shape; use Gather with static indices",
    "Loop": "loops are slow or fail in TensorRT; unroll with static trip counts",
    "Scan": "loops are slow or fail in TensorRT; unroll with static trip counts",
}
# op -> the input types ONNX Runtime's CUDA EP runs it on (1.31; the others land on the CPU)
CUDA_TYPES = {
    "Pad": frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}),
}
NORM_OPS = frozenset({"LayerNormalization", "RMSNormalization", "GroupNormalization", "InstanceNormalization"})
UNBACKED = re.compile(r"\bu\d+\b")
FLOAT16 = onnx.TensorProto.FLOAT16
MASK_TYPES = frozenset({onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16})


@dataclasses.dataclass(frozen=True)
class LintIssue:
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Constant tensors by name (initializers and ``Constant`` nodes), unconverted: weights stay protos."""
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return values


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {info.name: info.type.tensor_type.elem_type for info in (*graph.input, *graph.value_info, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def _quadratic(dims, image_tokens: int | None) -> bool:
    if len(dims) < 2:
        return False
    a, b = dims[-2:]
    if a != b or a is None:
        return False
    return isinstance(a, str) or (image_tokens is not None and a >= image_tokens)


def lint_graph(
    model: onnx.ModelProto,
    image_tokens: int | None = None,
    read: Callable[[onnx.TensorProto], np.ndarray] | None = None,
) -> list[LintIssue]:
    """Every finding in ``model``'s main graph; ``image_tokens`` is the bucket's visual-token count; ``read``: how to
    read a constant of a model whose weights are not loaded (``SharedWeights.array``; default: from its bytes)."""
    graph = model.graph
    constants, types = _constants(graph), _types(graph)
    producers = {output: node for node in graph.node for output in node.output}
    seen = collections.Counter(node.name for node in graph.node if node.name)
    issues = [LintIssue("name", name, f"{count} nodes share this name") for name, count in seen.items() if count > 1]
    for node in graph.node:
        issues += _node_issues(node, constants, types, producers)
    return issues + _shape_issues(graph, constants, image_tokens, read or numpy_helper.to_array)


def _node_issues(node: onnx.NodeProto, constants: dict, types: dict, producers: dict) -> list[LintIssue]:
    """The findings of one node: a forbidden op, a TopK's k, a CUDA op on a type it runs on the CPU, float16 norms."""
    name = node.name or node.op_type
    if node.op_type in FORBIDDEN_OPS:
        return [LintIssue("op", name, f"{node.op_type}: {FORBIDDEN_OPS[node.op_type]}")]
    if node.op_type == "TopK":
        k = constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            return [LintIssue("topk", name, "k is computed at run time; budgets must be constants")]
        largest = int(np.max(numpy_helper.to_array(k)))
        return (
            []
            if largest <= TOPK_LIMIT
            else [LintIssue("topk", name, f"k={largest} exceeds TensorRT's TopK limit of {TOPK_LIMIT}")]
        )
    if node.op_type in CUDA_TYPES and types.get(node.input[0], 0) not in (0, *CUDA_TYPES[node.op_type]):
        kind = onnx.TensorProto.DataType.Name(types[node.input[0]]).lower()
        why = (
            f"{node.op_type} on {kind}: ONNX Runtime's CUDA EP runs it on the CPU between device tensors, and will not "
            "capture the graph as a CUDA graph; build the tensor with Concat, or in float"
        )
        return [LintIssue("cuda-cpu", name, why)]
    if node.op_type in NORM_OPS and types.get(node.input[0]) == FLOAT16:
        return [LintIssue("fp16-norm", name, f"{node.op_type} statistics in float16; cast to float32")]
    if node.op_type == "ReduceMean" and types.get(node.input[0]) == FLOAT16:
        source = producers.get(node.input[0])
        squares = source is not None and (
            source.op_type == "Pow" or (source.op_type == "Mul" and source.input[0] == source.input[1])
        )
        if squares:
            return [LintIssue("fp16-norm", name, "mean of squares in float16 (RMSNorm); cast to float32")]
    return []


def _shape_issues(
    graph: onnx.GraphProto, constants: dict, image_tokens: int | None, read: Callable[[onnx.TensorProto], np.ndarray]
) -> list[LintIssue]:
    """The findings in values' shapes: data-dependent dimensions, and dense masks quadratic in the tokens."""
    issues = []
    for info in (*graph.input, *graph.output, *graph.value_info):
        unbacked = [d for d in value_dims(info) if isinstance(d, str) and UNBACKED.search(d)]
        if unbacked:
            issues.append(LintIssue("dynamic-shape", info.name, f"data-dependent dimension {unbacked[0]!r}"))
    for info in graph.input:
        maskish = info.type.tensor_type.elem_type == onnx.TensorProto.BOOL or "mask" in info.name.lower()
        if maskish and _quadratic(value_dims(info), image_tokens):
            issues.append(LintIssue("dense-mask", info.name, f"input of shape {value_dims(info)} is quadratic"))
    embeds = next((info for info in graph.input if info.name == "inputs_embeds"), None)
    one_length = embeds is not None and len(value_dims(embeds)) > 1 and isinstance(value_dims(embeds)[1], int)
    for tensor_name, proto in {} if one_length else constants.items():
        if proto.data_type in MASK_TYPES and _quadratic(list(proto.dims), image_tokens):
            value = read(proto)
            if value.dtype == bool or bool(np.isneginf(value).any()) or bool((value <= -1e4).any()):
                issues.append(LintIssue("dense-mask", tensor_name, f"constant mask of shape {list(value.shape)}"))
    return issues


def check_graph(
    model: onnx.ModelProto,
    graph_name: str,
    image_tokens: int | None = None,
    read: Callable[[onnx.TensorProto], np.ndarray] | None = None,
) -> None:
    """Raise with every lint finding of ``model`` (named ``graph_name``), or return quietly."""
    issues = lint_graph(model, image_tokens, read)
    if issues:
        listing = "\n  ".join(str(issue) for issue in issues)
        critical(f"Export lint failed for {graph_name} ({len(issues)} findings):\n  {listing}")
