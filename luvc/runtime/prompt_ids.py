"""Prompt ids in the export's template: the user's text around a bucket's visual placeholders, tokenized, with the
checks that the visual spans land where the bucket's graphs expect them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from luvc.errors import critical
from luvc.export.manifest import BucketEntry, ExportManifest
from luvc.prompt import PromptTemplate, token_runs, video_text
from luvc.videos import DEFAULT_SAMPLED_FPS, Video, slice_timestamps


class PromptIds:
    """Token ids of ``manifest``'s prompt template for one bucket's prompts, with ``tokenizer``."""

    def __init__(self, manifest: ExportManifest, tokenizer) -> None:
        self.manifest, self.tokenizer = manifest, tokenizer
        entry = manifest.template
        self.template = PromptTemplate(entry.text, entry.image_placeholder, entry.bos)

    def visual_text(self, bucket: BucketEntry, video: Video | None) -> str | None:
        """What takes the template's ``{image}`` when it is not the bucket's placeholder repeated (``None``): a
        mixed bucket's image and video, or a video whose timestamps the prompt holds (Qwen3-VL)."""
        entry = self.manifest.template
        if bucket.parts:
            image, clip = (self.manifest.buckets[part] for part in bucket.parts)
            text = self.visual_text(clip, video) or entry.video_placeholder * clip.tokens_per_image
            return entry.image_placeholder * image.tokens_per_image + entry.visual_separator + text
        if video is None or not entry.video_frame_template:
            return None
        temporal = self.manifest.geometry.temporal_patch_size
        seconds = slice_timestamps(video, temporal, len(bucket.visual_spans))
        return video_text(entry.video_placeholder, bucket.tokens_per_image, entry.video_frame_template, seconds)

    def __call__(self, prompts: Sequence[str], bucket: BucketEntry, videos: Sequence[Video] = ()) -> np.ndarray:
        """``(B, S)`` ids of the template around each prompt (a prompt that holds the image placeholder is taken as
        already templated); rows must tokenize to one length. ``videos``: each row's clip, for a bucket whose prompt
        holds the clip's timestamps (Qwen3-VL)."""
        entry = self.manifest.template
        placeholder, token = entry.placeholder_of(bucket)
        texts = [
            self.template.render(text, bucket.tokens_per_image, placeholder, self.visual_text(bucket, video))
            for text, video in itertools.zip_longest(prompts, videos[: len(prompts)])
        ]
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if len({len(row) for row in rows}) > 1:
            critical("Batched prompts tokenize to different lengths; batch rows need prompts of equal length.")
        if bucket.parts:
            spans = tuple(sorted(token_runs(rows[0], entry.image_token_id) + token_runs(rows[0], token)))
            if spans != bucket.visual_spans:
                critical(
                    f"The prompt's image and video tokens do not sit where bucket {bucket.name} has them; write the "
                    "prompt without placeholders (the template adds them)."
                )
        elif entry.video_frame_template and bucket.frames and token_runs(rows[0], token) != bucket.visual_spans:
            seconds = slice_timestamps(videos[0], self.manifest.geometry.temporal_patch_size, len(bucket.visual_spans))
            critical(
                f"The clip's slice timestamps ({', '.join(f'{s:.1f}' for s in seconds)} s) take other token counts in "
                f"the prompt than bucket {bucket.name}'s, which was traced with a clip from 0 s at "
                f"{DEFAULT_SAMPLED_FPS:g} frames a second (this family writes each slice's time into the prompt); "
                "sample the clip so its timestamps have as many digits (e.g. --video-fps 2 on a clip under 10 s)."
            )
        text_tokens = len(rows[0]) - bucket.visual_end
        limit = self.manifest.profile.max_text_tokens
        if text_tokens > limit:
            critical(
                f"The prompt has {text_tokens} text tokens after the image but the export profile allows "
                f"{limit}; shorten it or re-export with --max-text-tokens {text_tokens}."
            )
        return np.asarray(rows, dtype=np.int64)
