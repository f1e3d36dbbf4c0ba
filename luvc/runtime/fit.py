"""Fitting a request's image (or clip, or image and clip) to one of an export's buckets, and saying what was done.

An export's graphs are traced per bucket (a processed size), because LUVC's per-layer budgets are fixed per bucket;
an image the family's processor would make into another size has no graphs. A fit policy maps it onto a bucket:

- ``nearest`` (default): an image whose processed size is a bucket is left to the processor, as the model would see
  it; any other is resized (with the processor's interpolation, content kept whole, no crop) to the bucket nearest
  its aspect ratio, then its area;
- ``pad``: scaled to fit inside the bucket nearest its aspect ratio, keeping its own, and padded with the processor's
  mean colour (centred), so nothing is distorted (OCR, counting, geometry);
- ``exact``: nothing is changed; an image whose processed size is no bucket is refused.

A clip's frames are fitted like an image to the video bucket nearest their aspect ratio (then frame count, then
area); its sampled frames are resampled evenly to the bucket's frame count when the processor would not make that
count of them (it pads to whole temporal patches). InternVL's buckets are tile canvases, so fitting picks the
exported canvas nearest the image's aspect, as its processor picks a grid of tiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from luvc.errors import critical
from luvc.export.buckets import size_name
from luvc.processing import fill_colour, processed_size, resample_of
from luvc.runtime import DEFAULT_FIT, FIT_POLICIES
from luvc.videos import Video

if TYPE_CHECKING:
    from luvc.export.manifest import ExportManifest


Visual = Image.Image | Video | tuple  # an image, a clip, or an (image, clip) pair for one prompt


@dataclasses.dataclass(frozen=True)
class Fit:
    """What fitting did to one visual: the bucket it now lands in, and the change (``""``: none; the processor's
    own size is the bucket)."""

    bucket: str
    change: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.change)

    def __str__(self) -> str:
        return f"bucket {self.bucket}: {self.change or 'as the processor sizes it'}"


@dataclasses.dataclass(frozen=True)
class BucketFitter:
    """Fits visuals to one export's bucket ``sizes`` (``BucketEntry.size`` values) with its image ``processor`` under
    ``policy``: ``fitter(visual) -> (visual, Fit | None)`` (see ``fit_visual``)."""

    sizes: tuple[tuple, ...]
    processor: Any
    policy: str = DEFAULT_FIT
    temporal_patch: int | None = None

    def __post_init__(self) -> None:
        check_policy(self.policy)

    @classmethod
    def for_export(cls, manifest: ExportManifest, processor, policy: str | None = None) -> BucketFitter:
        """The fitter of an export's buckets (its processor: ``luvc.processing.load_processor``)."""
        sizes = tuple(bucket.size for bucket in manifest.buckets.values())
        return cls(sizes, processor, policy or DEFAULT_FIT, manifest.geometry.temporal_patch_size)

    def __call__(self, visual: Visual) -> tuple[Visual, Fit | None]:
        return fit_visual(visual, self.sizes, self.processor, self.policy, self.temporal_patch)


def check_policy(policy: str) -> str:
    """``policy`` when it is one of ``FIT_POLICIES``, else an error naming them."""
    if policy not in FIT_POLICIES:
        critical(f"Fit policy {policy!r} is not one of {list(FIT_POLICIES)} (--fit).")
    return policy


def fit_visual(
    visual: Visual, sizes: Sequence[tuple], processor, policy: str = DEFAULT_FIT, temporal_patch: int | None = None
) -> tuple[Visual, Fit | None]:
    """``visual`` fitted under ``policy`` to one of the bucket ``sizes`` (``BucketEntry.size`` values), and what was
    done (``None`` with ``exact``, which changes nothing and leaves the refusal to the bucket lookup)."""
    check_policy(policy)
    if policy == "exact":
        return visual, None
    if isinstance(visual, tuple):
        return _fit_pair(visual, sizes, processor, policy, temporal_patch)
    if isinstance(visual, Video):
        videos = [size for size in sizes if len(size) == 3]
        if not videos:
            critical(f"This export has no video bucket (buckets: {_names(sizes)}); re-export with --video-size.")
        return _fit_video(visual, videos, processor, policy, temporal_patch)
    images = [size for size in sizes if len(size) == 2 and isinstance(size[0], int)]
    if not images:
        critical(
            f"This export has no image bucket (buckets: {_names(sizes)}); send a video, or re-export it with "
            "--image-size."
        )
    image, target, change = _fit_image(visual, images, processor, policy)
    return image, Fit(size_name(target), change)


def _fit_image(
    image: Image.Image, sizes: Sequence[tuple[int, int]], processor, policy: str, what: str = "image"
) -> tuple[Image.Image, tuple[int, int], str]:
    """The image fitted to one of the image ``sizes``, that size, and the change in words."""
    height, width = image.height, image.width
    own = processed_size(processor, (height, width))
    if policy == "nearest" and own is not None and own in sizes:
        return image, own, ""
    target = nearest_size((height, width), sizes)
    if (height, width) == target and own == target:
        return image, target, ""
    if policy == "nearest":
        fitted = image.resize(target[::-1], resample_of(processor))
        change = f"{what} {height}x{width} resized to {target[0]}x{target[1]}"
    else:
        fitted, inner = _letterbox(image, target, processor)
        change = f"{what} {height}x{width} scaled to {inner[0]}x{inner[1]} and padded to {target[0]}x{target[1]}"
    landed = processed_size(processor, target)
    if landed is not None and landed != target:  # the export checked that its buckets are sizes the processor keeps
        critical(f"The processor turns bucket {target[0]}x{target[1]} into {landed[0]}x{landed[1]}; re-export it.")
    return fitted, target, change


def _letterbox(image: Image.Image, target: tuple[int, int], processor) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` scaled to fit inside ``target`` ``(H, W)`` keeping its aspect ratio, centred on the processor's mean
    colour; returns it and the scaled ``(H, W)``."""
    height, width = target
    scale = min(height / image.height, width / image.width)
    inner = (max(1, min(height, round(image.height * scale))), max(1, min(width, round(image.width * scale))))
    canvas = Image.new("RGB", (width, height), fill_colour(processor))
    canvas.paste(image.resize(inner[::-1], resample_of(processor)), ((width - inner[1]) // 2, (height - inner[0]) // 2))
    return canvas, inner


def nearest_size(size: Sequence[int], sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The ``(H, W)`` of ``sizes`` nearest ``size`` in aspect ratio (log scale, so 2:1 and 1:2 are as far from 1:1),
    then in area."""
    height, width = size
    return min(
        sizes,
        key=lambda s: (round(abs(math.log((s[1] / s[0]) / (width / height))), 9), abs(s[0] * s[1] - height * width)),
    )


def _fit_video(
    video: Video, sizes: Sequence[tuple[int, int, int]], processor, policy: str, temporal_patch: int | None
) -> tuple[Video, Fit]:
    """The clip with its frames fitted to the nearest video bucket, resampled to its frame count when needed."""
    count = len(video.frames)
    patch = temporal_patch or 1
    processed_count = -(-count // patch) * patch
    frame = nearest_size(video.size, [size[1:] for size in sizes])
    same_frame = [size for size in sizes if size[1:] == frame]
    frames = min(same_frame, key=lambda size: (abs(size[0] - processed_count), size[0]))[0]
    changes = []
    if processed_count != frames:
        picks = [round(i * (count - 1) / max(frames - 1, 1)) for i in range(frames)]
        video = dataclasses.replace(
            video,
            frames=tuple(video.frames[i] for i in picks),
            frame_indices=tuple(video.frame_indices[i] for i in picks),
        )
        changes.append(f"{count} frames resampled to {frames}")
    fitted = [_fit_image(image, [frame], processor, policy, "frames") for image in video.frames]
    if fitted[0][2]:
        video = dataclasses.replace(video, frames=tuple(image for image, _, _ in fitted))
        changes.append(fitted[0][2])
    return video, Fit(size_name((frames, *frame)), "; ".join(changes))


def _fit_pair(pair: tuple, sizes: Sequence[tuple], processor, policy: str, temporal_patch: int | None):
    """An (image, clip) prompt fitted to a mixed bucket: the image to the nearest image part, the clip to the video
    parts that go with it."""
    image, video = pair
    mixed = [size for size in sizes if isinstance(size[0], tuple)]
    if not mixed:
        critical(
            f"This export has no bucket for an image and a video (buckets: {_names(sizes)}); re-export it with "
            "--mixed-size."
        )
    image, image_size, image_change = _fit_image(image, [size[0] for size in mixed], processor, policy)
    video, video_fit = _fit_video(
        video, [size[1] for size in mixed if size[0] == image_size], processor, policy, temporal_patch
    )
    change = "; ".join(part for part in (image_change, video_fit.change) if part)
    return (image, video), Fit(f"{size_name(image_size)}+{video_fit.bucket}", change)


def _names(sizes: Sequence[tuple]) -> list[str]:
    return sorted(size_name(size) for size in sizes)
