"""``StageTimes``: where an export's wall time goes, stage by stage and graph by graph.

The exporter records into one when given one (``export_model(..., times=StageTimes())``): loading (by the caller),
tracing (``torch.export``, straight to the operators torch.onnx translates: ``luvc.export.decomposed_trace``),
converting to ONNX (``torch.onnx.export``), writing weights, each graph pass, lint,
saving, hashing and the manifest. ``luvc-export export`` prints its summary; ``benchmarks/export_time.py`` tables it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class StageTime:
    """One timed stage: its name (``trace``, ``pass:fold_constants``, ...), the graph it worked on (``None``: the
    whole export) and its wall time."""

    stage: str
    graph: str | None
    seconds: float


@dataclasses.dataclass
class StageTimes:
    """Wall time per stage of an export, in the order the stages ran."""

    records: list[StageTime] = dataclasses.field(default_factory=list)
    workers: int = 1  # processes whose stages ran side by side (luvc.export.graph_workers): their sum exceeds the wall

    @contextlib.contextmanager
    def stage(self, stage: str, graph: str | None = None) -> Iterator[None]:
        """Time the body as ``stage`` (of ``graph``)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.records.append(StageTime(stage, graph, time.perf_counter() - began))

    def by_stage(self) -> dict[str, float]:
        """Seconds per stage, summed over graphs, in the order stages first ran (every pass under ``passes``)."""
        totals: dict[str, float] = {}
        for record in self.records:
            key = "passes" if record.stage.startswith("pass:") else record.stage
            totals[key] = totals.get(key, 0.0) + record.seconds
        return totals

    def by_graph(self) -> dict[str, float]:
        """Seconds per graph, over its stages."""
        totals: dict[str, float] = {}
        for record in self.records:
            if record.graph is not None:
                totals[record.graph] = totals.get(record.graph, 0.0) + record.seconds
        return totals

    def summary(self, wall_seconds: float | None = None) -> str:
        """One line: the wall time (``wall_seconds``, else the stages' sum) and each stage's seconds, largest first."""
        totals = self.by_stage()
        parts = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in sorted(totals.items(), key=lambda i: -i[1]))
        if self.workers > 1:
            parts += f" (summed over {self.workers} graph worker processes)"
        return f"{sum(totals.values()) if wall_seconds is None else wall_seconds:.1f} s: {parts}"
