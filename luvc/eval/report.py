"""Eval report: ``eval.json`` (reloadable), ``report.md`` and ``pareto.png``, written atomically to one folder."""

from __future__ import annotations

from pathlib import Path

from luvc.compress.methods import METHODS
from luvc.eval.data import QUESTION_TYPES
from luvc.eval.results import EvalResults, RunSummary
from luvc.staging import OutputKind, staged_folder

EVAL_OUTPUT = OutputKind("an eval report", "eval.json")
PARETO = "pareto.png"


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
            lines.append(
                f"| {summary.label} | {m.accuracy:.3f} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} "
                f"| {m.yes_ratio:.3f} |"
            )
    layers = max(len(summary.visual_tokens_per_layer) for summary in summaries)
    lines += ["", "## Visual tokens entering each decoder layer (mean per request)", ""]
    lines += ["| run | " + " | ".join(str(layer) for layer in range(layers)) + " |", "|---" * (layers + 1) + "|"]
    for summary in summaries:
        lines.append(f"| {summary.label} | " + " | ".join(f"{v:.1f}" for v in summary.visual_tokens_per_layer) + " |")
    lines += ["", "## Methods", ""]
    for name in dict.fromkeys(run.method for run in results.runs):
        method = METHODS.get(name)
        if method is None:
            lines.append(f"- `{name}`: the export's own config")
            continue
        exports = "exports like LUVC (static budgets)" if method.export_refusal is None else "PyTorch only"
        lines.append(f"- `{name}`: {method.summary}; {exports}.")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in results.notes]
    return "\n".join(lines) + "\n"


def write_report(results: EvalResults, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``eval.json``, ``report.md`` and ``pareto.png`` to ``out`` (complete or not at all)."""
    with staged_folder(Path(out), overwrite, EVAL_OUTPUT) as folder:
        results.save(folder / "eval.json")
        plot_pareto(results, folder / PARETO)
        (folder / "report.md").write_text(markdown(results))
    return Path(out)
