"""Request input: an image or a video file (or folder of frames) with its frame sampling."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from luvc.cli.args.base import BaseArgs, StoreOnce, float_in, int_in
from luvc.errors import critical
from luvc.videos import MAX_SAMPLED_FPS

if TYPE_CHECKING:
    from PIL import Image

    from luvc.videos import Video


class RequestArgs(BaseArgs):
    """Request input: the image or video a request is about, or both in one prompt (default: a synthetic image).

    Depends on: nothing (the default's size comes from the caller: a bucket, or the model's default).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Request input", "The image or video of the request")
        group.add_argument(
            "--image",
            action=StoreOnce,
            default=None,
            metavar="IMAGE",
            help="image file (default: a built-in synthetic image)",
        )
        group.add_argument(
            "--video",
            action=StoreOnce,
            metavar="VIDEO",
            default=None,
            help="video file (MP4, MKV, WebM, ... read with PyAV) or a folder of frame images (Qwen-VL families); "
            "with --image too, both go in one prompt (the image first; an export needs a --mixed-size bucket)",
        )
        group.add_argument(
            "--video-frames",
            type=int_in(1),
            default=None,
            help="frames to sample evenly from --video (default: by rate)",
        )
        group.add_argument(
            "--video-fps",
            type=float_in(0, MAX_SAMPLED_FPS, low_open=True),
            default=None,
            help="frames per second to sample from a --video file (default 2, as Qwen-VL's video processors; a rate "
            "above the video's own takes every frame)",
        )

    def parse(self, args: argparse.Namespace) -> None:
        if args.video is None and (args.video_frames is not None or args.video_fps is not None):
            critical("--video-frames and --video-fps sample a --video; pass --video PATH too.")
        self.image, self.video = args.image, args.video
        self.frames, self.fps = args.video_frames, args.video_fps

    def load(self, default_size: Sequence[int] = (224, 224)) -> Image.Image | Video | tuple[Image.Image, Video]:
        """The request's image or video (both: an ``(image, video)`` pair for one prompt); without one, a synthetic
        image of ``default_size`` ``(H, W)`` or a synthetic clip of ``(frames, H, W)``."""
        from luvc.images import load_image, synthetic_image
        from luvc.videos import load_sampled_video, synthetic_video

        video = None
        if self.video is not None:
            video = load_sampled_video(self.video, num_frames=self.frames, fps=self.fps)
        image = load_image(self.image) if self.image is not None else None
        if image is not None and video is not None:
            return image, video
        if image is not None:
            return image
        if video is not None:
            return video
        if isinstance(default_size[0], tuple):  # a mixed bucket's image and video
            return synthetic_image(*default_size[0]), synthetic_video(*default_size[1])
        if len(default_size) == 3:
            return synthetic_video(*default_size)
        return synthetic_image(*default_size)
