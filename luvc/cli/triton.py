"""``luvc-export triton``: a Triton Inference Server model repository that serves an export."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from luvc.cli.args.base import int_in, same_named
from luvc.cuda_graphs import CUDA_GRAPH_CHOICES, DEFAULT_CUDA_GRAPHS
from luvc.errors import critical
from luvc.runtime import BACKEND_CHOICES, BACKEND_HELP, DEFAULT_FIT, FIT_HELP, FIT_POLICIES


class Triton:
    """Write a model repository for tritonserver: a decoupled Python-backend model (streaming responses, dynamic
    batching) whose instances each run the export's pipeline; see docs/serving.md for running and scaling it."""

    name = "triton"
    install = "base"
    subscriptions = ()

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("artifact_dir", help="export folder (from `luvc-export export`)")
        group = parser.add_argument_group("Repository")
        group.add_argument("--out", required=True, help="model repository folder to write")
        group.add_argument("--model-name", default="luvc", help="the model's name in the repository (default luvc)")
        group.add_argument("--backend", choices=BACKEND_CHOICES, default="ort", help=BACKEND_HELP)
        group.add_argument("--engines", default=None, help="engine folder built from this export (--backend trt)")
        group.add_argument(
            "--gpus",
            default=None,
            help="comma-separated GPU ids to place instances on (default: CPU instances; --backend trt needs GPUs)",
        )
        group.add_argument("--instances", type=int_in(1), default=1, help="model instances per GPU (or on the CPU)")
        group.add_argument(
            "--max-batch", type=int_in(1), default=None, help="requests per batch (default: the export's)"
        )
        group.add_argument(
            "--max-new-tokens", type=int_in(1), default=64, help="generation length when a request sets none (64)"
        )
        group.add_argument("--fit", choices=FIT_POLICIES, default=DEFAULT_FIT, help=FIT_HELP)
        group.add_argument(
            "--cuda-graphs",
            choices=CUDA_GRAPH_CHOICES,
            default=DEFAULT_CUDA_GRAPHS,
            help="GPU instances capture each graph's shapes as CUDA graphs and replay them: auto (default), on, off",
        )
        group.add_argument(
            "--copy",
            action="store_true",
            help="copy the export (and engines) into the repository instead of "
            "referencing them by absolute path (a self-contained repository to ship)",
        )
        group.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.serve.repository import RepositoryOptions, write_repository

        try:  # left out: CPU instances; given, even empty, it must name GPUs
            gpus = tuple(int(gpu) for gpu in args.gpus.split(",")) if args.gpus is not None else ()
        except ValueError:
            critical(f"--gpus {args.gpus!r}: give GPU ids separated by commas, e.g. --gpus 0,1 (leave it out for CPU).")
        engines_dir = Path(args.engines) if args.engines else None
        options = RepositoryOptions(**same_named(args, RepositoryOptions, engines_dir=engines_dir, gpus=gpus))
        out = write_repository(Path(args.artifact_dir), Path(args.out), options, args.overwrite)
        where = f"{len(gpus)} GPU(s) x {args.instances}" if gpus else f"CPU x {args.instances}"
        Console(soft_wrap=True).print(
            f"[bold green]Wrote[/] the Triton model repository {out} (model {args.model_name!r}, instances: {where}); "
            f"run: tritonserver --model-repository {out.resolve()}",
            highlight=False,
        )
        return 0
