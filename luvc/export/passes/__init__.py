"""onnx-graphsurgeon passes over exported graphs, run in order by ``run_passes``.

Each pass is a plain function ``(graph: gs.Graph) -> gs.Graph`` that rewires and ends with
``graph.cleanup().toposort()``. ``PASSES`` is the default order; simplifying passes repeat until the node count
stops changing. Graphs exported with plugin nodes (``luvc.export.plugin_ops``) hold no OIM/SPU subgraphs for the
fusing passes to find.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Sequence

import onnx
import onnx_graphsurgeon as gs

from luvc.export.manifest_entries import PassEntry
from luvc.export.passes.cleanup import cancel_inverse_pairs, constant_shapes, fold_constants, remove_identity
from luvc.export.passes.fp32_islands import keep_fp32_islands
from luvc.export.passes.fuse_oim import fuse_oim_merge
from luvc.export.passes.fuse_spu import fuse_spu_energy, fuse_spu_gathers
from luvc.export.passes.split_topk import split_large_topk
from luvc.export.stage_times import StageTimes

LOGGER = logging.getLogger("luvc.passes")
Pass = Callable[[gs.Graph], gs.Graph]
SIMPLIFY: tuple[Pass, ...] = (fold_constants, remove_identity, cancel_inverse_pairs, constant_shapes)
PASSES: tuple[Pass, ...] = (
    *SIMPLIFY,
    fuse_oim_merge,
    fuse_spu_gathers,
    fuse_spu_energy,
    split_large_topk,
    keep_fp32_islands,
)


@dataclasses.dataclass
class PassStats:
    """Node counts before and after one pass, in total and by op type."""

    name: str
    before: int
    after: int
    before_ops: dict[str, int]
    after_ops: dict[str, int]

    @property
    def delta(self) -> int:
        return self.after - self.before

    def entry(self) -> PassEntry:
        """The manifest's record of this pass: the counts, and the op types it changed."""
        changed = sorted(set(self.before_ops) | set(self.after_ops))
        ops = {op: (self.before_ops.get(op, 0), self.after_ops.get(op, 0)) for op in changed}
        return PassEntry(self.name, self.before, self.after, {op: c for op, c in ops.items() if c[0] != c[1]})

    def __str__(self) -> str:
        return f"{self.name:<22} | {self.before:6d} | {self.after:6d} | {self.delta:+6d}"


def _ops(graph: gs.Graph) -> dict[str, int]:
    return dict(collections.Counter(node.op for node in graph.nodes))


def run_passes(
    model: onnx.ModelProto,
    passes: Sequence[Pass] | None = None,
    times: StageTimes | None = None,
    graph_name: str | None = None,
    on_pass: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, list[PassStats]]:
    """Apply ``passes`` (default ``PASSES``) to a copy of ``model``; return the new model and per-pass stats. Each
    pass is timed into ``times`` (as ``pass:<name>`` of ``graph_name``) and announced to ``on_pass`` first."""
    passes = list(PASSES if passes is None else passes)
    times = times or StageTimes()
    graph = gs.import_onnx(model)
    stats = []
    for graph_pass in passes:
        if on_pass is not None:
            on_pass(graph_pass.__name__)
        before, before_ops = len(graph.nodes), _ops(graph)
        with times.stage(f"pass:{graph_pass.__name__}", graph_name):
            graph = graph_pass(graph)
            while graph_pass in SIMPLIFY:
                count = len(graph.nodes)
                graph = graph_pass(graph)
                if len(graph.nodes) == count:
                    break
        stats.append(PassStats(graph_pass.__name__, before, len(graph.nodes), before_ops, _ops(graph)))
        LOGGER.info("%s", stats[-1])  # pass | nodes before | after | delta
    result = gs.export_onnx(graph)
    extra = [entry for entry in result.opset_import if entry.domain not in {op.domain for op in model.opset_import}]
    del result.opset_import[:]
    result.opset_import.extend([*model.opset_import, *extra])
    result.ir_version = model.ir_version
    return result, stats


__all__ = [
    "PASSES",
    "PassStats",
    "cancel_inverse_pairs",
    "constant_shapes",
    "fold_constants",
    "fuse_oim_merge",
    "fuse_spu_energy",
    "fuse_spu_gathers",
    "keep_fp32_islands",
    "remove_identity",
    "run_passes",
    "split_large_topk",
]
