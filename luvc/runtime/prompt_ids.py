"""Prompt ids in the export's template: the user's text around a bucket's visual placeholders, tokenized, with the
checks that the visual spans have the layout the bucket's graphs expect. Text before the visuals may be longer or
shorter than the template's (a system prompt, a conversation): each row's ``visual_shift`` says by how much, and rows
of different lengths are padded on the right (``PromptRows``)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import BucketEntry
from luvc.export.profile import PROFILE_LIMITS
from luvc.prompt import Conversation, PromptTemplate, Turn, render_conversation, token_runs, video_text
from luvc.videos import DEFAULT_SAMPLED_FPS, Video, slice_timestamps

T = TypeVar("T")

TEXT_PREFILL_MIN_TOKENS = 2  # the text prefill graph's shortest input (a shorter prompt is padded)
PAD_TOKEN_ID = 0  # what pads a shorter row on the right (never attended: causal attention, each row's own length)


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class PromptRows:
    """Prompt ids of a batch: ``input_ids (B, S)`` padded on the right, each row's ``lengths (B,)`` and the
    ``visual_shifts (B,)`` of its visual spans from the bucket's (``row_shift``)."""

    input_ids: np.ndarray
    lengths: np.ndarray
    visual_shifts: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]], shifts: Sequence[int] | np.ndarray, min_width: int = 1) -> PromptRows:
        """The batch of token-id ``rows``, padded to the longest (and at least ``min_width``)."""
        width = max(min_width, *(len(row) for row in rows))
        ids = np.full((len(rows), width), PAD_TOKEN_ID, dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        lengths = np.asarray([len(row) for row in rows], dtype=np.int64)
        return cls(ids, lengths, np.asarray(shifts, dtype=np.int64))

    def widened(self, width: int) -> PromptRows:
        """These rows padded on the right to ``width`` tokens (each keeps its length); themselves when as wide."""
        if width <= self.input_ids.shape[1]:
            return self
        ids = np.full((self.input_ids.shape[0], width), PAD_TOKEN_ID, dtype=np.int64)
        ids[:, : self.input_ids.shape[1]] = self.input_ids
        return PromptRows(ids, self.lengths, self.visual_shifts)


def visual_tokens(manifest: ExportManifest, bucket: BucketEntry) -> tuple[int, ...]:
    """The token ids of ``bucket``'s visual spans: its placeholder's, and a mixed bucket's image token too."""
    template = manifest.template
    return (template.placeholder_of(bucket)[1], *([template.image_token_id] if bucket.parts else []))


def visual_layout(manifest: ExportManifest, bucket: BucketEntry, ids: Sequence[int]) -> tuple[int, bool]:
    """Where the visual spans of prompt ``ids`` start against ``bucket``'s template (``shift``: how many tokens later;
    negative: earlier), and whether they have the bucket's layout."""
    runs = tuple(sorted(run for token in visual_tokens(manifest, bucket) for run in token_runs(ids, token)))
    expected = bucket.visual_spans
    shift = runs[0][0] - expected[0][0] if runs else 0
    return shift, tuple((start - shift, count) for start, count in runs) == expected


def row_shift(manifest: ExportManifest, bucket: BucketEntry, ids: Sequence[int]) -> int:
    """How many tokens later than in ``bucket``'s template the visual spans of prompt ``ids`` start (negative:
    earlier); one line naming the problem when the spans do not have the bucket's layout or the text does not fit
    the export profile."""
    shift, matches = visual_layout(manifest, bucket, ids)
    expected = bucket.visual_spans
    if not matches:
        kind = "image and video" if bucket.kind == "mixed" else bucket.kind
        critical(
            f"The prompt's {kind} tokens do not have bucket {bucket.name}'s layout ("
            f"{', '.join(f'{count} at index {start}' for start, count in expected)}, any text before them); write the "
            "prompt without placeholders (the template adds them), or build it with Pipeline.prepare()."
        )
    after = len(ids) - (bucket.visual_end + shift)
    if after < bucket.min_text_tokens:
        critical(
            f"The prompt has {after} tokens after its visual tokens and bucket {bucket.name} needs at least "
            f"{bucket.min_text_tokens} (the template's text after them); build it with Pipeline.prepare()."
        )
    text_tokens, limit = len(ids) - bucket.visual_end, manifest.profile.max_text_tokens
    if text_tokens > limit:
        ceiling = PROFILE_LIMITS["max_text_tokens"]
        fix = (
            f" or re-export with --max-text-tokens {text_tokens}"
            if text_tokens <= ceiling
            else f" (no export takes more than {ceiling} text tokens)"
        )
        critical(
            f"The prompt has {text_tokens} text tokens beyond the template's prefix and the visual tokens but the "
            f"export profile allows {limit}; shorten it{fix}."
        )
    return shift


class PromptIds:
    """Token ids of ``manifest``'s prompt template for one bucket's prompts, with ``tokenizer``."""

    def __init__(self, manifest: ExportManifest, tokenizer) -> None:
        self.manifest, self.tokenizer = manifest, tokenizer
        entry = manifest.template
        self.template = PromptTemplate(
            entry.text, entry.image_placeholder, entry.bos, entry.source, chat_template=entry.chat_template
        )

    def visual_text(self, bucket: BucketEntry, video: Video | None) -> str | None:
        """What takes the template's ``{image}`` when it is not the bucket's placeholder repeated (``None``): a
        mixed bucket's image and video, or a video whose timestamps the prompt holds (Qwen3-VL)."""
        entry = self.manifest.template
        if bucket.parts:
            image, clip = (self.manifest.buckets[part] for part in bucket.parts)
            clip_placeholder, _ = entry.placeholder_of(clip)
            text = self.visual_text(clip, video) or clip_placeholder * clip.tokens_per_image
            separator = _recorded(entry.visual_separator, "the separator of a mixed bucket's image and video")
            return entry.image_placeholder * image.tokens_per_image + separator + text
        if video is None and not bucket.frames:
            return entry.image_sequence(bucket.tokens_per_image)
        if video is None or not entry.video_frame_template:
            return None
        placeholder, _ = entry.placeholder_of(bucket)
        seconds = slice_timestamps(video, self._temporal_patch_size(), len(bucket.visual_spans))
        return video_text(placeholder, bucket.tokens_per_image, entry.video_frame_template, seconds)

    def _temporal_patch_size(self) -> int:
        return _recorded(self.manifest.geometry.temporal_patch_size, "the frames of a temporal patch")

    def refuse_timestamps(self, bucket: BucketEntry, video: Video) -> None:
        """One line: ``video``'s slice timestamps take other token counts than ``bucket``'s (Qwen3-VL)."""
        seconds = slice_timestamps(video, self._temporal_patch_size(), len(bucket.visual_spans))
        critical(
            f"The clip's slice timestamps ({', '.join(f'{s:.1f}' for s in seconds)} s) take other token counts in "
            f"the prompt than bucket {bucket.name}'s, which was traced with a clip from 0 s at "
            f"{DEFAULT_SAMPLED_FPS:g} frames a second (this family writes each slice's time into the prompt); "
            "sample the clip so its timestamps have as many digits (e.g. --video-fps 2 on a clip under 10 s)."
        )

    def text(self, prompt: str | Conversation, bucket: BucketEntry, video: Video | None = None) -> str:
        """The full text of one row: a prompt in the template (one that holds the image placeholder is taken as
        already templated, with any text before it), or a conversation in the chat template; the visual's
        placeholder expanded for ``bucket``."""
        entry = self.manifest.template
        placeholder = entry.placeholder_of(bucket)[0]
        if isinstance(prompt, Conversation):
            if not prompt.has_visual:
                critical("The conversation has no turn with the image or video; mark the user turn that holds it.")
            # the chat template renders an image part; a video's placeholder takes its place
            prompt = render_conversation(self.template, self.tokenizer, prompt)
            prompt = prompt.replace(entry.image_placeholder, placeholder) if bucket.frames else prompt
        return self.template.render(prompt, bucket.tokens_per_image, placeholder, self.visual_text(bucket, video))

    def __call__(
        self, prompts: Sequence[str | Conversation], bucket: BucketEntry, videos: Sequence[Video] = ()
    ) -> PromptRows:
        """The ids of each prompt's text (``text``) for ``bucket``. ``videos``: each row's clip, for a bucket whose
        prompt holds the clip's timestamps (Qwen3-VL)."""
        entry = self.manifest.template
        texts = [
            self.text(prompt, bucket, video) for prompt, video in itertools.zip_longest(prompts, videos[: len(prompts)])
        ]
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if entry.video_frame_template and bucket.frames:
            for row, video in zip(rows, videos):
                if not visual_layout(self.manifest, bucket, row)[1]:
                    self.refuse_timestamps(bucket, video)
        return PromptRows.of(rows, [row_shift(self.manifest, bucket, row) for row in rows])

    def text_only(self, prompts: Sequence[str | Conversation]) -> PromptRows:
        """The ids of prompts without visuals (a text-only turn): a prompt is one user turn of the chat template;
        rows are padded to the text prefill's shortest input (2 tokens)."""
        rows = []
        for prompt in prompts:
            conversation = prompt if isinstance(prompt, Conversation) else Conversation((Turn("user", prompt),))
            if conversation.has_visual:
                critical("The conversation marks a turn with an image or video but the request has none; send it.")
            text = render_conversation(self.template, self.tokenizer, conversation)
            rows.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        longest = self.manifest.longest_text_prompt
        for row in rows:
            if len(row) > longest:
                critical(
                    f"The text-only prompt has {len(row)} tokens but this export holds at most {longest} with its "
                    f"{self.manifest.profile.max_new_tokens}-token answers; shorten it or re-export with a larger "
                    "--max-text-tokens."
                )
        return PromptRows.of(rows, [0] * len(rows), min_width=TEXT_PREFILL_MIN_TOKENS)


def _recorded(value: T | None, what: str) -> T:
    """``value`` from the manifest, which an export with video buckets records (one line if it does not)."""
    if value is None:
        critical(f"This export's manifest does not record {what}, which its video buckets need; export it again.")
    return value
