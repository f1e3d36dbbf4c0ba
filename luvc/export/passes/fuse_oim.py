"""Fuse each OIM merge into its canonical form.

Pattern (``OIM_MERGE``, under ``/vision/blocks.{i}/oim/``): ``Gather(x, a)``, ``Gather(x, b)`` on one axis with
constant indices, each times a constant weight, then ``Add``. When the step is regular (weights all 0.5, pairs
``(2i, 2i+1)`` of a raster axis with stride ``d``, no carried unit), it emits ``Reshape -> ReduceMean -> Reshape``:
the units axis ``N`` becomes ``(N / 2d, 2, d)`` and the mean runs over the pair axis. Irregular steps (an odd
trailing unit, Qwen2.5-VL window order) keep the gather form. The result is bit-identical: halving is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from luvc.export.naming import in_unit


def _int64(name: str, values) -> gs.Constant:
    return gs.Constant(name, np.array(values, dtype=np.int64))


def _constant(tensor) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


@dataclasses.dataclass(frozen=True)
class OimMerge:
    """One OIM merge step in a graph: ``out = weight_a * x[index_a] + weight_b * x[index_b]`` along ``axis``."""

    x: gs.Tensor
    axis: int
    index_a: np.ndarray
    index_b: np.ndarray
    weight_a: np.ndarray
    weight_b: np.ndarray
    out: gs.Tensor


def match_oim_merge(add: gs.Node) -> OimMerge | None:
    """The parts of one merge ending at ``add``, or ``None`` when ``add`` is not one."""
    if add.op != "Add" or not in_unit(add.name, "oim"):
        return None
    parts = []
    for operand in add.inputs:
        if len(operand.inputs) != 1 or operand.inputs[0].op != "Mul":
            return None
        mul = operand.inputs[0]
        gather = next((t.inputs[0] for t in mul.inputs if len(t.inputs) == 1 and t.inputs[0].op == "Gather"), None)
        weight = next((_constant(t) for t in mul.inputs if _constant(t) is not None), None)
        index = _constant(gather.inputs[1]) if gather is not None else None
        if gather is None or weight is None or index is None:
            return None
        parts.append((gather, index, weight))
    (gather_a, index_a, weight_a), (gather_b, index_b, weight_b) = parts
    axis = gather_a.attrs.get("axis", 0)
    if gather_a.inputs[0] is not gather_b.inputs[0] or gather_b.attrs.get("axis", 0) != axis:
        return None
    return OimMerge(gather_a.inputs[0], axis, index_a, index_b, weight_a, weight_b, add.outputs[0])


def _regular_stride(a: np.ndarray, b: np.ndarray, units: int) -> int | None:
    """``d`` when the pairs are ``(a, a + d)`` laid out as ``(units / 2d, 2, d)``; else ``None``."""
    if a.ndim != 1 or a.size * 2 != units or not a.size:
        return None
    d = int(b[0] - a[0])
    if d <= 0 or units % (2 * d) or not np.array_equal(b, a + d):
        return None
    k = np.arange(a.size)
    return d if np.array_equal(a, (k // d) * 2 * d + k % d) else None


def fuse_oim_merge(graph: gs.Graph) -> gs.Graph:
    """Rewrite every regular OIM merge as ``Reshape -> ReduceMean -> Reshape`` (see the module docstring)."""
    for add in [node for node in graph.nodes if node.op == "Add"]:
        match = match_oim_merge(add)
        if match is None or match.x.shape is None:
            continue
        x, axis, out = match.x, match.axis, match.out
        shape = list(x.shape)
        axis = axis % len(shape)
        units = shape[axis]
        weights_half = all(np.all(np.asarray(w) == 0.5) for w in (match.weight_a, match.weight_b))
        stride = _regular_stride(match.index_a, match.index_b, units) if isinstance(units, int) else None
        unknown = [i for i, dim in enumerate(shape) if not isinstance(dim, int)]
        if not weights_half or stride is None or len(unknown) > 1:
            continue
        prefix = add.name  # unique: a unit may merge several tensors (Qwen3-VL's DeepStack features)
        static = [-1 if not isinstance(dim, int) else dim for dim in shape]
        split = static[:axis] + [units // (2 * stride), 2, stride] + static[axis + 1 :]
        merged = static[:axis] + [units // 2] + static[axis + 1 :]
        pairs = gs.Variable(f"{prefix}/Reshape_pairs/output_0", dtype=x.dtype)
        mean = gs.Variable(f"{prefix}/ReduceMean/output_0", dtype=x.dtype)
        axes = gs.Constant(f"{prefix}/ReduceMean/axes", np.array([axis + 1], dtype=np.int64))
        graph.nodes += [
            gs.Node(
                "Reshape",
                f"{prefix}/Reshape_pairs",
                inputs=[x, _int64(f"{prefix}/pairs_shape", split)],
                outputs=[pairs],
            ),
            gs.Node("ReduceMean", f"{prefix}/ReduceMean", {"keepdims": 0}, inputs=[pairs, axes], outputs=[mean]),
            gs.Node(
                "Reshape",
                f"{prefix}/Reshape_merged",
                inputs=[mean, _int64(f"{prefix}/merged_shape", merged)],
                outputs=[out],
            ),
        ]
        add.outputs = []
    return graph.cleanup().toposort()
