"""Eval report: ``eval.json`` (reloadable), ``report.md`` and ``pareto.png`` (with a sweep, ``sweep.json`` and
``sweep.png`` too), written atomically to one folder."""

from __future__ import annotations

import json
from pathlib import Path

from luvc.compress.methods import METHODS
from luvc.eval.data import QUESTION_TYPES
from luvc.eval.points import PROTOCOLS
from luvc.eval.results import EvalResults, RunSummary
from luvc.eval.sweep import SWEEP_AXES, SWEEP_PREFIX, SweepAnalysis, analyse_sweep
from luvc.staging import OutputKind, staged_folder

EVAL_OUTPUT = OutputKind("an eval report", "eval.json")
PARETO = "pareto.png"
SWEEP_PLOT = "sweep.png"


def _series(results: EvalResults) -> dict[tuple[str, str], list[RunSummary]]:
    """Each method's runs per backend (one plotted line each), in run order."""
    lines: dict[tuple[str, str], list[RunSummary]] = {}
    for run in results.runs:
        lines.setdefault((run.method, run.backend), []).append(results.summary(run))
    return lines


def plot_pareto(results: EvalResults, path: Path) -> None:
    """Accuracy against median time to first token and against FLOPs per request (encoder + LLM prefill), one line
    per method (and backend) through its budget points; the uncompressed model is a star, an export's backend runs
    are squares."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (by_time, by_flops) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for (method, backend), summaries in _series(results).items():
        if method.startswith(SWEEP_PREFIX):  # the sweep has a plot of its own
            continue
        label = method if backend == "pytorch" else f"{method} ({backend})"
        for axes, x_of in ((by_time, lambda s: s.ttft_ms), (by_flops, lambda s: s.total_gflops)):
            points = sorted((x_of(summary), summary.accuracy) for summary in summaries)
            xs, ys = [x for x, _ in points], [y for _, y in points]
            if method == "none":
                axes.scatter(xs, ys, marker="*", s=160, color="black", label=label, zorder=3)
            else:
                axes.plot(xs, ys, marker="o" if backend == "pytorch" else "s", linestyle="-", label=label)
    by_time.set_xlabel("time to first token, median (ms)")
    by_flops.set_xlabel("GFLOPs per request (encoder + LLM prefill, cost model)")
    by_time.set_ylabel("accuracy")
    for axes in (by_time, by_flops):
        axes.grid(alpha=0.3)
    by_flops.legend(fontsize=7, loc="best")
    figure.suptitle(f"Accuracy vs cost: {results.model} on {len(results.questions)} questions")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(results: EvalResults) -> str:
    """The report text: the runs' accuracy and cost, per-type accuracy, POPE metrics, tokens per layer, the methods."""
    summaries = results.summaries()
    types = [kind for kind in QUESTION_TYPES if any(q.type == kind for q in results.questions)]
    reference = results.summary(results.reference)
    lines = [
        f"# Eval: {results.model}",
        "",
        f"Questions: {len(results.questions)} from `{results.data}` "
        f"({', '.join(f'{sum(q.type == kind for q in results.questions)} {kind}' for kind in types)}); "
        f"up to {results.max_new_tokens} new tokens per answer (greedy)."
        + (f" Export: `{results.export_dir}`." if results.export_dir else ""),
        "",
        "## Accuracy against cost",
        "",
        "Agreement: share of questions where the answer reads the same as the uncompressed model's (`none`). "
        "Tokens/layer: visual tokens an average decoder layer sees (equal budgets: equal for every method at a "
        "point). Per request, from the cost model: FLOPs of the encoder, of the decoder layers, and of the pruning "
        "criterion's scoring; the LLM speedup counts both LLM parts; KV cache at fp16.",
        "",
        "| run | accuracy | agreement | LLM input tokens | tokens/layer | encoder GFLOPs | layers GFLOPs "
        "| scoring MFLOPs | LLM speedup | TTFT ms (median) | KV cache MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        speedup = reference.llm_gflops / summary.llm_gflops if summary.llm_gflops else float("nan")
        lines.append(
            f"| {summary.label} | {summary.accuracy:.3f} | {summary.agreement:.3f} | {summary.llm_input_tokens:.1f} "
            f"| {summary.mean_visual_tokens:.1f} | {summary.encoder_gflops:.4g} "
            f"| {summary.llm_gflops - summary.selection_gflops:.4g} | {summary.selection_gflops * 1e3:.4g} "
            f"| {speedup:.2f}x | {summary.ttft_ms:.1f} | {summary.kv_cache_mib:.3g} |"
        )
    lines += ["", f"![accuracy vs cost]({PARETO})", "", "## Accuracy per question type", ""]
    lines += ["| run | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for summary in summaries:
        lines.append(f"| {summary.label} | " + " | ".join(f"{summary.by_type.get(t, 0.0):.3f}" for t in types) + " |")
    if "yes-no" in types:
        lines += ["", "## Yes/no questions (POPE metrics, 'yes' positive)", ""]
        lines += ["| run | accuracy | precision | recall | F1 | yes ratio |", "|---|---|---|---|---|---|"]
        for summary in summaries:
            m = summary.yes_no
            if m is None:  # a run without yes/no questions
                continue
            lines.append(
                f"| {summary.label} | {m.accuracy:.3f} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} "
                f"| {m.yes_ratio:.3f} |"
            )
    layers = max(len(summary.visual_tokens_per_layer) for summary in summaries)
    lines += ["", "## Visual tokens entering each decoder layer (mean per request)", ""]
    lines += ["| run | " + " | ".join(str(layer) for layer in range(layers)) + " |", "|---" * (layers + 1) + "|"]
    for summary in summaries:
        lines.append(f"| {summary.label} | " + " | ".join(f"{v:.1f}" for v in summary.visual_tokens_per_layer) + " |")
    lines += _protocol_section(results) + _sweep_section(analyse_sweep(results))
    lines += ["", "## Methods", ""]
    for name in dict.fromkeys(run.method for run in results.runs):
        method = METHODS.get(name)
        if name.startswith(SWEEP_PREFIX):
            lines.append(f"- `{name}`: LUVC with the sweep's choices ({_describe_variant(name)})")
            continue
        if method is None:
            lines.append(f"- `{name}`: the export's own config")
            continue
        exports = "exports like LUVC (static budgets)" if method.export_refusal is None else "PyTorch only"
        lines.append(f"- `{name}`: {method.summary}; {exports}.")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in results.notes]
    return "\n".join(lines) + "\n"


def _describe_variant(label: str) -> str:
    """``keep=low,oim=2`` as what each choice sets."""
    parts = label[len(SWEEP_PREFIX) : -1].split(",")
    described = []
    for part in parts:
        axis, _, value = part.partition("=")
        target = SWEEP_AXES[axis][0]
        described.append(f"{target} {value}" if axis == "oim" else f"{target}={value}")
    return ", ".join(described)


def _protocol_section(results: EvalResults) -> list[str]:
    """The published benchmark's table: each method's accuracy at each keep ratio, as measured and as a share of the
    uncompressed model's, its prefill latency, and accuracy per question type."""
    if not results.protocol:
        return []
    protocol = PROTOCOLS[results.protocol]
    reference = results.summary(results.reference)
    at_points = [run for run in results.runs if run.point and run.backend == "pytorch"]
    summaries = {(run.method, run.point): results.summary(run) for run in at_points}  # each run summarised once
    points = list(dict.fromkeys(run.point for run in at_points))
    methods = list(dict.fromkeys(run.method for run in at_points))
    types = [kind for kind in QUESTION_TYPES if any(q.type == kind for q in results.questions)]
    lines = [
        "",
        f"## Protocol: {protocol.name}",
        "",
        f"{protocol.summary[0].upper()}{protocol.summary[1:]}. Each cell: accuracy, its share of the uncompressed "
        f"model's ({reference.accuracy:.3f}), and the median prefill latency (pixels to the first token: vision "
        f"encoder and LLM prefill; uncompressed {reference.ttft_ms:.1f} ms). A keep ratio is the share of the visual "
        "tokens the LLM receives; LUVC's schedule then decays to zero at the last layer (tokens per layer above).",
        "",
        "| method | " + " | ".join(points) + " |",
        "|---" * (len(points) + 1) + "|",
    ]
    for method in methods:
        cells = []
        for point in points:
            summary = summaries.get((method, point))
            if summary is None:  # a sweep variant the point cannot reach
                cells.append("-")
                continue
            share = summary.accuracy / reference.accuracy if reference.accuracy else float("nan")
            cells.append(f"{summary.accuracy:.3f} ({share:.1%}), {summary.ttft_ms:.1f} ms")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy per question type at each keep ratio:", ""]
    lines += ["| method | ratio | " + " | ".join(types) + " |", "|---" * (len(types) + 2) + "|"]
    for method in methods:
        for point in points:
            if (summary := summaries.get((method, point))) is None:
                continue
            scores = " | ".join(f"{summary.by_type.get(kind, 0.0):.3f}" for kind in types)
            lines.append(f"| {method} | {point} | {scores} |")
    return lines


def _sweep_section(analysis: SweepAnalysis | None) -> list[str]:
    """The sweep: every variant at every point, its Pareto front and the winner per question type."""
    if analysis is None:
        return []
    lines = [
        "",
        "## Reconstruction sweep",
        "",
        f"Axes: {', '.join(f'`{axis}` ({SWEEP_AXES[axis][0]})' for axis in analysis.axes)}; the first variant, "
        f"`{analysis.default}`, is LUVC as it ships. Front: no other run has at most its GFLOPs and at least its "
        f"accuracy. Plot: `{SWEEP_PLOT}`.",
        "",
        "| variant | point | accuracy | agreement | GFLOPs | on the front |",
        "|---|---|---|---|---|---|",
    ]
    front = set(analysis.front)
    for point in analysis.points:
        mark = "yes" if point in front else ""
        lines.append(
            f"| {point.variant} | {point.point} | {point.accuracy:.3f} | {point.agreement:.3f} | {point.gflops:.4g} "
            f"| {mark} |"
        )
    lines += ["", "Winner per question type (mean accuracy over the points; ties: agreement, then the default):", ""]
    lines += [f"- {kind}: `{variant}`" for kind, variant in analysis.winners.items()]
    return lines


def plot_sweep(analysis: SweepAnalysis, path: Path) -> None:
    """Accuracy against GFLOPs per request, one marker per variant and point, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    variants = list(dict.fromkeys(point.variant for point in analysis.points))
    for variant in variants:
        mine = [point for point in analysis.points if point.variant == variant]
        axes.scatter([p.gflops for p in mine], [p.accuracy for p in mine], label=variant, s=24)
    front = list(analysis.front)
    axes.plot([p.gflops for p in front], [p.accuracy for p in front], color="black", linewidth=1, label="Pareto front")
    axes.set_xlabel("GFLOPs per request (encoder + LLM prefill, cost model)")
    axes.set_ylabel("accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, loc="best")
    axes.set_title("Reconstruction sweep")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results: EvalResults, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``eval.json``, ``report.md`` and ``pareto.png`` (and the sweep's ``sweep.json`` and ``sweep.png``) to
    ``out`` (complete or not at all)."""
    with staged_folder(Path(out), overwrite, EVAL_OUTPUT) as folder:
        results.save(folder / "eval.json")
        plot_pareto(results, folder / PARETO)
        sweep = analyse_sweep(results)
        if sweep is not None:
            (folder / "sweep.json").write_text(json.dumps(sweep.to_dict(), indent=2) + "\n")
            plot_sweep(sweep, folder / SWEEP_PLOT)
        (folder / "report.md").write_text(markdown(results))
    return Path(out)
