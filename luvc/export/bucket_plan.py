"""Bucket planning: trace one synthetic image (or clip, or image and clip) of a bucket's size through the
processor, the prompt template and the LUVC plan, and derive what is static in its graphs; the decode graph's KV
capacities over all buckets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from luvc.compress.budgets import BudgetPlan
from luvc.compress.config import LUVCConfig
from luvc.errors import critical
from luvc.export.buckets import BucketKey, spans_end
from luvc.export.manifest_entries import ProfileEntry
from luvc.export.profile import layer_capacity
from luvc.images import synthetic_image
from luvc.models.base import VLMAdapter
from luvc.models.plan import RequestPlan
from luvc.prompt import token_runs
from luvc.videos import VideoTimes, synthetic_video


@dataclasses.dataclass
class Bucket(BucketKey):
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
    video_times: VideoTimes | None = None  # where a video's frame-rate-dependent time positions go (Qwen2.5-VL)
    visual_spans: tuple[tuple[int, int], ...] = ()  # (start, tokens) of each run of visual tokens in the prompt

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens entering the LLM (a mixed bucket: its image's and its video's)."""
        return sum(self.plan.tokens_per_image)

    @property
    def budget_plan(self) -> BudgetPlan:
        return self.plan.budget_plan


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
    videos = () if adapter.video_token_id is None else token_runs(ids, adapter.video_token_id)
    spans = tuple(sorted(token_runs(ids, adapter.image_token_id) + videos))
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
        kept_frames = adapter.processed_frames(pixels)
        critical(
            f"A {frames}-frame video becomes {kept_frames} frames (whole temporal patches), so {frames} cannot be a "
            f"bucket's frame count; use --video-size {kept_frames}x{height}x{width}."
        )
    return Bucket(
        image_size=(height, width),
        uncompressed_tokens_per_image=adapter.plan(pixels, LUVCConfig.off()).tokens_per_image[0],
        frames=frames,
        video_times=adapter.video_times(traced["plan"]) if frames else None,
        **traced,
    )


def plan_mixed_bucket(adapter: VLMAdapter, image: Bucket, video: Bucket) -> Bucket:
    """The bucket of a prompt with the image of bucket ``image``, then the video of bucket ``video`` (their vision
    graphs serve it; its own graph is the prefill)."""
    traced = _traced_prompt(adapter, (_synthetic(image.image_size), _synthetic(video.image_size, video.frames)))
    times = video.video_times
    if times is not None:  # the video's time positions start at its first span, after the image's
        times = dataclasses.replace(times, start=traced["visual_spans"][1][0])
    return Bucket(
        image_size=image.image_size,
        uncompressed_tokens_per_image=image.uncompressed_tokens_per_image + video.uncompressed_tokens_per_image,
        frames=video.frames,
        video_times=times,
        parts=(image.name, video.name),
        **traced,
    )


def kv_capacities(buckets: Sequence[Bucket], profile: ProfileEntry) -> list[int]:
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
