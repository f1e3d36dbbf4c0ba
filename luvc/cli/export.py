"""``luvc-export export``: trace a (compressed) VLM into ONNX graphs with a manifest."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from luvc.cli.args.budget import LuvcArgs
from luvc.cli.args.export import ExportArgs
from luvc.cli.args.model import ModelArgs

if TYPE_CHECKING:
    from luvc.export.manifest import ExportManifest


class Export:
    """Export vision, embed, prefill and decode ONNX graphs (budgets frozen per image-size bucket), lint them and
    write manifest.json."""

    name = "export"
    install = "export"
    subscriptions = (ModelArgs, LuvcArgs, ExportArgs)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, groups: dict) -> int:

        from luvc.export.manifest import EXPORT_OUTPUT, ExportManifest
        from luvc.export.stage_times import StageTimes
        from luvc.staging import output_claim

        console = Console()
        export = groups[ExportArgs]
        model_args = groups[ModelArgs]
        if export.profile.precision == "fp16":
            model_args.dtype = "float16"  # load in the graph precision: no fp32 copy is kept
        times = StageTimes()
        began = time.perf_counter()
        checkpoint = Path(args.model)
        inputs = (checkpoint,) if checkpoint.is_dir() else ()
        # a taken or unusable --out is refused before PyTorch is imported and the model loads
        with output_claim(export.out, export.overwrite, EXPORT_OUTPUT, inputs):
            from luvc.export.exporter import export_model

            with console.status(f"Loading {args.model}"), times.stage("load"):
                adapter = model_args.load()
            out = export_model(
                adapter,
                export.out,
                export.profile,
                groups[LuvcArgs].config,
                overwrite=export.overwrite,
                passes=export.passes,
                plugin_nodes=export.plugin_nodes,
                times=times,
                jobs=export.jobs,
            )
        console.print(summary_table(ExportManifest.load(out, verify=False)))
        console.print(
            f"[bold green]Exported[/] {adapter.name} to {out} in {times.summary(time.perf_counter() - began)}"
        )
        return 0


def summary_table(manifest: ExportManifest) -> Table:
    """One row per graph: its file, inputs and node count; one row per bucket with its budgets."""
    table = Table(title=f"{manifest.model.id} ({manifest.precision}, opset {manifest.opset})")
    table.add_column("graph")
    table.add_column("inputs")
    table.add_column("nodes", justify="right")
    table.add_column("after passes", justify="right")
    table.add_column("LUVC prefixes")
    for name, graph in manifest.graphs.items():
        inputs = ", ".join(entry.name for entry in graph.inputs[:3])
        inputs += ", ..." if len(graph.inputs) > 3 else ""
        passes = graph.passes
        before = str(passes[0].before) if passes else str(graph.num_nodes)
        after = f"{graph.num_nodes} ({graph.num_nodes - int(before):+d})" if passes else "no passes"
        table.add_row(name, inputs, before, after, str(len(graph.node_prefixes)))
    for name, bucket in manifest.buckets.items():
        table.add_row(
            f"bucket {name}", f"{bucket.tokens_per_image} visual tokens", "", "", f"budgets {list(bucket.budgets)}"
        )
    return table
