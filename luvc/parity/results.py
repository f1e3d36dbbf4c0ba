"""Parity results: measurements kept apart from verdicts, so a saved run can be re-judged and re-plotted.

``ParityResults`` is truthy when every check passes under its tolerances, prints as a table-like summary, and
round-trips through JSON (``parity.json``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from luvc.parity.selection import LayerSelection
from luvc.parity.text import TextAgreement
from luvc.parity.tolerances import Tolerances, backend_tolerances, tolerances_for

LEVELS = {1: "output tensors", 2: "LUVC selection", 3: "first-token logits", 4: "generated text"}


@dataclasses.dataclass
class Check:
    """One measured value of a metric (see ``tolerances.METRICS``), e.g. the relative error of ``prefill.logits``."""

    level: int
    name: str
    metric: str
    value: float


@dataclasses.dataclass
class LayerError:
    """Error of one layer's output (``vision.blocks.3``, ``llm.layers.1``) against PyTorch, on the first sample."""

    name: str
    relative_error: float
    cosine: float


@dataclasses.dataclass
class BackendResult:
    """What export costs on one backend (``ort``, ``trt`` or ``openvino``) against PyTorch LUVC; ``compute``: the
    backend's own arithmetic where it is coarser than the export's precision (``bf16``: OpenVINO's products), judged
    with those bounds too (``luvc.parity.tolerances.backend_tolerances``)."""

    backend: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    kept_overlap: dict[int, float] = dataclasses.field(default_factory=dict)  # min Jaccard per SPU layer
    # per SPU layer: raw and judged overlap, and the differing tokens as ties, non-ties and downstream of a swap
    selections: dict[int, LayerSelection] = dataclasses.field(default_factory=dict)
    # generated text: judged and raw agreement, and the first differing picks as ties or not
    text: TextAgreement = dataclasses.field(default_factory=TextAgreement)
    layer_errors: list[LayerError] = dataclasses.field(default_factory=list)
    localised: bool = False  # whether layer_errors were measured (ONNX Runtime only)
    compute: str = ""

    def failures(self, tolerances: Tolerances) -> list[Check]:
        return [check for check in self.checks if not tolerances.passes(check.metric, check.value)]

    def first_diverging_layer(self, tolerances: Tolerances) -> str | None:
        """The first layer (vision blocks, then LLM layers) whose relative error crosses the tolerance."""
        for layer in self.layer_errors:
            if not tolerances.passes("relative_error", layer.relative_error):
                return layer.name
        return None


@dataclasses.dataclass
class ParityResults:
    """Parity of one export (and optionally its engines) over a set of samples."""

    export_dir: str
    model: str
    precision: str
    tolerances: Tolerances
    samples: list[str]
    backends: list[BackendResult]
    near_ties: dict[int, float]  # share of near-tie tokens around each SPU cut (PyTorch scores)
    # what compression costs: LUVC against the uncompressed model on one backend ("pytorch"; "ort" with a baseline
    # export), backend -> metric -> value
    compression: dict[str, dict[str, float]]

    def __bool__(self) -> bool:
        return all(not backend.failures(self.bounds(backend)) for backend in self.backends)

    def bounds(self, backend: BackendResult) -> Tolerances:
        """The tolerances ``backend`` is judged by: the export's, loosened for its own arithmetic."""
        return backend_tolerances(self.tolerances, backend.compute)

    def judge(self, tolerances: Tolerances) -> ParityResults:
        """The same measurements under other tolerances."""
        return dataclasses.replace(self, tolerances=tolerances)

    def __str__(self) -> str:
        lines = [f"Parity of {self.export_dir} ({self.model}, {self.precision}) over {len(self.samples)} samples"]
        for backend in self.backends:
            bounds = self.bounds(backend)
            for check in backend.checks:
                verdict = "PASS" if bounds.passes(check.metric, check.value) else "FAIL"
                limit = bounds.limit(check.metric)
                lines.append(
                    f"  [{verdict}] {backend.backend} L{check.level} {check.name} {check.metric}: "
                    f"{check.value:.4g} (limit {limit:g})"
                )
            for selection in backend.selections.values():
                if selection.ties or selection.non_ties or selection.downstream:
                    lines.append(
                        f"  {backend.backend} kept_visual_indices.{selection.layer}: Jaccard {selection.jaccard:.4g}; "
                        f"differing tokens: {selection.ties} at near ties, {selection.non_ties} not, "
                        f"{selection.downstream} downstream of an earlier swap"
                    )
            text = backend.text
            if text.ties or text.non_ties:
                lines.append(
                    f"  {backend.backend} generated text: exact match {text.exact:.4g}, token agreement "
                    f"{text.tokens:.4g} position by position; first differing tokens: {text.ties} at near ties "
                    f"({text.downstream} tokens after them not judged), {text.non_ties} not"
                )
            layer = backend.first_diverging_layer(bounds)
            if layer:
                lines.append(f"  {backend.backend}: first diverging layer: {layer}")
        for name, values in self.compression.items():
            measured = ", ".join(f"{metric} {value:.4g}" for metric, value in values.items())
            lines.append(f"  compression cost on {name} (LUVC vs uncompressed; reported, not judged): {measured}")
        lines.append("PASSED" if self else "FAILED")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["passed"] = bool(self)
        for backend, result in zip(data["backends"], self.backends):
            bounds = self.bounds(result)
            backend["first_diverging_layer"] = result.first_diverging_layer(bounds)
            for check in backend["checks"]:
                check["limit"] = bounds.limit(check["metric"])
                check["passed"] = bounds.passes(check["metric"], check["value"])
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ParityResults:
        """Reload a ``parity.json`` (verdicts are recomputed from the measurements and tolerances)."""
        data = json.loads(Path(path).read_text())
        backends = [
            BackendResult(
                backend=b["backend"],
                checks=[Check(c["level"], c["name"], c["metric"], c["value"]) for c in b["checks"]],
                kept_overlap={int(k): v for k, v in b["kept_overlap"].items()},
                selections={int(k): LayerSelection(**v) for k, v in b.get("selections", {}).items()},
                text=TextAgreement(**b["text"]) if "text" in b else TextAgreement(),
                layer_errors=[LayerError(**layer) for layer in b["layer_errors"]],
                localised=b["localised"],
                compute=b.get("compute", ""),
            )
            for b in data["backends"]
        ]
        tolerances = Tolerances(**data["tolerances"]) if data.get("tolerances") else tolerances_for(data["precision"])
        return cls(
            export_dir=data["export_dir"],
            model=data["model"],
            precision=data["precision"],
            tolerances=tolerances,
            samples=data["samples"],
            backends=backends,
            near_ties={int(k): v for k, v in data["near_ties"].items()},
            compression=data["compression"],
        )
