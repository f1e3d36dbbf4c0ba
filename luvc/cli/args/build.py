"""Engine build options: target preset, output folder, timing cache, TensorRT module."""

from __future__ import annotations

import argparse
from pathlib import Path

from luvc.cli.args.base import BaseArgs
from luvc.engines.targets import TARGETS
from luvc.engines.trt_module import MODULE_NAMES
from luvc.engines.weight_inputs import LAYOUTS


class BuildArgs(BaseArgs):
    """Build: which target the engines are for, where they go, and the TensorRT module that builds them.

    Depends on: nothing (the export folder's manifest gives precision, profiles and budgets).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Build", "TensorRT engines for a target")
        group.add_argument("export_dir", help="export folder (from `luvc-export export`)")
        group.add_argument("--target", required=True, choices=sorted(TARGETS), help="deployment target preset")
        group.add_argument("--out", required=True, help="engine folder to create")
        group.add_argument("--timing-cache", default=None, help="timing cache file to load and update")
        group.add_argument(
            "--hardware-compatible", action="store_true", help="engines that run on any Ampere or newer GPU"
        )
        group.add_argument("--dla-core", type=int, default=None, help="Orin: run on this DLA core (GPU fallback)")
        group.add_argument(
            "--tensorrt-module", choices=MODULE_NAMES, default=None, help="default: tensorrt, else tensorrt_rtx"
        )
        group.add_argument(
            "--weights",
            choices=LAYOUTS,
            default=None,
            help="shared (default): the weights of weights.data are engine inputs, on the device once for every "
            "engine; embedded: each engine holds its own copy (the default with --dla-core)",
        )
        group.add_argument("--overwrite", action="store_true", help="replace an existing engine folder")
        group.add_argument(
            "--verbose", action="store_true", help="keep TensorRT's whole log of the build in OUT/build.log"
        )
        group.add_argument(
            "--plugin-library",
            default=None,
            help="the LUVC plugin library (built by the root CMakeLists.txt), loaded before parsing; needed for "
            "--plugin-nodes exports, which build with full TensorRT only",
        )

    def parse(self, args: argparse.Namespace) -> None:
        self.export_dir = Path(args.export_dir)
        self.options = dict(
            timing_cache=args.timing_cache,
            hardware_compatible=args.hardware_compatible,
            dla_core=args.dla_core,
            module=args.tensorrt_module,
            overwrite=args.overwrite,
            verbose=args.verbose,
            plugin_library=args.plugin_library,
            weights_layout=args.weights,
        )
        self.target, self.out = args.target, Path(args.out)
