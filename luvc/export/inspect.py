"""What is inside an exported graph: op histogram, an estimate of its matrix-multiply FLOPs, the nodes that only
compute shapes, and the graph ONNX Runtime makes of it."""

from __future__ import annotations

import ast
import collections
import functools
import math
import operator
import re
from pathlib import Path
from typing import overload

import onnx

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def evaluate_dim(dim: int | str, values: dict[str, int]) -> int | None:
    """A dimension (an int, a name, or an expression like ``sequence_length - 16``) at ``values``; ``None`` if
    it names something unknown."""
    if isinstance(dim, int):
        return dim

    def walk(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            return None if left is None or right is None else _OPS[type(node.op)](left, right)
        return None

    tree = _parse_dim(dim)
    return None if tree is None else walk(tree)


_MULTIPLE = re.compile(r"(\d+)\*(\w+)")  # a derived axis: k times a named one (InternVL's tiles x images)


def root_of(dim: str) -> tuple[int, str] | None:
    """``(k, name)`` of a dimension ``k*name``, else ``None``."""
    match = _MULTIPLE.fullmatch(dim.replace(" ", ""))
    return None if match is None else (int(match.group(1)), match.group(2))


@functools.cache
def _parse_dim(dim: str) -> ast.AST | None:
    """The expression tree of a symbolic dimension (parsed once: the runtime evaluates shapes on every call)."""
    try:
        return ast.parse(dim, mode="eval").body
    except SyntaxError:
        return None


@overload
def value_dims(info: onnx.ValueInfoProto, unknown: str) -> list[int | str]: ...
@overload
def value_dims(info: onnx.ValueInfoProto, unknown: None = None) -> list[int | str | None]: ...
def value_dims(info: onnx.ValueInfoProto, unknown: str | None = None) -> list[int | str | None] | list[int | str]:
    """A value's dimensions: sizes, symbolic names, and ``unknown`` where it has neither."""
    dims = info.type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or unknown) for dim in dims]


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    shapes = {}
    for info in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        shapes[info.name] = value_dims(info)
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    return shapes


def op_histogram(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def matmul_flops(model: onnx.ModelProto, values: dict[str, int]) -> tuple[int, int]:
    """``(FLOPs, MatMul/Gemm nodes whose shapes could not be evaluated)``: 2 * (output elements) * (inner size)."""
    shapes, total, unknown = _shapes(model), 0, 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        left, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not left or not out:
            unknown += 1
            continue
        inner = (
            left[0] if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute) else left[-1]
        )
        dims = [evaluate_dim(d, values) if d is not None else None for d in (*out, inner)]
        known = [d for d in dims if d is not None]
        if len(known) != len(dims):
            unknown += 1
            continue
        total += 2 * math.prod(known[:-1]) * known[-1]
    return total, unknown


# inputs that ONNX Runtime's CUDA kernels read on the host (shapes, sizes, axes): what computes them runs on the CPU
SHAPE_INPUTS = {
    "Reshape": (1,),
    "Expand": (1,),
    "TopK": (1,),
    "Slice": (1, 2, 3, 4),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Pad": (1, 2, 3),
    "Range": (0, 1, 2),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
    "Resize": (1, 2, 3),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceSumSquare": (1,),
    "OneHot": (1,),
}


def shape_only_nodes(model: onnx.ModelProto) -> collections.Counter:
    """Op types of the nodes that only compute shapes, sizes or axes: every output read only where a kernel reads it
    on the host (``SHAPE_INPUTS``) or by another such node. On a GPU, ONNX Runtime's CUDA execution provider places
    them on the CPU; each one is host work between launches."""
    graph_outputs = {output.name for output in model.graph.output}
    consumers = collections.defaultdict(list)  # tensor -> (node index, input slot)
    for index, node in enumerate(model.graph.node):
        for slot, name in enumerate(node.input):
            consumers[name].append((index, slot))
    shape_only: set[int] = set()
    for index in reversed(range(len(model.graph.node))):  # consumers come after producers (topological order)
        node = model.graph.node[index]
        if node.op_type == "Constant" or not node.output:
            continue
        if all(
            name not in graph_outputs
            and consumers[name]
            and all(
                reader in shape_only or slot in SHAPE_INPUTS.get(model.graph.node[reader].op_type, ())
                for reader, slot in consumers[name]
            )
            for name in node.output
            if name
        ):
            shape_only.add(index)
    return collections.Counter(model.graph.node[index].op_type for index in shape_only)


def ort_optimized(path: Path) -> onnx.ModelProto:
    """The graph at ``path`` as ONNX Runtime runs it after its own optimisation (``ORT_ENABLE_ALL``, CPU execution
    provider), without its weights; written beside it as ``<name>.optimized.onnx``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath, load_external_data=False)
