"""Evaluation results: what every run answered and measured, kept apart from the metrics computed from it, so a saved
run (``eval.json``) reloads, re-scores and re-plots.

A ``Run`` is one method at one budget point on one backend; each ``Answer`` holds the generated text, what scoring
read from it and its score, the measured time to first token, and the request's visual tokens per decoder layer,
FLOPs and KV-cache bytes from the cost model. ``EvalResults.summary`` turns a run into accuracy (overall, per type,
POPE's yes/no metrics), agreement with the uncompressed model's answers, mean tokens and FLOPs, and median TTFT.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from luvc.errors import critical
from luvc.eval.scoring import YesNoMetrics, yes_no_metrics

FORMAT_VERSION = 1
REFERENCE = ("none", "", "pytorch")  # the run every agreement is measured against: the uncompressed model


@dataclasses.dataclass
class QuestionEntry:
    """A question as the results record it: its id, type and accepted answers."""

    id: str
    type: str
    answers: list[str]


@dataclasses.dataclass
class Answer:
    """One run's answer to one question, and what the request cost. ``visual_tokens[l]``: visual tokens entering
    decoder layer ``l``; ``llm_input_tokens``: visual tokens the LLM receives (after OIM); FLOPs per the cost model
    (``llm_flops``: prefill, with the criterion's ``selection_flops``); ``kv_cache_bytes`` at fp16."""

    question: str
    text: str
    read: str
    score: float
    ttft_ms: float
    visual_tokens: list[int]
    llm_input_tokens: int
    encoder_flops: int
    llm_flops: int
    selection_flops: int
    kv_cache_bytes: int


@dataclasses.dataclass
class Run:
    """One method at one budget point (``""``: a method that prunes nothing) on one backend (``pytorch``, ``ort``,
    ``trt``), with its LUVC config (budgets aside) and its answers in question order."""

    method: str
    point: str
    backend: str
    config: dict
    answers: list[Answer] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.method, self.point, self.backend

    @property
    def label(self) -> str:
        """``method @ point (backend)``, e.g. ``luvc @ ratio 0.25 (pytorch)``."""
        return f"{self.method}{f' @ {self.point}' if self.point else ''} ({self.backend})"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """The metrics of one run (means are per question; TTFT is the median)."""

    label: str
    accuracy: float
    by_type: dict[str, float]
    yes_no: YesNoMetrics | None
    agreement: float
    visual_tokens_per_layer: list[float]
    llm_input_tokens: float
    encoder_gflops: float
    llm_gflops: float
    selection_gflops: float
    ttft_ms: float
    kv_cache_mib: float

    @property
    def total_gflops(self) -> float:
        return self.encoder_gflops + self.llm_gflops

    @property
    def mean_visual_tokens(self) -> float:
        """Visual tokens an average decoder layer sees: what the LLM's cost follows."""
        return statistics.fmean(self.visual_tokens_per_layer) if self.visual_tokens_per_layer else 0.0


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


@dataclasses.dataclass
class EvalResults:
    """Every run of one evaluation over one question set."""

    model: str
    data: str
    questions: list[QuestionEntry]
    runs: list[Run]
    max_new_tokens: int
    export_dir: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    protocol: str | None = None  # a published benchmark's layout (luvc.eval.points.PROTOCOLS)
    sweep_axes: list[str] = dataclasses.field(default_factory=list)  # the reconstruction sweep's axes, if it ran

    def run(self, method: str, point: str = "", backend: str = "pytorch") -> Run:
        """The run of ``method`` at ``point`` on ``backend``."""
        for run in self.runs:
            if run.key == (method, point, backend):
                return run
        raise KeyError(f"no run {method!r} at {point!r} on {backend!r}")

    @property
    def reference(self) -> Run:
        """The uncompressed model's run in PyTorch, which every agreement is measured against."""
        return self.run(*REFERENCE)

    def summary(self, run: Run) -> RunSummary:
        """``run``'s metrics (agreement: the share of questions where scoring read the same answer as from the
        uncompressed model's)."""
        types = {entry.id: entry for entry in self.questions}
        by_type: dict[str, list[float]] = {}
        for answer in run.answers:
            by_type.setdefault(types[answer.question].type, []).append(answer.score)
        yes_no = [(a.read, types[a.question].answers[0]) for a in run.answers if types[a.question].type == "yes-no"]
        reference = {answer.question: answer.read for answer in self.reference.answers}
        layers = zip(*(answer.visual_tokens for answer in run.answers))
        return RunSummary(
            label=run.label,
            accuracy=_mean([answer.score for answer in run.answers]),
            by_type={kind: _mean(scores) for kind, scores in by_type.items()},
            yes_no=yes_no_metrics(*zip(*yes_no)) if yes_no else None,
            agreement=_mean([float(answer.read == reference.get(answer.question)) for answer in run.answers]),
            visual_tokens_per_layer=[_mean(layer) for layer in layers],
            llm_input_tokens=_mean([answer.llm_input_tokens for answer in run.answers]),
            encoder_gflops=_mean([answer.encoder_flops for answer in run.answers]) / 1e9,
            llm_gflops=_mean([answer.llm_flops for answer in run.answers]) / 1e9,
            selection_gflops=_mean([answer.selection_flops for answer in run.answers]) / 1e9,
            ttft_ms=statistics.median([answer.ttft_ms for answer in run.answers]) if run.answers else 0.0,
            kv_cache_mib=_mean([answer.kv_cache_bytes for answer in run.answers]) / 2**20,
        )

    def summaries(self) -> list[RunSummary]:
        return [self.summary(run) for run in self.runs]

    def __str__(self) -> str:
        summaries = self.summaries()
        width = max([36, *(len(summary.label) for summary in summaries)])
        lines = [
            f"Eval of {self.model} on {self.data}: {len(self.questions)} questions, {len(self.runs)} runs",
            f"  {'run':<{width}} {'accuracy':>8} {'agree':>6} {'tokens/layer':>12} {'GFLOPs':>9} {'TTFT ms':>8}",
        ]
        for summary in summaries:
            lines.append(
                f"  {summary.label:<{width}} {summary.accuracy:>8.3f} {summary.agreement:>6.3f} "
                f"{summary.mean_visual_tokens:>12.1f} {summary.total_gflops:>9.3f} {summary.ttft_ms:>8.1f}"
            )
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["format"] = FORMAT_VERSION
        data["summaries"] = [dataclasses.asdict(summary) for summary in self.summaries()]
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EvalResults:
        """Reload an ``eval.json`` (summaries are recomputed from the answers)."""
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT_VERSION:
            critical(
                f"{path} is eval format {data.get('format')}, this version reads {FORMAT_VERSION}; run the eval again."
            )
        runs = [
            Run(r["method"], r["point"], r["backend"], r["config"], [Answer(**a) for a in r["answers"]])
            for r in data["runs"]
        ]
        return cls(
            model=data["model"],
            data=data["data"],
            questions=[QuestionEntry(**q) for q in data["questions"]],
            runs=runs,
            max_new_tokens=data["max_new_tokens"],
            export_dir=data["export_dir"],
            notes=data["notes"],
            protocol=data.get("protocol"),
            sweep_axes=data.get("sweep_axes", []),
        )
