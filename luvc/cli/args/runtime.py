"""Runtime options: backend, engines, generation length and sampling."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from luvc.cli.args.base import BaseArgs, int_in
from luvc.runtime import BACKENDS, FIT_HELP, FIT_POLICIES
from luvc.runtime.sampling import MAX_SEED, SamplingConfig

if TYPE_CHECKING:
    from luvc.runtime.pipeline import Pipeline
    from luvc.runtime.request import GenerationOptions


class RuntimeArgs(BaseArgs):
    """Runtime: which backend runs the artifacts (ONNX Runtime or TensorRT engines) and how tokens are chosen.

    Depends on: nothing (the export folder's manifest describes the graphs).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Runtime", "Backend and generation")
        group.add_argument("artifact_dir", help="export folder (from `luvc-export export`)")
        group.add_argument("--backend", choices=BACKENDS, default="ort", help="ort (default) or trt")
        group.add_argument("--engines", default=None, help="engine folder built from this export (--backend trt)")
        group.add_argument(
            "--plugin-library",
            default=None,
            help="where the LUVC plugin library the engines were built with is now (default: the path `build` "
            "recorded); only for engines of --plugin-nodes exports",
        )
        group.add_argument(
            "--device",
            default=None,
            help="where tensors and KV caches live: cpu or cuda:N (default: cuda:0 for --backend trt or a CUDA "
            "provider, else cpu); ONNX Runtime uses the CUDA EP of onnxruntime-gpu on cuda:N",
        )
        group.add_argument("--fit", choices=FIT_POLICIES, default=None, help=FIT_HELP)
        group.add_argument(
            "--providers",
            default=None,
            help="ONNX Runtime execution providers, comma-separated, instead of those --device implies",
        )
        group.add_argument(
            "--max-new-tokens", type=int_in(1), default=64, help="tokens to generate (default 64; at most the export's)"
        )
        # sampling values are checked by SamplingConfig in parse: the CLI and the server refuse them in one message
        group.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
        group.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
        group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
        group.add_argument("--seed", type=int, default=None, help=f"random seed for sampling (0 to {MAX_SEED})")

    def parse(self, args: argparse.Namespace) -> None:
        self.artifact_dir = Path(args.artifact_dir)
        self.backend, self.engines = args.backend, args.engines
        self.plugin_library = args.plugin_library
        self.providers = args.providers.split(",") if args.providers else None
        self.device = args.device
        self.fit = args.fit
        self.max_new_tokens = args.max_new_tokens
        self.sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)

    def generation_options(self) -> GenerationOptions:
        """The generation options these flags describe (length and sampling; the model's stop ids)."""
        from luvc.runtime.request import GenerationOptions

        return GenerationOptions(self.max_new_tokens, self.sampling)

    def pipeline(self) -> Pipeline:
        """The pipeline these options describe (artifacts, backend, engines, device, plugin library)."""
        from luvc.runtime.pipeline import Pipeline

        return Pipeline(
            self.artifact_dir,
            self.backend,
            self.engines,
            self.providers,
            device=self.device,
            plugin_library=self.plugin_library,
            fit=self.fit,
        )
