"""Export profiles: what is static in the graphs (image-size and video buckets, budgets) and the ranges of what is
dynamic."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import torch

from luvc.compress.budgets import BudgetPlan
from luvc.compress.config import LUVCConfig
from luvc.errors import critical
from luvc.export.kv_update import DEFAULT_KV_UPDATE, KV_UPDATE_FORMS
from luvc.export.manifest import bucket_name, spans_end
from luvc.images import synthetic_image
from luvc.models.base import VLMAdapter
from luvc.models.plan import RequestPlan
from luvc.models.prompt import token_runs
from luvc.videos import synthetic_video

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
DEFAULT_QWEN_IMAGE_SIZE = (448, 448)
PROFILE_LIMITS = {"max_batch": 256, "max_text_tokens": 32768, "max_new_tokens": 32768}  # graphs' axes stay < 2^16
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 28, 8192  # a processed bucket: at least one 2x2 merge unit, at most 8K pixels
MAX_VIDEO_FRAMES = 768  # Qwen-VL's video processors sample at most 768 frames


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
    - ``external_data``: ``auto`` (weights in a side file above 1 GiB), ``always`` or ``never``;
    - ``kv_update``: the ONNX form of the decode graph's in-place KV-cache write (``luvc.export.kv_update``):
      ``tensor-scatter`` (TensorRT >= 10.15, TensorRT-RTX, ONNX Runtime) or ``scatter-elements`` (TensorRT 10.3).
    """

    image_sizes: tuple[tuple[int, int], ...] | None = None
    video_sizes: tuple[tuple[int, int, int], ...] = ()
    mixed_sizes: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = ()
    precision: str | None = None
    max_batch: int | None = None
    max_text_tokens: int | None = None
    max_new_tokens: int | None = None
    opset: int | None = None
    external_data: str | None = None
    kv_update: str | None = None

    def resolve(self, adapter: VLMAdapter) -> ExportProfile:
        precision = self.precision or "fp32"
        if precision not in PRECISIONS:
            critical(f"Precision {precision!r} is not supported; use one of {sorted(PRECISIONS)} (--precision).")
        external = self.external_data or "auto"
        if external not in ("auto", "always", "never"):
            critical(f"external_data={external!r}: use auto, always or never (--external-data).")
        kv_update = self.kv_update or DEFAULT_KV_UPDATE
        if kv_update not in KV_UPDATE_FORMS:
            critical(f"kv_update={kv_update!r}: use one of {list(KV_UPDATE_FORMS)} (--kv-update).")
        videos = tuple(tuple(size) for size in self.video_sizes)
        mixed = tuple((tuple(image), tuple(video)) for image, video in self.mixed_sizes)
        if (videos or mixed) and not adapter.takes_video:
            critical(adapter.video_unsupported + f" Leave out {'--mixed-size' if mixed else '--video-size'}.")
        if len(set(videos)) != len(videos):
            critical(f"Video sizes {list(videos)} repeat a bucket; give each --video-size once.")
        if len(set(mixed)) != len(mixed):
            critical(f"Mixed sizes {list(mixed)} repeat a bucket; give each --mixed-size once.")
        sizes = tuple(tuple(size) for size in (self.image_sizes or ()))
        if len(set(sizes)) != len(sizes):
            critical(f"Image sizes {list(sizes)} repeat a bucket; give each --image-size once.")
        if not (sizes or videos or mixed):
            sizes = (default_image_size(adapter),)
        # a mixed bucket runs the vision graphs of its parts: they are buckets too
        sizes += tuple(dict.fromkeys(image for image, _ in mixed if image not in sizes))
        videos += tuple(dict.fromkeys(video for _, video in mixed if video not in videos))
        limits = {
            key: default if value is None else value
            for key, value, default in (
                ("max_batch", self.max_batch, 4),
                ("max_text_tokens", self.max_text_tokens, 512),
                ("max_new_tokens", self.max_new_tokens, 256),
            )
        }
        for key, value in limits.items():
            if not 1 <= value <= PROFILE_LIMITS[key]:
                critical(f"{key}={value} must be between 1 and {PROFILE_LIMITS[key]} (--{key.replace('_', '-')}).")
        return ExportProfile(
            sizes,
            videos,
            mixed,
            precision,
            opset=self.opset or 18,
            external_data=external,
            kv_update=kv_update,
            **limits,
        )

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]


@dataclasses.dataclass
class Bucket:
    """One image-size or video bucket: the sample pixels it was traced with, its LUVC plan (shared by its vision and
    prefill graphs) and what is static in its graphs. ``frames`` is 0 for images."""

    image_size: tuple[int, int]  # of the image, or of each frame
    pixels: dict  # processor output for one sample image of this size
    plan: RequestPlan  # of the sample image under the export's config
    uncompressed_tokens_per_image: int  # what the image would bring without OIM (the baseline's KV cache)
    visual_start: int  # index of the first image token in the prompt
    min_text_tokens: int  # tokens after the image in the shortest prompt the template makes
    prompt_position_ids: torch.Tensor  # (R, visual_end) positions before the text
    next_position: int  # position of the first text token after the image
    frames: int = 0  # a video's frames (after the processor's padding to whole temporal patches); 0: an image
    parts: tuple[str, ...] = ()  # a mixed bucket's image and video buckets (whose vision graphs it runs)
    host_arrays: dict = dataclasses.field(default_factory=dict)  # more host metadata (``video_time_arrays``)
    visual_spans: tuple[tuple[int, int], ...] = ()  # (start, tokens) of each run of visual tokens in the prompt

    @property
    def visual_end(self) -> int:
        """Index after the last visual token: where the prompt's text begins."""
        return spans_end(self.visual_spans)

    @property
    def name(self) -> str:
        return bucket_name(self.image_size, self.frames, self.parts)

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens entering the LLM (a mixed bucket: its image's and its video's)."""
        return sum(self.plan.tokens_per_image)

    @property
    def budget_plan(self) -> BudgetPlan:
        return self.plan.budget_plan


def parse_mixed_size(text: str) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """``"448x448+16x448x448"`` -> ``((448, 448), (16, 448, 448))``: an image, then a video, in one prompt."""
    image, plus, video = text.partition("+")
    if not plus:
        critical(f"Mixed size {text!r} is not HxW+FRAMESxHxW, e.g. 448x448+16x448x448 (--mixed-size).")
    return parse_image_size(image, "--mixed-size"), parse_video_size(video)


def parse_video_size(text: str) -> tuple[int, int, int]:
    """``"8x448x448"`` -> ``(8, 448, 448)``: frames, then the processed frame size."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+\s*[xX]\s*\d+)\s*", text)
    if not match:
        critical(f"Video size {text!r} is not FRAMESxHxW, e.g. 16x448x448 (--video-size).")
    frames = int(match.group(1))
    if not 1 <= frames <= MAX_VIDEO_FRAMES:
        critical(f"Video size {text!r}: the frame count must be between 1 and {MAX_VIDEO_FRAMES} (--video-size).")
    return (frames, *parse_image_size(match.group(2), "--video-size"))


def parse_image_size(text: str, option: str = "--image-size") -> tuple[int, int]:
    """``"448x448"`` -> ``(448, 448)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        critical(f"Image size {text!r} is not HxW, e.g. 448x448 ({option}).")
    height, width = int(match.group(1)), int(match.group(2))
    if not (MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE):
        critical(
            f"Image size {text!r}: each side must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels "
            f"({option}), e.g. 448x448."
        )
    return height, width


def default_image_size(adapter: VLMAdapter) -> tuple[int, int]:
    vision = adapter.model.config.vision_config
    if hasattr(vision, "image_size"):  # one tile (InternVL) or the tower's size (LLaVA)
        size = vision.image_size
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return DEFAULT_QWEN_IMAGE_SIZE


def _synthetic(size: Sequence[int], frames: int = 0):
    """A synthetic image of ``size``, or a clip of ``frames`` such frames."""
    return synthetic_video(frames, *size) if frames else synthetic_image(*size)


def _sample_inputs(adapter: VLMAdapter, visual) -> tuple[dict, dict[str, torch.Tensor]]:
    """Model inputs for one image, video or (image, video) pair and an empty prompt, and the processor's part."""
    inputs = adapter.prepare_inputs([visual], "")
    return inputs, {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}


def _kept_size(adapter: VLMAdapter, size: tuple[int, int], tries: int = 4) -> tuple[int, int] | None:
    """The size the processor leaves unchanged that ``size`` leads to when processed again and again, if any."""
    for _ in range(tries):
        seen = adapter.processed_size(size, _sample_inputs(adapter, _synthetic(size))[1])
        if seen == size:
            return size
        size = seen
    return None


def _traced_prompt(adapter: VLMAdapter, visual) -> dict:
    """The ``Bucket`` fields that follow from tracing ``visual`` through the processor and the template: pixels,
    plan, the visual spans (image and video placeholders in prompt order) and the positions before the text."""
    inputs, pixels = _sample_inputs(adapter, visual)
    plan = adapter.plan(pixels)  # the one prepare_inputs made
    ids = inputs["input_ids"][0].tolist()
    spans = tuple(sorted(token_runs(ids, adapter.image_token_id) + token_runs(ids, adapter.video_token_id)))
    end = spans_end(spans)
    positions = adapter.prompt_position_ids(inputs, plan)[:, 0]
    return dict(
        pixels=pixels,
        plan=plan,
        visual_start=spans[0][0],
        min_text_tokens=max(2, len(ids) - end),
        prompt_position_ids=positions[:, :end],
        next_position=int(positions[0, end]),
        visual_spans=spans,
    )


def plan_bucket(adapter: VLMAdapter, image_size: Sequence[int], frames: int = 0) -> Bucket:
    """Trace one synthetic image of ``image_size`` (or a video of ``frames`` such frames) through the processor and
    the LUVC plan of ``adapter``."""
    height, width = image_size
    traced = _traced_prompt(adapter, _synthetic((height, width), frames))
    pixels = traced["pixels"]
    seen = adapter.processed_size((height, width), pixels)
    if seen != (height, width):
        kept = _kept_size(adapter, seen)
        option = f"--video-size {frames}x" if frames else "--image-size "
        fix = (
            f"use {option}{kept[0]}x{kept[1]}, a size it keeps"
            if kept
            else "no nearby size is kept as it is; set the processor's min_pixels/max_pixels to admit the size"
        )
        critical(
            f"The image processor turns a {height}x{width} image into {seen[0]}x{seen[1]} pixels, so {height}x{width} "
            f"cannot be a bucket (buckets are processed sizes); {fix}."
        )
    if frames and adapter.processed_frames(pixels) != frames:
        kept = adapter.processed_frames(pixels)
        critical(
            f"A {frames}-frame video becomes {kept} frames (whole temporal patches), so {frames} cannot be a bucket's "
            f"frame count; use --video-size {kept}x{height}x{width}."
        )
    return Bucket(
        image_size=(height, width),
        uncompressed_tokens_per_image=adapter.plan(pixels, LUVCConfig.off()).tokens_per_image[0],
        frames=frames,
        host_arrays=adapter.video_time_arrays(traced["plan"]) if frames else {},
        **traced,
    )


def plan_mixed_bucket(adapter: VLMAdapter, image: Bucket, video: Bucket) -> Bucket:
    """The bucket of a prompt with the image of bucket ``image``, then the video of bucket ``video`` (their vision
    graphs serve it; its own graph is the prefill)."""
    traced = _traced_prompt(adapter, (_synthetic(image.image_size), _synthetic(video.image_size, video.frames)))
    host = dict(video.host_arrays)
    if host:  # the video's time positions start at its first span
        host["video_time_start"] = np.array(traced["visual_spans"][1][0], dtype=np.int64)  # after the image span
    return Bucket(
        image_size=image.image_size,
        uncompressed_tokens_per_image=image.uncompressed_tokens_per_image + video.uncompressed_tokens_per_image,
        frames=video.frames,
        host_arrays=host,
        parts=(image.name, video.name),
        **traced,
    )


def layer_capacity(
    prefix_tokens: int, visual_tokens: int, min_text_tokens: int, max_text_tokens: int, max_new_tokens: int
) -> int:
    """KV entries one decoder layer needs for one bucket: the longest prompt it holds (the text before and between
    the visual spans, its visual tokens, the longest text) plus every generated token but the last (which is never
    fed back)."""
    return prefix_tokens + visual_tokens + max(max_text_tokens, min_text_tokens + 1) + max_new_tokens - 1


def kv_capacities(buckets: Sequence[Bucket], profile: ExportProfile) -> list[int]:
    """Each decoder layer's fixed KV-cache capacity in the decode graph: the most any bucket needs there."""
    num_layers = len(buckets[0].budget_plan.total)
    return [
        max(
            layer_capacity(
                b.visual_end - b.tokens_per_image,
                b.budget_plan.total[layer],
                b.min_text_tokens,
                profile.max_text_tokens,
                profile.max_new_tokens,
            )
            for b in buckets
        )
        for layer in range(num_layers)
    ]
