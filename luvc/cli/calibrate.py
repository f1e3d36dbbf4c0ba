"""``luvc-export calibrate``: an fp32 export -> an INT8/FP8 Q/DQ export calibrated with compression in the loop, or
an fp32 or fp16 export -> INT4 weights for its LLM."""

from __future__ import annotations

import argparse

from rich.console import Console

from luvc.cli.args.base import same_named
from luvc.cli.args.calibrate import CalibrateArgs
from luvc.cli.args.data import DataArgs


class Calibrate:
    """Calibrate an fp32 export on images and prompts run through its LUVC-compressed graphs, and write a Q/DQ
    export (INT8 or FP8) that build, run and parity take, with TensorRT 10 calibration caches and a report; or
    quantize an fp32 or fp16 export's LLM weights only (INT4, or INT8 as int8w)."""

    name = "calibrate"
    install = "export"
    subscriptions = (CalibrateArgs, DataArgs)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.calibration.calibrator import CalibratedExportFromExport
        from luvc.calibration.tails import heavy_tailed_products
        from luvc.calibration.verify import parity_warning
        from luvc.export.manifest import ExportManifest

        options, data = groups[CalibrateArgs], groups[DataArgs]
        manifest = ExportManifest.load(options.export_dir, verify=False, engines_flags=None)  # verified by calibration
        samples = data.samples([bucket.size for bucket in manifest.buckets.values()])
        out = CalibratedExportFromExport(
            **same_named(options, CalibratedExportFromExport, samples=samples, show_progress=True)
        )()
        calibrated = ExportManifest.load(out)
        quantization, source = calibrated.quantization, calibrated.float_precision
        if quantization is None:
            raise RuntimeError(f"{out} was written by calibration without its quantization entry")
        console = Console(soft_wrap=True)
        console.print(
            f"Calibrated {quantization.precision} ({quantization.method}) on "
            f"{len(quantization.calibration.samples)} samples -> {out}",
            highlight=False,
        )
        for name, value in quantization.agreement_with_fp32.items():
            console.print(f"  {name} vs the {source} source: {value:.6f}", highlight=False)
        warning = parity_warning(quantization.agreement_with_fp32, quantization.precision, source)
        if warning is not None:
            console.print(f"[yellow]Warning:[/yellow] {warning}", highlight=False)
        heavy = heavy_tailed_products(quantization.excluded_nodes)
        if heavy:
            console.print(
                f"  kept float, input heavy tailed: {len(heavy)} product(s), named in manifest.json", highlight=False
            )
        if quantization.smoothing_alpha is not None:
            console.print(
                f"  smoothed (SmoothQuant, alpha {quantization.smoothing_alpha}): "
                f"{len(quantization.smoothed_products)} product(s)",
                highlight=False,
            )
        if quantization.target_agreement is not None:
            kept = ", ".join(quantization.float_layers) or "none"
            target = quantization.target_agreement
            searched = quantization.target_search_seconds
            took = f" (search {searched:.0f} s)" if searched is not None else ""
            console.print(f"  target logits cosine {target}: kept in float {kept}{took}", highlight=False)
        console.print(f"report: {out / 'report.md'}", highlight=False)
        return 0
