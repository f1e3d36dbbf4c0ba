"""Calibration report: ``report.md`` with per-tensor ranges (weight-only: the quantized weights), excluded nodes and
agreement with fp32, and ``ranges.png`` (the distribution of activation ranges per graph; INT8/FP8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luvc.export.manifest_entries import QuantizationEntry

RANGES_PLOT = "ranges.png"


def plot_ranges(ranges: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Calibrated ``amax`` of every quantized activation, in graph order, one series per graph (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    for graph, tensors in ranges.items():
        values = [max(entry["amax"], 1e-12) for entry in tensors.values()]
        axes.plot(range(len(values)), values, marker=".", linestyle="-", label=graph)
    axes.set_yscale("log")
    axes.set_xlabel("quantized activation (sorted by name)")
    axes.set_ylabel("calibrated amax")
    axes.set_title("Activation ranges after OIM and SPU")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _kept_cell(quantization: QuantizationEntry, layer: str) -> str:
    """``yes (MiB beyond INT8)`` for a layer kept float (the size where the manifest has it), else empty."""
    if layer not in quantization.float_layers:
        return ""
    extra = quantization.float_layer_bytes.get(layer)
    return "yes" if extra is None else f"yes ({extra / 2**20:.2f})"


def _target_section(quantization: QuantizationEntry) -> list[str]:
    """``--target-agreement``: the target, the layers kept in floating point, and the sensitivity of each layer the
    search measured alone."""
    if quantization.target_agreement is None:
        return []
    kept = ", ".join(f"`{layer}`" for layer in quantization.float_layers) or "none (the full quantization meets it)"
    extra = sum(quantization.float_layer_bytes.values())
    searched = quantization.target_search_seconds
    lines = [
        f"## Target agreement: logits cosine >= {quantization.target_agreement}",
        "",
        f"Fully quantized: logits cosine {quantization.fully_quantized_cosine:.6f}. Kept in floating point: {kept}"
        + (f" ({extra / 2**20:.1f} MiB of weights beyond INT8)" if extra else "")
        + (f". Search: {searched:.0f} s, the one quantization it edits included." if searched is not None else "."),
        "",
    ]
    if quantization.layer_sensitivity:
        lines += [
            "Sensitivity: the worst logits cosine the layer adds alone in floating point, measured for each layer the "
            "search isolated.",
            "",
            "| layer | sensitivity | kept float (MiB beyond INT8) |",
            "|---|---|---|",
        ]
        ranked = sorted(quantization.layer_sensitivity.items(), key=lambda item: -item[1])
        lines += [f"| `{layer}` | {gain:+.3e} | {_kept_cell(quantization, layer)} |" for layer, gain in ranked]
        lines.append("")
    return lines


def write_report(
    folder: Path,
    quantization: QuantizationEntry,
    ranges: dict[str, dict[str, dict[str, float]]],
    weights: dict[str, dict[str, tuple[str, int]]],
    source_precision: str = "fp32",
) -> None:
    """Write ``report.md`` (and, with activation ``ranges``, ``ranges.png``) into ``folder``. ``weights``: per graph,
    each quantized weight's format and bytes (``luvc.calibration.weight_only.quantized_weights``; weight-only
    precisions); ``source_precision``: the source export's."""
    precision, method, excluded = quantization.precision, quantization.method, quantization.excluded_nodes
    num_samples = len(quantization.calibration.samples)
    agreement = quantization.agreement_with_fp32
    if weights and method == "gptq":
        run = (
            f"Weights only, {quantization.weights}; GPTQ with the layers' inputs over {num_samples} samples through "
            f"the LUVC-compressed {source_precision} export, which also measure the agreement."
        )
    elif weights:
        run = f"Weights only, {quantization.weights}; {num_samples} samples measure the agreement."
    else:
        run = (
            f"{num_samples} samples through the LUVC-compressed {source_precision} export (ranges after merging and "
            "pruning)."
        )
    if quantization.smoothing_alpha is not None:
        run += (
            f" SmoothQuant with alpha {quantization.smoothing_alpha} scaled the weights of "
            f"{len(quantization.smoothed_products)} products first (`quantization.smoothed_products`)."
        )
    lines = [
        f"# Calibration: {precision}, {method}",
        "",
        run,
        "",
        f"## Agreement with the {source_precision} export (first token and greedy decode, ONNX Runtime)",
        "",
        *(f"- {name}: {value:.4f}" for name, value in agreement.items()),
        "",
        f"Run `luvc-export parity` on this folder for the four parity levels under the {precision} tolerances.",
        "",
        *_target_section(quantization),
        "## Kept in floating point",
        "",
        "| graph | reason | nodes |",
        "|---|---|---|",
    ]
    for graph in excluded:
        for reason, count in quantization.kept_float_counts(graph).items():
            lines.append(f"| {graph} | {reason} | {count} |")
    lines += [
        "",
        "The node names are in `manifest.json` (`quantization.excluded_nodes`), a heavy-tailed input's with its ratio.",
        "",
    ]
    if weights:
        lines += ["## Quantized weights", "", "| graph | format | weights | bytes |", "|---|---|---|---|"]
        for graph, found in weights.items():
            for form in sorted({form for form, _ in found.values()}):
                sizes = [size for kind, size in found.values() if kind == form]
                lines.append(f"| {graph} | {form} | {len(sizes)} | {sum(sizes)} |")
        lines += ["", "Graphs that share a weight store it once in `weights.data`.", ""]
    if ranges:
        plot_ranges(ranges, folder / RANGES_PLOT)
        lines += ["## Activation ranges", "", f"![ranges]({RANGES_PLOT})", ""]
    for graph, tensors in ranges.items():
        amax = np.array([entry["amax"] for entry in tensors.values()] or [0.0])
        lines += [
            f"### {graph}: {len(tensors)} tensors, amax {amax.min():.4g} .. {amax.max():.4g}",
            "",
            "| tensor | amax | scale |",
            "|---|---|---|",
            *(f"| `{name}` | {entry['amax']:.6g} | {entry['scale']:.6g} |" for name, entry in tensors.items()),
            "",
        ]
    (folder / "report.md").write_text("\n".join(lines))
