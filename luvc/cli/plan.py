"""``luvc-export plan``: does an export fit a target device, and what to lower when it does not."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from luvc.cuda_graphs import CUDA_GRAPH_CHOICES, DEFAULT_CUDA_GRAPHS, runtime_replays
from luvc.engines.memory import DEVICES, GiB, MemoryPlan


class Plan:
    """Estimate device memory for an export (and its engines) at its profile's maxima: engine weights, the KV cache
    (LUVC's per-layer capacities vs the uncompressed model), activations and the system reserve, against a target's
    memory; the build's host memory; and which --max-* to lower when it does not fit. Exits 1 when it does not fit."""

    name = "plan"
    install = None
    subscriptions = ()

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("artifact_dir", help="export folder (from `luvc-export export`)")
        parser.add_argument(
            "--target",
            required=True,
            help=f"a device ({', '.join(DEVICES)}) or a GPU's memory in GiB (e.g. 80)",
        )
        parser.add_argument("--engines", default=None, help="engine folder built from this export (its sizes)")
        parser.add_argument(
            "--backend",
            choices=("trt", "openvino"),
            default="trt",
            help="trt (default: engines on the target GPU) or openvino (OpenVINO on a CPU host of --target GiB: every "
            "graph holds its own weights, docs/run.md)",
        )
        parser.add_argument(
            "--openvino-precision",
            choices=("bf16", "f32"),
            default="bf16",
            help="with --backend openvino: what its products compute in (bf16 where the host has AMX or AVX-512 "
            "BF16, the default; f32 elsewhere)",
        )
        parser.add_argument(
            "--cuda-graphs",
            choices=CUDA_GRAPH_CHOICES,
            default=DEFAULT_CUDA_GRAPHS,
            help="whether run and serve will replay CUDA graphs there (on: their buffers are counted, as an estimate; "
            "off, and auto while the runtime's replay waits for its GPU check: not)",
        )

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.engines.memory import plan_memory

        replayed = runtime_replays(args.cuda_graphs, "cuda")
        precision = args.openvino_precision if args.backend == "openvino" else None
        plan = plan_memory(
            args.artifact_dir, args.target, args.engines, cuda_graphs=replayed, openvino_precision=precision
        )
        console = Console(soft_wrap=True)
        console.print(memory_table(plan))
        for line in plan.advice():
            console.print(line, highlight=False)
        return 0 if plan.fits else 1


def memory_table(plan: MemoryPlan) -> Table:
    def gib(value: int) -> str:
        return f"{value / GiB:.2f} GiB" if value >= GiB // 10 else f"{value / (1 << 20):.1f} MiB"

    device = plan.device
    size = "" if device.name.startswith("GPU with") else f" ({device.total_bytes / GiB:g} GiB)"  # named once
    table = Table(title=f"Memory plan on {device.name}{size}")
    table.add_column("item")
    table.add_column("device memory", justify="right")
    weights = plan.weights
    for name, weight in weights.per_engine.items():
        what = {"engines": "engine file", "openvino": "OpenVINO's copy"}
        table.add_row(f"{name}: {what.get(weights.source, 'weights inside its engine')}", gib(weight))
    if weights.first_run:
        table.add_row("a graph's first run: the copy it repacks (largest)", gib(weights.first_run))
    if weights.shared:
        table.add_row(f"shared weights: once for every engine ({weights.source})", gib(weights.shared))
    if weights.source != "openvino":
        table.add_row(
            "  weights in the embedded layout (every engine its own copy; not counted)", gib(weights.embedded_layout)
        )
    kv = f"KV cache, batch {plan.max_batch} (LUVC per-layer capacities)"
    table.add_row(kv, gib(plan.kv_bytes))
    if plan.kv_bytes_uncompressed is not None:
        table.add_row("  uncompressed model, same profile", gib(plan.kv_bytes_uncompressed))
    openvino = weights.source == "openvino"
    if openvino:
        activations, reserved = "activations (an allowance)", "reserved (the process: Python, libraries)"
    else:
        activations = "activations: one buffer for every engine (builder workspace limit)"
        reserved = "reserved (CUDA context, libraries" + (", OS)" if device.jetson else ")")
    table.add_row(activations, gib(plan.activation_bytes))
    if plan.replay_bytes:
        table.add_row(f"CUDA graphs: {plan.replay_shapes} shapes' buffers (at most)", gib(plan.replay_bytes))
    table.add_row(reserved, gib(device.reserved_bytes))
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    table.add_row(f"total: {verdict}", gib(plan.total_bytes))
    if not openvino:
        where = "on the device: Jetsons build there" if device.jetson else "on the build machine"
        table.add_row(f"engine build, host memory ({where}; estimate)", gib(plan.build_host_bytes))
    return table
