"""The reconstruction sweep (``eval --sweep``): LUVC under every combination of the choices the paper leaves open,
at each budget point, and which wins on the user's questions.

Each axis is one reconstructed choice (``LUVCConfig``): which end of SPU's scores a cut keeps (``keep``), what it
scores (``input``), the spectral-residual low-pass (``lowpass``), and how many OIM steps merge in the encoder (``oim``:
one after the middle block, the default, or two, alternating W and H). The default of every axis comes first, so the
first variant is LUVC as it ships. From the runs: the Pareto front of accuracy against FLOPs per request (encoder +
LLM prefill) over every variant and point, and the winner per question type (highest mean accuracy over the points;
ties go to agreement with the uncompressed model, then to the earlier variant).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Sequence
from typing import Any

from luvc.compress.config import LUVCConfig
from luvc.errors import critical
from luvc.eval.results import EvalResults

SWEEP_AXES: dict[
    str, tuple[str, tuple[str, ...] | tuple[int, ...]]
] = {  # axis -> (what it sets, its values, the default first)
    "keep": ("spu_keep", ("high", "low")),
    "input": ("spu_input", ("residual", "normed")),
    "lowpass": ("spu_lowpass", ("raster", "grid")),
    "oim": ("OIM steps", (1, 2)),
}
SWEEP_PREFIX = "luvc["


@dataclasses.dataclass(frozen=True)
class SweepVariant:
    """One combination of the swept choices: ``values`` by axis (axes not swept keep the base config's)."""

    values: tuple[tuple[str, str | int], ...]

    @property
    def label(self) -> str:
        """The run's method name, e.g. ``luvc[keep=low,oim=2]``."""
        return SWEEP_PREFIX + ",".join(f"{axis}={value}" for axis, value in self.values) + "]"

    def config(self, base: LUVCConfig, vision_depth: int) -> LUVCConfig:
        """``base`` with this variant's choices (``oim``: steps after blocks ``depth // 2 - 1`` and on)."""
        changes: dict[str, Any] = {}  # LUVCConfig field -> value
        for axis, value in self.values:
            if axis == "oim":  # the number of merge steps
                first = max(vision_depth // 2 - 1, 0)
                changes["oim_layers"] = tuple(range(first, min(first + int(value), vision_depth)))
            else:
                changes[SWEEP_AXES[axis][0]] = value
        return dataclasses.replace(base, **changes)


def parse_sweep(text: str) -> tuple[str, ...]:
    """``--sweep``: ``all`` or comma-separated axes of ``SWEEP_AXES``."""
    if text.strip().lower() == "all":
        return tuple(SWEEP_AXES)
    axes = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if "all" in (axis.lower() for axis in axes):
        critical(
            f"--sweep {text!r}: 'all' already names every axis; give all alone, or only axes of {list(SWEEP_AXES)}."
        )
    unknown = [axis for axis in axes if axis not in SWEEP_AXES]
    if unknown or not axes:
        critical(f"--sweep {text!r}: {unknown or 'nothing'} is not among {list(SWEEP_AXES)} (or 'all').")
    return axes


def sweep_variants(axes: Sequence[str]) -> list[SweepVariant]:
    """Every combination of the values of ``axes``, the shipped defaults first (none without axes)."""
    if not axes:
        return []
    grids = [[(axis, value) for value in SWEEP_AXES[axis][1]] for axis in axes]
    return [SweepVariant(tuple(choice)) for choice in itertools.product(*grids)]


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One variant at one budget point: its mean accuracy, agreement and GFLOPs per request."""

    variant: str
    point: str
    accuracy: float
    agreement: float
    gflops: float


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The points no other point dominates (at most the GFLOPs and at least the accuracy, better in one), cheapest
    first."""
    front = [
        p
        for p in points
        if not any(
            q.gflops <= p.gflops and q.accuracy >= p.accuracy and (q.gflops < p.gflops or q.accuracy > p.accuracy)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: (p.gflops, -p.accuracy))


def winners_by_type(by_variant: dict[str, dict[str, list[float]]], agreement: dict[str, float]) -> dict[str, str]:
    """Per question type, the variant with the highest mean accuracy over the points (``by_variant[variant][type]``:
    its accuracies, one per point); ties go to agreement, then to the earlier variant."""
    types = dict.fromkeys(kind for scores in by_variant.values() for kind in scores)
    winners = {}
    for kind in types:
        ranked = [
            (statistics.fmean(scores[kind]), agreement[variant], -order, variant)
            for order, (variant, scores) in enumerate(by_variant.items())
            if scores.get(kind)
        ]
        winners[kind] = max(ranked)[3]
    return winners


@dataclasses.dataclass(frozen=True)
class SweepAnalysis:
    """What the sweep found: every variant at every point, the Pareto front, the winner per question type, and the
    shipped default's label (the first variant)."""

    axes: tuple[str, ...]
    points: tuple[SweepPoint, ...]
    front: tuple[SweepPoint, ...]
    winners: dict[str, str]
    default: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def analyse_sweep(results: EvalResults) -> SweepAnalysis | None:
    """The sweep's analysis of ``results`` (``None`` when no sweep ran)."""
    runs = [run for run in results.runs if run.method.startswith(SWEEP_PREFIX) and run.backend == "pytorch"]
    if not results.sweep_axes or not runs:
        return None
    points: list[SweepPoint] = []
    by_variant: dict[str, dict[str, list[float]]] = {}  # variant -> question type -> accuracies
    agreement: dict[str, list[float]] = {}
    for run in runs:
        summary = results.summary(run)
        points.append(SweepPoint(run.method, run.point, summary.accuracy, summary.agreement, summary.total_gflops))
        for kind, accuracy in summary.by_type.items():
            by_variant.setdefault(run.method, {}).setdefault(kind, []).append(accuracy)
        agreement.setdefault(run.method, []).append(summary.agreement)
    mean_agreement = {variant: statistics.fmean(values) for variant, values in agreement.items()}
    return SweepAnalysis(
        axes=tuple(results.sweep_axes),
        points=tuple(points),
        front=tuple(pareto_front(points)),
        winners=winners_by_type(by_variant, mean_agreement),
        default=runs[0].method,
    )
