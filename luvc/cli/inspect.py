"""``luvc-export inspect``: what an export folder holds, graph by graph."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


class Inspect:
    """Show an export's I/O, op histogram, per-layer budgets, estimated FLOPs, TensorRT-hostile ops and the
    graph-pass statistics recorded in its manifest."""

    name = "inspect"
    install = None
    subscriptions = ()

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("export_dir", help="export folder (from `luvc-export export`)")

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.engines.profiles import dimension_ranges
        from luvc.engines.static_shapes import StaticShapes
        from luvc.export.inspect import matmul_flops, op_histogram
        from luvc.export.lint import lint_graph
        from luvc.export.manifest import ExportManifest, load_graph

        console = Console()
        manifest = ExportManifest.load(args.export_dir, engines_flags=None)
        console.print(
            f"[bold]{manifest.model.id}[/] ({manifest.model.architecture}), {manifest.precision}, opset "
            f"{manifest.opset}; LUVC spu={manifest.luvc.spu_variant} oim_layers={list(manifest.luvc.oim_layers or ())}"
        )
        quantization = manifest.quantization
        if quantization is not None:
            agreement = quantization.agreement_with_fp32
            console.print(
                f"quantized: {quantization.precision} ({quantization.method}, {quantization.library}); "
                + ", ".join(
                    f"{metric} vs the {manifest.float_precision} source {value:.4f}"
                    for metric, value in agreement.items()
                )
            )
        for name, bucket in manifest.buckets.items():
            console.print(
                f"bucket {name}: {bucket.tokens_per_image} visual tokens at index {bucket.visual_start}"
                f"{f' in {len(bucket.visual_spans)} spans' if bucket.spans else ''}; "
                f"budgets per layer {list(bucket.budgets)}; SPU before layers {list(bucket.prune_layers)}"
            )
        kv = manifest.kv_cache
        console.print(f"decode KV cache: {kv.update} update in place, capacity per layer {list(kv.capacity)}")
        shapes = StaticShapes.of(manifest)
        console.print(
            f"static shapes on a GPU (CUDA-graph replay captures each once; vision runs plain): {shapes.count} shapes"
        )
        for line in shapes.describe():
            console.print(f"  {line}", highlight=False)
        rules = manifest.image_rules
        console.print(
            f"image rules: {rules.processor_type}'s (run and serve load no image processor for images)"
            if rules is not None
            else "image rules: none (an older export, or pixels the runtime's arithmetic does not make: run and serve "
            "load the image processor)"
        )
        for name, graph in manifest.graphs.items():
            model = load_graph(args.export_dir, name, manifest)
            values = {dim: opt for dim, (_, opt, _) in dimension_ranges(manifest, name).items()}
            flops, unknown = matmul_flops(model, values)
            table = Table(title=f"{name} ({graph.file}, {graph.num_nodes} nodes)", title_justify="left")
            table.add_column("")
            table.add_column("")
            for io in graph.inputs + graph.outputs:
                kind = "input" if io in graph.inputs else "output"
                table.add_row(f"{kind} {io.name}", f"{io.dtype} {list(io.shape)}")
            ops = ", ".join(f"{op} {count}" for op, count in op_histogram(model).most_common(10))
            table.add_row("ops (top 10)", ops)
            at = ", ".join(
                f"{dim}={value}" for dim, value in values.items() if any(dim in str(io.shape) for io in graph.inputs)
            )
            table.add_row(
                "MatMul GFLOPs",
                f"{flops / 1e9:.4f} at {at or 'static shapes'}" + (f" ({unknown} MatMuls unknown)" if unknown else ""),
            )
            findings = lint_graph(model, manifest.buckets[graph.bucket].tokens_per_image if graph.bucket else None)
            table.add_row("TensorRT-hostile", "none" if not findings else "; ".join(map(str, findings)))
            table.add_row("LUVC prefixes", ", ".join(graph.node_prefixes) or "none")
            kept_float = quantization.kept_float_counts(name) if quantization is not None else {}
            if kept_float:
                table.add_row("kept in float", ", ".join(f"{reason} {count}" for reason, count in kept_float.items()))
            for stat in graph.passes:
                if stat.delta:
                    changed = {op: list(counts) for op, counts in stat.ops.items()}
                    table.add_row(f"pass {stat.name}", f"{stat.before} -> {stat.after} nodes {changed}")
            console.print(table)
        return 0
