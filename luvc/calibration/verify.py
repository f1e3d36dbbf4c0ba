"""What calibration proves about the export it wrote: every graph loads, and a few greedy tokens through the decode
graph agree with the float export's.

The float export's greedy run of each sample (``ReferenceRun``: its tokens and the logits each was chosen from) is
the reference. The quantized export runs the same samples; each step is compared while both have generated the same
tokens so far (after the first difference their inputs differ, so their logits no longer compare). Step 0 is the
prefill graph's, every later step the decode graph's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from luvc.errors import LuvcError, critical
from luvc.samples import Sample


@dataclasses.dataclass(frozen=True)
class ReferenceRun:
    """A float export's greedy run of one sample: ``tokens (steps,)`` and ``logits (steps, V)``."""

    tokens: np.ndarray
    logits: np.ndarray

    @property
    def first_logits(self) -> np.ndarray:
        return self.logits[0]


def greedy_run(pipeline, sample: Sample, steps: int) -> ReferenceRun:
    """``steps`` greedy tokens of ``sample`` through ``pipeline`` (no stop tokens), with their logits."""
    tokens, logits, _ = pipeline.greedy(pipeline.prepare([sample.image], [sample.prompt]), steps)
    return ReferenceRun(tokens[0], logits[0])


def logits_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference, candidate = (np.asarray(x, dtype=np.float64).ravel() for x in (reference, candidate))
    return float(reference @ candidate / (np.linalg.norm(reference) * np.linalg.norm(candidate)))


def worst_cosine(agreement: dict[str, float]) -> float:
    """The worst logits cosine of an agreement: first token or any decode step compared (what
    ``--target-agreement`` is held to)."""
    return min(agreement["logits_cosine_min"], agreement.get("decode_logits_cosine_min", 1.0))


def parity_warning(agreement: dict[str, float], precision: str, float_precision: str) -> str | None:
    """A line saying that ``agreement``'s worst logits cosine against the float export is already below the logits
    cosine ``parity`` holds a ``precision`` export to against PyTorch (so parity is expected to fail), with what to
    try; ``None`` when it is within."""
    from luvc.parity.tolerances import tolerances_for

    bound, worst = tolerances_for(precision, float_precision).tensor_cosine, worst_cosine(agreement)
    if worst >= bound:
        return None
    remedies = {
        "int4": "more calibration samples (--data) or a smaller --block-size may help",
        "int8w": "--precision int8w rounds to nearest and has nothing to tune; deploy the float export",
    }
    remedy = remedies.get(precision, f"--target-agreement {bound} keeps the most sensitive layers in floating point")
    return (
        f"logits cosine {worst:.4f} against the {float_precision} export is below the {bound} that parity holds "
        f"{precision} exports to, so parity is expected to fail; {remedy}."
    )


def open_every_graph(pipeline, closed_kinds: Collection[str] = ()) -> None:
    """Open a session for every graph of ``pipeline``'s export; one that cannot load is named. Graphs of
    ``closed_kinds`` are opened first, alone, and closed again once loaded: each quantized session packs its own copy
    of the weights it shares, so a graph no later run needs would hold one copy of the LLM for nothing (4.5 GB at 3B
    widths)."""
    graphs = pipeline.manifest.graphs
    for name, graph in sorted(graphs.items(), key=lambda item: item[1].kind not in closed_kinds):
        try:
            pipeline.sessions.open([name])
        except LuvcError:
            raise
        except Exception as error:  # ONNX Runtime raises its own types; say which graph and why
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            critical(f"The calibrated {name} graph does not load in ONNX Runtime ({reason}); nothing was written.")
        if graph.kind in closed_kinds:
            pipeline.sessions.close(name)


def agreement_with_reference(
    references: Sequence[ReferenceRun], quantized, samples: Sequence[Sample], target: float | None
) -> dict[str, float]:
    """One greedy run of each of ``samples`` through the ``quantized`` pipeline against the float ``references``:
    first-token top-1 agreement and logits cosine (worst and mean), the decode steps compared, the fraction of the
    reference's tokens reproduced before the first difference, and the worst decode-step logits cosine (1.0 when the
    first tokens already differ: no decode step compares). Non-finite logits, or a decode cosine under ``target``
    when one is given, stop calibration naming the graph."""
    top1, first_cosines = [], []
    total, matched, cosines = 0, 0, []
    for sample, reference in zip(samples, references):
        run = greedy_run(quantized, sample, len(reference.tokens))
        top1.append(float(reference.first_logits.argmax() == run.first_logits.argmax()))
        first_cosines.append(logits_cosine(reference.first_logits, run.first_logits))
        total += len(reference.tokens)
        for step, (expected, got) in enumerate(zip(reference.tokens, run.tokens)):
            if not np.all(np.isfinite(run.logits[step])):
                critical(
                    f"The calibrated {'decode' if step else 'prefill'} graph gives non-finite logits at step {step} "
                    f"of sample {sample.name}; nothing was written. Calibrate with another --method or more samples "
                    "(--data)."
                )
            if step:
                cosines.append(logits_cosine(reference.logits[step], run.logits[step]))
            if expected != got:
                break
            matched += 1
    worst = min(cosines) if cosines else 1.0
    if target is not None and worst < target:
        critical(
            f"The calibrated decode graph reaches a logits cosine of {worst:.6f} against the float export, under "
            f"--target-agreement {target}; nothing was written. Lower the target or calibrate with more samples "
            "(--data)."
        )
    return {
        "top1_agreement": float(np.mean(top1)),
        "logits_cosine_min": float(np.min(first_cosines)),
        "logits_cosine_mean": float(np.mean(first_cosines)),
        "decode_steps_compared": float(len(cosines)),
        "greedy_prefix_agreement": matched / total if total else 1.0,
        "decode_logits_cosine_min": worst,
    }
