"""``luvc-export build``: TensorRT engines for every graph of an export folder."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from luvc.cli.args.build import BuildArgs


class Build:
    """Build one TensorRT engine per exported graph for a target (profiles from the export manifest) and write
    the engine manifest."""

    name = "build"
    install = None
    subscriptions = (BuildArgs,)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.engines.builder import BUILD_LOG, build_engines
        from luvc.engines.manifest import EngineManifest

        build = groups[BuildArgs]
        out = build_engines(build.export_dir, build.target, build.out, **build.options)
        manifest = EngineManifest.load(out)
        table = Table(title=f"{manifest.tensorrt.module} {manifest.tensorrt.version}, target {build.target}")
        for column in ("engine", "MB", "profile (min / opt / max of the first dynamic input)"):
            table.add_column(column)
        for name, engine in manifest.engines.items():
            dynamic = next((shapes for shapes in engine.profile.values() if shapes[0] != shapes[2]), None)
            table.add_row(name, f"{engine.bytes / 1e6:.1f}", " / ".join(map(str, dynamic)) if dynamic else "static")
        Console().print(table)
        Console(soft_wrap=True).print(
            f"[bold green]Built[/] {len(manifest.engines)} engines in {out} ({_layout(manifest)})", highlight=False
        )
        if (out / BUILD_LOG).is_file():
            lines = sum(1 for _ in (out / BUILD_LOG).open(encoding="utf-8"))
            Console().print(f"TensorRT's log of the build: {out / BUILD_LOG} ({lines} lines)")
        cache = build.options.get("timing_cache")
        if cache is not None and manifest.tensorrt.module == "tensorrt_rtx":
            Console(stderr=True, soft_wrap=True).print(
                f"note: TensorRT-RTX keeps no timing cache; {cache} was not read or written (full tensorrt uses it).",
                highlight=False,
            )
        return 0


def _layout(manifest) -> str:
    """One phrase on where the engines' weights live."""
    from luvc.engines.memory import engine_weight_placement

    if manifest.weights_layout == "embedded":
        return "each engine holds its own weights"
    shared = engine_weight_placement(manifest).shared
    return f"{shared / 1e6:.1f} MB of weights are engine inputs, on the device once"
