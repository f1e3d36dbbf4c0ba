"""Export options: image-size buckets, precision, dynamic ranges, output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from luvc.cli.args.base import BaseArgs, int_in, same_named
from luvc.export.buckets import BUCKET_SETS, parse_image_option, parse_mixed_size, parse_video_size
from luvc.export.graph_workers import MAX_DEFAULT_WORKERS
from luvc.export.profile import AUTO_EXTERNAL_BYTES, KV_UPDATE_FORMS, PRECISIONS, PROFILE_LIMITS, ExportProfile


class ExportArgs(BaseArgs):
    """Export: what the ONNX graphs fix (image-size buckets, precision) and the ranges of dynamic axes.

    Depends on: Model, LUVC (the budgets are frozen per bucket).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Export", "What the ONNX graphs fix and what stays dynamic")
        group.add_argument("--out", required=True, help="export folder to create")
        group.add_argument(
            "--image-size",
            action="append",
            default=None,
            metavar="HxW|SET",
            help="processed image size of a bucket (repeat for more buckets), or a named set of buckets: "
            + "; ".join(f"{name}: {text}" for name, text in BUCKET_SETS.items())
            + "; default 448x448 for Qwen-VL, the vision tower's size for LLaVA",
        )
        group.add_argument(
            "--video-size",
            action="append",
            default=None,
            metavar="FxHxW",
            help="a video bucket: frames and processed frame size, e.g. 16x448x448 (repeat for more; the Qwen-VL "
            "families); with video sizes alone the export has no image bucket",
        )
        group.add_argument(
            "--mixed-size",
            action="append",
            default=None,
            metavar="HxW+FxHxW",
            help="a bucket for one prompt with an image and then a video, e.g. 448x448+16x448x448 (repeat for more; "
            "Qwen-VL families); its image and video sizes become buckets too",
        )
        group.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="graph precision (fp32)")
        for field, help_text in (
            ("max_batch", "largest batch for engine profiles (4)"),
            ("max_text_tokens", "longest prompt text after the image (512)"),
            ("max_new_tokens", "longest generation (256)"),
        ):
            flag = "--" + field.replace("_", "-")
            group.add_argument(flag, type=int_in(1, PROFILE_LIMITS[field]), default=None, help=help_text)
        group.add_argument(
            "--external-data",
            choices=("auto", "always", "never"),
            default=None,
            help="weights in the export's one shared weights.data file (each tensor once): auto (weights above "
            f"{AUTO_EXTERNAL_BYTES >> 20} MiB), always or never",
        )
        group.add_argument(
            "--kv-update",
            choices=KV_UPDATE_FORMS,
            default=None,
            help="ONNX form of the decode graph's in-place KV-cache write: tensor-scatter (default; TensorRT >= 10.15, "
            "TensorRT-RTX, ONNX Runtime) or scatter-elements (TensorRT 10.3 on JetPack 6)",
        )
        group.add_argument(
            "--jobs",
            type=int_in(1, 64),
            default=None,
            help="processes that export graphs side by side, each sharing the loaded weights (default on Linux: the "
            f"usable CPUs, at most {MAX_DEFAULT_WORKERS} and one per graph; elsewhere 1; 1 needs the least memory)",
        )
        group.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
        group.add_argument("--no-passes", action="store_true", help="skip the graph passes (fusion, cleanup)")
        group.add_argument(
            "--plugin-nodes",
            action="store_true",
            help="trace each OIM step and SPU layer as one luvc::OrthoMerge / luvc::SpectrumPrune node (engines need "
            "the plugin library and full TensorRT; ONNX Runtime cannot run them)",
        )

    def parse(self, args: argparse.Namespace) -> None:
        self.out = Path(args.out)
        self.overwrite = args.overwrite
        self.passes, self.plugin_nodes = not args.no_passes, args.plugin_nodes
        self.jobs = args.jobs
        sizes = tuple(parse_image_option(text) for text in args.image_size) if args.image_size else None
        videos = tuple(parse_video_size(text) for text in args.video_size or ())
        mixed = tuple(parse_mixed_size(text) for text in args.mixed_size or ())
        self.profile = ExportProfile(
            **same_named(args, ExportProfile, image_sizes=sizes, video_sizes=videos, mixed_sizes=mixed)
        )
