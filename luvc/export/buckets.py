"""Buckets: the sizes an export's graphs are traced for (an image's ``HxW``, a video's ``FxHxW``, an image then a
video ``HxW+FxHxW``), their names, the option that adds each, and where the visual spans end in a prompt.

Nothing heavy is imported here: the CLI parses sizes with it at once, and every stage names buckets through it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Literal

from luvc.errors import critical

MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 28, 8192  # a processed bucket: at least one 2x2 merge unit, at most 8K pixels
MAX_VIDEO_FRAMES = 768  # Qwen-VL's video processors sample at most 768 frames
# named bucket sets (--image-size NAME): what each covers; a set's sizes are what the family's processor makes of them
ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16))  # width:height, each at the set's pixel budget
CAMERA_MODES = ((480, 640), (640, 480), (720, 1280), (1280, 720), (1080, 1920), (1920, 1080))  # VGA, 720p, 1080p
BUCKET_SETS = {
    "aspects": "1:1, 4:3, 3:4, 16:9 and 9:16 at SIDE x SIDE pixels (aspects:SIDE; default the family's bucket side)",
    "cameras": "VGA, 720p and 1080p frames, landscape and portrait, as the processor sizes them",
}


@dataclasses.dataclass(frozen=True)
class BucketSet:
    """A named set of image buckets (``--image-size aspects``, ``aspects:672``, ``cameras``): raw image sizes that the
    export turns into buckets with the family's processor (``sizes``), so each is a size the processor keeps."""

    name: str
    side: int | None = None  # aspects: the pixel budget's side (None: the family's default bucket side)

    def raw_sizes(self, default_side: int) -> list[tuple[int, int]]:
        """``(H, W)`` images the set stands for: each aspect at ``side`` squared pixels, or the camera modes."""
        if self.name == "cameras":
            return list(CAMERA_MODES)
        side = self.side or default_side
        return [(round(side * math.sqrt(h / w)), round(side * math.sqrt(w / h))) for w, h in ASPECTS]

    def sizes(self, default_side: int, processed: Callable[[tuple[int, int]], tuple[int, int]]) -> list[tuple]:
        """The set's buckets: ``processed`` (the processor's size rule) of each raw size, each once, in order."""
        return list(dict.fromkeys(tuple(processed(size)) for size in self.raw_sizes(default_side)))

    def __str__(self) -> str:
        return self.name + (f":{self.side}" if self.side else "")


def parse_image_option(text: str) -> tuple[int, int] | BucketSet:
    """An ``--image-size`` value: ``HxW``, or a named set of buckets (``BUCKET_SETS``)."""
    name, _, side = text.strip().partition(":")
    if name not in BUCKET_SETS:
        return parse_image_size(text)
    if name == "cameras" and side:
        critical(f"--image-size {text!r}: the cameras set has no size; use --image-size cameras.")
    if side and (not side.isdigit() or not MIN_IMAGE_SIDE <= int(side) <= MAX_IMAGE_SIDE):
        critical(f"--image-size {text!r}: the side must be a number of pixels in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}].")
    return BucketSet(name, int(side) if side else None)


def parse_image_size(text: str, option: str = "--image-size") -> tuple[int, int]:
    """``"448x448"`` -> ``(448, 448)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        sets = f", or a named set ({', '.join(BUCKET_SETS)})" if option == "--image-size" else ""
        critical(f"Image size {text!r} is not HxW, e.g. 448x448{sets} ({option}).")
    height, width = int(match.group(1)), int(match.group(2))
    if not (MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE):
        critical(
            f"Image size {text!r}: each side must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels "
            f"({option}), e.g. 448x448."
        )
    return height, width


def parse_video_size(text: str) -> tuple[int, int, int]:
    """``"8x448x448"`` -> ``(8, 448, 448)``: frames, then the processed frame size."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+\s*[xX]\s*\d+)\s*", text)
    if not match:
        critical(f"Video size {text!r} is not FRAMESxHxW, e.g. 16x448x448 (--video-size).")
    frames = int(match.group(1))
    if not 1 <= frames <= MAX_VIDEO_FRAMES:
        critical(f"Video size {text!r}: the frame count must be between 1 and {MAX_VIDEO_FRAMES} (--video-size).")
    return (frames, *parse_image_size(match.group(2), "--video-size"))


def parse_mixed_size(text: str) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """``"448x448+16x448x448"`` -> ``((448, 448), (16, 448, 448))``: an image, then a video, in one prompt."""
    image, plus, video = text.partition("+")
    if not plus:
        critical(f"Mixed size {text!r} is not HxW+FRAMESxHxW, e.g. 448x448+16x448x448 (--mixed-size).")
    return parse_image_size(image, "--mixed-size"), parse_video_size(video)


def bucket_name(image_size: Sequence[int], frames: int = 0, parts: Sequence[str] = ()) -> str:
    """``HxW`` for an image bucket, ``FxHxW`` for a video bucket of ``frames`` frames, the ``parts`` joined by ``+``
    for a mixed bucket."""
    if parts:
        return "+".join(parts)
    return "x".join(str(side) for side in ((frames,) if frames else ()) + tuple(image_size))


# a BucketEntry.size: (H, W) of an image, (F, H, W) of a video, or an image's and a video's (a mixed bucket)
BucketSize = tuple[int, ...] | tuple[tuple[int, ...], ...]


def size_name(size: BucketSize) -> str:
    """The bucket name of a ``BucketEntry.size``: ``HxW``, ``FxHxW``, or ``HxW+FxHxW`` for an image and a video."""
    if size and isinstance(size[0], tuple):
        return "+".join(size_name(part) for part in size)
    return "x".join(str(side) for side in size)


def size_option(size: BucketSize) -> str:
    """The export option that adds a bucket of ``size`` (``BucketEntry.size``)."""
    if size and isinstance(size[0], tuple):
        return "--mixed-size"
    return "--video-size" if len(size) == 3 else "--image-size"


def spans_end(spans: Sequence[tuple[int, int]]) -> int:
    """Index after the last of ``(start, tokens)`` spans."""
    start, count = spans[-1]
    return start + count


BucketKind = Literal["image", "video", "mixed"]


class BucketKey:
    """What names a bucket, for the planned bucket (``bucket_plan.Bucket``) and its manifest entry
    (``manifest_entries.BucketEntry``) alike: its kind, name and size from ``image_size``, ``frames`` and ``parts``,
    and where its prompt's text begins from ``visual_spans``."""

    image_size: tuple[int, int]
    frames: int
    parts: tuple[str, ...]

    @property
    def visual_spans(self) -> tuple[tuple[int, int], ...]:
        """``(start, tokens)`` of each run of visual tokens in the prompt (a field or a property of the subclass)."""
        raise NotImplementedError

    @property
    def kind(self) -> BucketKind:
        """``mixed`` (an image, then a video), ``video`` or ``image``."""
        return "mixed" if self.parts else "video" if self.frames else "image"

    @property
    def name(self) -> str:
        return bucket_name(self.image_size, self.frames, self.parts)

    @property
    def size(self) -> tuple:
        """``(H, W)``, ``(frames, H, W)`` for a video bucket, ``((H, W), (frames, H', W'))`` for a mixed one: what
        ``ExportManifest.bucket_for`` takes."""
        if self.parts:
            return tuple(tuple(int(side) for side in part.split("x")) for part in self.parts)
        return ((self.frames,) if self.frames else ()) + tuple(self.image_size)

    @property
    def visual_end(self) -> int:
        """Index after the last visual token: where the prompt's text begins."""
        return spans_end(self.visual_spans)
