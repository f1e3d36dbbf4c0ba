"""Parity options: which artifacts to check against PyTorch LUVC, and where the report goes."""

from __future__ import annotations

import argparse
from pathlib import Path

from luvc.cli.args.base import BaseArgs
from luvc.runtime import FIT_HELP, FIT_POLICIES
from luvc.runtime.openvino_graph import PRECISIONS as OPENVINO_PRECISIONS


class ParityArgs(BaseArgs):
    """Parity: the export (and engines) to check, the reference checkpoint, and the report folder.

    Depends on: DataArgs (the samples).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Parity", "What to check and where the report goes")
        group.add_argument("artifact_dir", help="export folder (from `luvc-export export` or `calibrate`)")
        group.add_argument("--engines", default=None, help="engine folder built from it: also check TensorRT")
        group.add_argument(
            "--backend",
            choices=("ort", "openvino"),
            action="append",
            default=None,
            help="ort is always checked; openvino adds OpenVINO on the CPU (judged with bf16 bounds where it computes "
            "in bf16, docs/parity.md); --engines adds TensorRT",
        )
        group.add_argument(
            "--openvino-precision",
            choices=OPENVINO_PRECISIONS,
            default="auto",
            help="what OpenVINO computes products in: auto (default: bf16 where the CPU has bf16 kernels), bf16, f32",
        )
        group.add_argument(
            "--model", default=None, help="reference checkpoint folder (default: the one in the export's manifest)"
        )
        group.add_argument(
            "--baseline",
            default=None,
            help="uncompressed export of the same model (export --no-luvc): also measure what compression costs on "
            "ONNX Runtime",
        )
        group.add_argument("--fit", choices=FIT_POLICIES, default=None, help="for --data images: " + FIT_HELP)
        group.add_argument("--max-new-tokens", type=int, default=None, help="generated tokens per sample (default 8)")
        group.add_argument("--out", default=None, help="report folder (default: ARTIFACT_DIR-parity beside it)")
        group.add_argument("--overwrite", action="store_true", help="replace an existing report folder")

    def parse(self, args: argparse.Namespace) -> None:
        self.artifact_dir = Path(args.artifact_dir)
        self.engines = None if args.engines is None else Path(args.engines)
        self.model = args.model
        self.openvino = "openvino" in (args.backend or ())
        self.openvino_precision = args.openvino_precision
        self.baseline = None if args.baseline is None else Path(args.baseline)
        self.max_new_tokens = args.max_new_tokens
        self.fit = args.fit
        folder = self.artifact_dir.resolve()
        self.out = Path(args.out) if args.out else folder.parent / f"{folder.name}-parity"
        self.overwrite = args.overwrite
