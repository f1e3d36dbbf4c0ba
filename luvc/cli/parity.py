"""``luvc-export parity``: PyTorch LUVC against the exported graphs (and engines); non-zero exit on failure."""

from __future__ import annotations

import argparse

from rich.console import Console

from luvc.cli.args.data import DataArgs
from luvc.cli.args.parity import ParityArgs
from luvc.staging import output_claim


class Parity:
    """Check an export (and optionally its engines) against PyTorch LUVC on four levels: output tensors, kept
    tokens, first-token logits and generated text; write parity.json and report.md with plots. Exits 1 when a
    tolerance fails and names the first diverging layer."""

    name = "parity"
    install = "export"
    subscriptions = (ParityArgs, DataArgs)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.parity.report import PARITY_OUTPUT

        options, data = groups[ParityArgs], groups[DataArgs]
        inputs = (options.artifact_dir, options.engines, options.baseline, options.model, data.folder)
        with output_claim(options.out, options.overwrite, PARITY_OUTPUT, inputs):  # before the checks run
            return self._check(options, data)

    def _check(self, options: ParityArgs, data: DataArgs) -> int:
        from luvc.export.manifest import ExportManifest
        from luvc.parity import ParityFromExport, write_report

        manifest = ExportManifest.load(options.artifact_dir, verify=False)  # the checker verifies the hashes
        samples = data.samples([bucket.size for bucket in manifest.buckets.values()])
        results = ParityFromExport(
            options.artifact_dir,
            engines_dir=options.engines,
            samples=samples,
            model=options.model,
            max_new_tokens=options.max_new_tokens,
            baseline_dir=options.baseline,
            show_progress=True,
            fit=options.fit,
            openvino=options.openvino,
            openvino_precision=options.openvino_precision,
        )()
        out = write_report(results, options.out, options.overwrite)
        console = Console(soft_wrap=True)
        console.print(str(results), highlight=False)
        console.print(f"report: {out / 'report.md'}", highlight=False)
        return 0 if results else 1
