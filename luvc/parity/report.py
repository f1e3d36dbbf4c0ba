"""Parity report: ``parity.json`` (reloadable), ``report.md`` and PNG plots, written atomically to one folder."""

from __future__ import annotations

from pathlib import Path

from luvc.parity.results import LEVELS, ParityResults
from luvc.parity.tolerances import METRICS
from luvc.staging import OutputKind, staged_folder

PARITY_OUTPUT = OutputKind("a parity report", "parity.json")
PLOTS = {"layer_error": "layer_error.png", "kept_overlap": "kept_overlap.png"}


def plot_layer_errors(results: ParityResults, path: Path) -> None:
    """Relative error of each layer's output (log scale) with the tolerance line, one series per backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    for backend in results.backends:
        if backend.layer_errors:
            names = [layer.name for layer in backend.layer_errors]
            values = [max(layer.relative_error, 1e-12) for layer in backend.layer_errors]
            axes.plot(range(len(names)), values, marker="o", label=backend.backend)
            axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axes.axhline(results.tolerances.tensor_relative, color="red", linestyle="--", label="tolerance")
    axes.set_yscale("log")
    axes.set_ylabel("relative error vs PyTorch")
    axes.set_title("Per-layer output error (first sample)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_kept_overlap(results: ParityResults, path: Path) -> None:
    """Minimum Jaccard overlap of kept visual indices per SPU layer, and the near-tie share around each cut."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    width = 0.8 / (len(results.backends) + 1)
    for offset, backend in enumerate(results.backends):
        layers = sorted(backend.kept_overlap)
        axes.bar(
            [layer + offset * width for layer in layers],
            [backend.kept_overlap[x] for x in layers],
            width,
            label=f"{backend.backend} Jaccard",
        )
    ties = sorted(results.near_ties)
    axes.bar(
        [layer + len(results.backends) * width for layer in ties],
        [results.near_ties[x] for x in ties],
        width,
        label="near-tie share",
        color="gray",
    )
    axes.axhline(results.tolerances.kept_jaccard, color="red", linestyle="--", label="Jaccard tolerance")
    layers = sorted({*results.near_ties, *(x for b in results.backends for x in b.kept_overlap)})
    axes.set_xticks([layer + 0.4 - width / 2 for layer in layers], [str(layer) for layer in layers])
    axes.set_xlabel("SPU layer")
    axes.set_ylim(0, 1.05)
    axes.set_title("Kept-token overlap per SPU layer")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(results: ParityResults) -> str:
    """The report text: verdict, export cost per backend and level, localisation, compression cost."""
    tolerances = results.tolerances
    lines = [
        f"# Parity: {results.model} ({results.precision})",
        "",
        f"Export: `{results.export_dir}`; samples: {', '.join(results.samples)}.",
        f"Verdict: **{'PASSED' if results else 'FAILED'}** under the {results.precision} tolerances.",
        "",
        "## What export costs (PyTorch LUVC vs backend)",
        "",
        "| backend | level | check | metric | value | limit | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in results.backends:
        for check in backend.checks:
            verdict = "pass" if tolerances.passes(check.metric, check.value) else "**FAIL**"
            bound = ">=" if METRICS[check.metric][1] else "<="
            lines.append(
                f"| {backend.backend} | {check.level} {LEVELS[check.level]} | {check.name} | {check.metric} | "
                f"{check.value:.4g} | {bound} {tolerances.limit(check.metric):g} | {verdict} |"
            )
    lines += ["", "## Localisation", ""]
    for backend in results.backends:
        if not backend.localised:
            lines.append(f"- {backend.backend}: not localised (layer outputs are exposed on ONNX Runtime only).")
            continue
        layer = backend.first_diverging_layer(tolerances)
        lines.append(f"- {backend.backend}: first diverging layer: **{layer or 'none'}**")
    lines += ["", f"![per-layer error]({PLOTS['layer_error']})", "", f"![kept overlap]({PLOTS['kept_overlap']})", ""]
    lines += ["Near-tie share per SPU layer (tokens within the relative tolerance of the cut):", ""]
    lines += [f"- layer {layer}: {share:.3f}" for layer, share in results.near_ties.items()]
    differing = [(b.backend, s) for b in results.backends for s in b.selections.values() if s.jaccard < 1.0]
    if differing:
        lines += [
            "",
            "Kept indices that differ (a tie: reference score within the measured noise of the cut; "
            "downstream: after an earlier swap, on other tokens):",
            "",
        ]
        lines += [
            "| backend | layer | Jaccard | judged | ties | non-ties | downstream |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {backend} | {s.layer} | {s.jaccard:.4g} | {s.judged:.4g} | {s.ties} | {s.non_ties} | {s.downstream} |"
            for backend, s in differing
        ]
    texts = [backend for backend in results.backends if backend.text.ties or backend.text.non_ties]
    if texts:
        lines += [
            "",
            "Generated text that differs (a tie: the first differing token's reference logit within twice the "
            "measured logits noise of the reference's pick; the tokens after a tie are not judged):",
            "",
            "| backend | exact match | token agreement | judged exact | judged tokens | ties | non-ties | not judged |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {b.backend} | {b.text.exact:.4g} | {b.text.tokens:.4g} | {b.text.judged_exact:.4g} | "
            f"{b.text.judged_tokens:.4g} | {b.text.ties} | {b.text.non_ties} | {b.text.downstream} |"
            for b in texts
        ]
    lines += ["", "## What compression costs (uncompressed vs LUVC on the same backend; reported, not judged)", ""]
    metrics = list(next(iter(results.compression.values()), {}))
    lines += ["| backend | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in results.compression.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[metric]:.4g}" for metric in metrics) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: ParityResults, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``parity.json``, ``report.md`` and the PNG plots to ``out`` (complete or not at all)."""
    with staged_folder(Path(out), overwrite, PARITY_OUTPUT) as folder:
        results.save(folder / "parity.json")
        plot_layer_errors(results, folder / PLOTS["layer_error"])
        plot_kept_overlap(results, folder / PLOTS["kept_overlap"])
        (folder / "report.md").write_text(markdown(results))
    return Path(out)
