"""Sample options: a folder of images and prompts, or the built-in synthetic set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from luvc.cli.args.base import BaseArgs
from luvc.errors import critical
from luvc.samples import Sample, folder_samples, synthetic_samples


class DataArgs(BaseArgs):
    """Data: the images and prompts a check or calibration runs (a folder, or seeded synthetic scenes).

    Depends on: nothing (image sizes come from the export's buckets).
    """

    def __init__(self, default_count: int = 4) -> None:
        self.default_count = default_count

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Data", "Images and prompts to run")
        group.add_argument(
            "--data", default=None, help="folder of images (+ optional prompts.txt); default: synthetic scenes"
        )
        group.add_argument("--prompts", default=None, help="text file with one prompt per line (overrides prompts.txt)")
        group.add_argument(
            "--num-samples",
            type=int,
            default=None,
            help=f"how many samples (default: all images, or {self.default_count} synthetic)",
        )
        group.add_argument("--seed", type=int, default=None, help="seed of the synthetic scenes (default 0)")

    def parse(self, args: argparse.Namespace) -> None:
        if args.prompts is not None and args.data is None:
            critical(
                "--prompts pairs prompts with the images of --data; pass --data FOLDER too (the synthetic scenes "
                "have prompts of their own)."
            )
        self.folder = None if args.data is None else Path(args.data)
        self.prompts = args.prompts
        if args.num_samples is not None and args.num_samples < 1:
            critical(f"--num-samples {args.num_samples}: ask for at least 1 sample.")
        self.count = args.num_samples
        self.seed = args.seed

    def samples(self, image_sizes: Sequence[tuple[int, ...]]) -> list[Sample]:
        """The samples: synthetic ones at the export's bucket sizes ``image_sizes`` (a video bucket's ``(frames, H, W)``
        gets synthetic clips), or a data folder's images at their own size (the runtime fits them to the image
        buckets)."""
        if self.folder is None:
            return synthetic_samples(image_sizes, self.default_count if self.count is None else self.count, self.seed)
        images = [size for size in image_sizes if len(size) == 2 and isinstance(size[0], int)]
        if not images:
            critical(
                f"--data {self.folder} holds images but this export has video buckets only; leave out --data to check "
                "it on synthetic clips."
            )
        return folder_samples(self.folder, self.prompts, self.count)
