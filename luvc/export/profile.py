"""Export profiles: what an export covers (its buckets, precision, KV-update form) and the ranges of what stays
dynamic in its graphs (batch, text, generation), with the KV capacity a layer needs for them.

Nothing heavy is imported here, so the CLI checks a profile at once; tracing a bucket is ``bucket_plan``'s work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from luvc.errors import critical
from luvc.export.buckets import BucketSet
from luvc.export.manifest_entries import PRECISIONS, ProfileEntry

AUTO_EXTERNAL_BYTES = 256 << 20  # above this the graphs share one weights.data (tiny models stay self-contained)

if TYPE_CHECKING:
    from luvc.models.base import VLMAdapter

DEFAULT_QWEN_IMAGE_SIZE = (448, 448)
PROFILE_LIMITS = {"max_batch": 256, "max_text_tokens": 32768, "max_new_tokens": 32768}  # graphs' axes stay < 2^16
KV_UPDATE_FORMS = ("tensor-scatter", "scatter-elements")  # the decode graph's in-place KV write (``kv_update``)
DEFAULT_KV_UPDATE = "tensor-scatter"


@dataclasses.dataclass(frozen=True)
class ExportProfile:
    """What an export covers. ``None`` fields take the defaults in ``resolve``.

    - ``image_sizes``: processed image sizes ``(H, W)`` in pixels, one bucket each (graphs are static per bucket);
    - ``video_sizes``: processed videos ``(frames, H, W)``, one bucket each (Qwen-VL families); with video sizes
      alone the export has no image bucket;
    - ``mixed_sizes``: ``((H, W), (frames, H', W'))`` pairs, one bucket each for a prompt with that image and that
      video (Qwen-VL families); its parts are buckets too, whose vision graphs it runs;
    - ``precision``: ``fp32`` or ``fp16`` (fp16 keeps FP32 islands for norm statistics, SPU scores and softmax);
    - ``max_batch``, ``max_text_tokens`` (prompt text after the image), ``max_new_tokens``: ranges recorded for
      engine profiles and checked by the runtime;
    - ``external_data``: ``auto`` (weights in a side file above ``AUTO_EXTERNAL_BYTES``), ``always`` or ``never``;
    - ``kv_update``: the ONNX form of the decode graph's in-place KV-cache write (``luvc.export.kv_update``):
      ``tensor-scatter`` (TensorRT >= 10.15, TensorRT-RTX, ONNX Runtime) or ``scatter-elements`` (TensorRT 10.3).
    """

    image_sizes: tuple[tuple[int, int] | BucketSet, ...] | None = None
    video_sizes: tuple[tuple[int, int, int], ...] = ()
    mixed_sizes: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = ()
    precision: str | None = None
    max_batch: int | None = None
    max_text_tokens: int | None = None
    max_new_tokens: int | None = None
    opset: int | None = None
    external_data: str | None = None
    kv_update: str | None = None

    def resolve(self, adapter: VLMAdapter) -> ProfileEntry:
        """This profile with every default taken for ``adapter``'s model, each value checked (one line if not): the
        manifest's ``ProfileEntry``, which the exporter and its graph specs are made from. Its ``image_sizes`` include
        the image parts of the mixed buckets (their vision graphs run); likewise ``video_sizes``."""
        precision = self.precision or "fp32"
        if precision not in PRECISIONS:
            critical(f"Precision {precision!r} is not supported; use one of {sorted(PRECISIONS)} (--precision).")
        external = self.external_data or "auto"
        if external not in ("auto", "always", "never"):
            critical(f"external_data={external!r}: use auto, always or never (--external-data).")
        kv_update = self.kv_update or DEFAULT_KV_UPDATE
        if kv_update not in KV_UPDATE_FORMS:
            critical(f"kv_update={kv_update!r}: use one of {list(KV_UPDATE_FORMS)} (--kv-update).")
        videos = tuple(_video_size(size) for size in self.video_sizes)
        mixed = tuple((_image_size(image), _video_size(video)) for image, video in self.mixed_sizes)
        if (videos or mixed) and not adapter.takes_video:
            critical(adapter.video_unsupported + f" Leave out {'--mixed-size' if mixed else '--video-size'}.")
        if len(set(videos)) != len(videos):
            critical(f"Video sizes {list(videos)} repeat a bucket; give each --video-size once.")
        if len(set(mixed)) != len(mixed):
            critical(f"Mixed sizes {list(mixed)} repeat a bucket; give each --mixed-size once.")
        given = list(self.image_sizes or ())
        sizes = tuple(_image_size(size) for size in given if not isinstance(size, BucketSet))
        if len(set(sizes)) != len(sizes):
            critical(f"Image sizes {list(sizes)} repeat a bucket; give each --image-size once.")
        sizes = tuple(dict.fromkeys(sizes + set_sizes([s for s in given if isinstance(s, BucketSet)], adapter)))
        if not (sizes or videos or mixed):
            sizes = (default_image_size(adapter),)
        # a mixed bucket runs the vision graphs of its parts: they are buckets too
        sizes += tuple(dict.fromkeys(image for image, _ in mixed if image not in sizes))
        videos += tuple(dict.fromkeys(video for _, video in mixed if video not in videos))
        return ProfileEntry(
            image_sizes=sizes,
            video_sizes=videos,
            mixed_sizes=mixed,
            precision=precision,
            max_batch=_limit("max_batch", self.max_batch, 4),
            max_text_tokens=_limit("max_text_tokens", self.max_text_tokens, 512),
            max_new_tokens=_limit("max_new_tokens", self.max_new_tokens, 256),
            opset=self.opset or 18,
            external_data=external,
            kv_update=kv_update,
        )


def _image_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2:
        critical(f"Image size {tuple(size)} is not (height, width); give --image-size HxW.")
    height, width = size
    return int(height), int(width)


def _video_size(size: Sequence[int]) -> tuple[int, int, int]:
    if len(size) != 3:
        critical(f"Video size {tuple(size)} is not (frames, height, width); give --video-size FxHxW.")
    frames, height, width = size
    return int(frames), int(height), int(width)


def _limit(key: str, value: int | None, default: int) -> int:
    """``value`` of the limit ``key`` (``default`` for None), checked against ``PROFILE_LIMITS``."""
    value = default if value is None else value
    if not 1 <= value <= PROFILE_LIMITS[key]:
        critical(f"{key}={value} must be between 1 and {PROFILE_LIMITS[key]} (--{key.replace('_', '-')}).")
    return value


def set_sizes(sets: Sequence[BucketSet], adapter: VLMAdapter) -> tuple[tuple[int, int], ...]:
    """The image buckets of named ``sets``: each set's sizes as the adapter's processor makes them."""
    from luvc.processing import processed_size

    side = default_image_size(adapter)[0]
    processor = adapter.image_processor

    def processed(size: tuple[int, int]) -> tuple[int, int]:
        made = processed_size(processor, size)
        if made is None:
            critical(
                f"The {type(processor).__name__} sizes images by no rule known here; give --image-size HxW instead."
            )
        return made

    found = [size for bucket_set in sets for size in bucket_set.sizes(side, processed)]
    return tuple(dict.fromkeys(found))


def default_image_size(adapter: VLMAdapter) -> tuple[int, int]:
    vision = adapter.model.config.vision_config
    if hasattr(vision, "image_size"):  # one tile (InternVL) or the tower's size (LLaVA)
        size = vision.image_size
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return DEFAULT_QWEN_IMAGE_SIZE


def layer_capacity(
    prefix_tokens: int, visual_tokens: int, min_text_tokens: int, max_text_tokens: int, max_new_tokens: int
) -> int:
    """KV entries one decoder layer needs for one bucket: the longest prompt it holds (the text before and between
    the visual spans, its visual tokens, the longest text) plus every generated token but the last (which is never
    fed back)."""
    return prefix_tokens + visual_tokens + max(max_text_tokens, min_text_tokens + 1) + max_new_tokens - 1
