"""Calibration options: source export, precision, method, INT4 block size, output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from luvc.calibration.quantize import DEFAULT_METHODS, METHODS, PRECISIONS, check_alpha, check_method
from luvc.calibration.weight_only import BLOCKED_PRECISIONS, DEFAULT_BLOCK_SIZE, check_block_size
from luvc.cli.args.base import BaseArgs, int_in
from luvc.errors import critical


class CalibrateArgs(BaseArgs):
    """Calibrate: which fp32 export to quantize, to what precision with which calibration method, and where to.

    Depends on: DataArgs (the calibration images and prompts).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "Calibrate",
            "Explicit INT8/FP8 quantization of an fp32 export, or weight-only INT4/INT8 (int8w) of its LLM",
        )
        group.add_argument("export_dir", help="fp32 export folder (from `luvc-export export`)")
        group.add_argument("--precision", choices=list(PRECISIONS), default="int8", help="default int8")
        methods = "; ".join(
            f"{precision}: {', '.join(name for name, (_, allowed) in METHODS.items() if precision in allowed)} "
            f"(default {DEFAULT_METHODS[precision]})"
            for precision in PRECISIONS
        )
        group.add_argument("--method", choices=list(METHODS), default=None, help=f"ONNX Runtime calibrator: {methods}")
        group.add_argument(
            "--block-size",
            type=int,
            default=None,
            help=f"int4: input channels per weight scale, a power of two >= 16 ({DEFAULT_BLOCK_SIZE})",
        )
        group.add_argument(
            "--decode-steps", type=int_in(1), default=None, help="greedy steps per sample for decode (4)"
        )
        group.add_argument(
            "--target-agreement",
            type=float,
            default=None,
            help="int8/fp8: keep the fewest layers in float (most sensitive first) until the worst logits cosine "
            "against fp32 (first token and greedy decode steps) reaches this, e.g. 0.9999",
        )
        group.add_argument(
            "--smooth",
            type=float,
            default=None,
            metavar="ALPHA",
            help="int8/fp8: SmoothQuant, moving activation outliers into the weights with strength ALPHA in (0, 1), "
            "e.g. 0.5; scales fold into norms and up projections, so the graphs stay as they are (off by default)",
        )
        group.add_argument("--out", required=True, help="calibrated export folder to create")
        group.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    def parse(self, args: argparse.Namespace) -> None:
        self.export_dir = Path(args.export_dir)
        self.precision = args.precision
        self.method = args.method or DEFAULT_METHODS[args.precision]
        check_method(self.precision, self.method)  # before any sample is read
        self.block_size = args.block_size
        self.target_agreement = args.target_agreement
        self.smooth = args.smooth
        check_alpha(self.smooth, self.precision)
        if self.block_size is not None:
            if self.precision not in BLOCKED_PRECISIONS:
                critical(f"--block-size sets INT4 weight blocks; {self.precision} has none. Pass --precision int4.")
            check_block_size(self.block_size, _hidden_size(self.export_dir))
        self.decode_steps = args.decode_steps
        self.out = Path(args.out)
        self.overwrite = args.overwrite


def _hidden_size(export_dir: Path) -> int | None:
    """The LLM's hidden size in ``export_dir``'s manifest, to name the block sizes it takes; None where it cannot be
    read here (the calibration's own checks name why)."""
    import json

    from luvc.export.manifest import MANIFEST_NAME

    try:
        size = json.loads((export_dir / MANIFEST_NAME).read_text())["geometry"]["hidden_size"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
