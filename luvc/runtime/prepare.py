"""Preparation: visuals and prompts in, one ``Prepared`` batch out, with its bucket resolved once.

Each visual is fitted to a bucket under the fit policy (``luvc.runtime.fit``), preprocessed (an image the processor
would leave as it is: kept as 8-bit pixels, whose processor values the device makes, ``luvc.runtime.pixels``; any
other, and a video's frames one by one, ``luvc.videos``: by the model's own ``transformers`` image processor), and
its prompt rendered in the export's template (``luvc.runtime.prompt_ids``). After preparation nothing handles a raw
size: a ``Prepared`` holds its bucket.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import BucketEntry
from luvc.images import arrival_note
from luvc.processing import load_processor, tile_canvas
from luvc.prompt import Conversation
from luvc.runtime import DEVICE_PREPROCESSING, PREPROCESSING
from luvc.runtime.fit import BucketFitter, Fit
from luvc.runtime.pixels import BytePixelMaker, BytePixels, concatenate_pixels
from luvc.runtime.prompt_ids import TEXT_PREFILL_MIN_TOKENS, PromptIds, PromptRows, row_shift
from luvc.standalone_tokenizer import load_tokenizer
from luvc.videos import Video, qwen_videos_pixels, seconds_per_slice


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class Prepared:
    """A batch ready for ``Pipeline.request``: the prompts' ids (``PromptRows``: padded on the right, each row's
    length and visual shift); the pixels, one entry per visual of the bucket (an image's or a video's; a mixed
    bucket's image, then its video): ``BytePixels`` the device makes the processor's values of, or the processor's
    own array; the bucket's manifest entry; for videos the seconds one temporal
    patch spans (``luvc.videos.seconds_per_slice``); the preprocessing time; and per row what fitting it to the bucket
    did (``None``: the exact policy)."""

    prompts: PromptRows
    pixels: tuple[np.ndarray | BytePixels, ...]
    bucket: BucketEntry | None  # None: prompts without visuals (the text prefill)
    seconds_per_slice: float | None = None
    preprocess_ms: float = 0.0
    fits: tuple[Fit | None, ...] = ()
    arrival: str = ""  # how the first row's image was read (luvc.images.arrival_note: turned upright, an
    # animation's first frame), "" if as it is

    @property
    def input_ids(self) -> np.ndarray:
        """``(B, S)`` prompt ids, shorter rows padded on the right."""
        return self.prompts.input_ids

    @property
    def batch(self) -> int:
        return self.input_ids.shape[0]

    @property
    def pixels_made(self) -> str:
        """Where the vision input's values were made, in words (``luvc.runtime.pixels``)."""
        if not self.pixels:
            return "no pixels"
        if all(isinstance(pixels, BytePixels) for pixels in self.pixels):
            return "on the device from 8-bit pixels"
        return "by the transformers image processor"

    @property
    def bucket_name(self) -> str:
        """The bucket's name, ``text`` for prompts without visuals."""
        return "text" if self.bucket is None else self.bucket.name

    @property
    def prompt_tokens(self) -> int:
        """The longest row's prompt tokens."""
        return int(self.prompts.lengths.max())

    @property
    def fitted(self) -> bool:
        """Whether fitting changed any row's visual."""
        return any(fit is not None and fit.changed for fit in self.fits)

    @property
    def fit_change(self) -> str:
        """What was done to the first row's visual to fit it, in words: how it was read (turned upright, an animation's
        first frame), then fitting it to its
        bucket (``""``: nothing)."""
        fitted = self.fits[0].change if self.fits and self.fits[0] is not None else ""
        return "; ".join(part for part in (self.arrival, fitted) if part)

    @classmethod
    def stack(cls, batches: Sequence[Prepared]) -> Prepared:
        """One batch of the rows of ``batches``, which share a bucket and a video rate (prompts of any lengths; a
        single batch is returned as it is: no copy of its pixels)."""
        first = batches[0]
        if len(batches) == 1:
            return first
        if any((b.bucket_name, b.seconds_per_slice) != (first.bucket_name, first.seconds_per_slice) for b in batches):
            critical("Stacked requests must share a bucket and a video rate.")
        rows = [list(row[:length]) for b in batches for row, length in zip(b.input_ids, b.prompts.lengths)]
        shifts = np.concatenate([b.prompts.visual_shifts for b in batches])
        return cls(
            PromptRows.of(rows, shifts, min_width=TEXT_PREFILL_MIN_TOKENS if first.bucket is None else 1),
            tuple(concatenate_pixels(arrays) for arrays in zip(*(b.pixels for b in batches))),
            first.bucket,
            first.seconds_per_slice,
            sum(b.preprocess_ms for b in batches),
            tuple(fit for b in batches for fit in b.fits),
            first.arrival,
        )


class Preparer:
    """Makes ``Prepared`` batches for export ``folder`` under fit policy ``fit_policy``."""

    def __init__(
        self, folder: Path, manifest: ExportManifest, fit_policy: str, preprocessing: str = DEVICE_PREPROCESSING
    ) -> None:
        if preprocessing not in PREPROCESSING:
            critical(f"preprocessing={preprocessing!r} is not one of {', '.join(PREPROCESSING)}.")
        self.folder, self.manifest, self.fit_policy = folder, manifest, fit_policy
        self.preprocessing = preprocessing
        self._tokenizer: Any = None
        self._processor: Any = None
        self._byte_pixels: BytePixelMaker | None = None
        self._fitter: BucketFitter | None = None
        self._prompt_ids: PromptIds | None = None

    def load(self) -> Preparer:
        """Load the tokenizer and what images need now (so that preprocessing times exclude it): the export's
        ``image_rules``, or the image processor where the export recorded none or it makes the pixels."""
        self.tokenizer, self.image_rules  # noqa: B018 (loaded on first use)
        if self.preprocessing != DEVICE_PREPROCESSING:
            self.processor  # noqa: B018
        return self

    @property
    def tokenizer(self):
        """The export's tokenizer: read by ``tokenizers`` alone where the export checked that it matches
        ``transformers`` (no ``transformers`` import), else by ``transformers`` (``luvc.standalone_tokenizer``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.folder, self.manifest.tokenizer_standalone)
        return self._tokenizer

    @property
    def processor(self):
        """The export's ``transformers`` image processor (loaded on first use: videos, and images it must resize)."""
        if self._processor is None:
            self._processor = load_processor(self.folder)
        return self._processor

    @property
    def image_rules(self):
        """What fits images and makes their pixels: the rules the export recorded of its processor
        (``luvc.processing.ImageRules``, with no ``transformers`` import), or the processor where it recorded none."""
        return self.manifest.image_rules or self.processor

    @property
    def byte_pixels(self) -> BytePixelMaker | None:
        """What makes an image's pixels on the device (``luvc.runtime.pixels``); ``None`` with ``processor``
        preprocessing."""
        if self.preprocessing != DEVICE_PREPROCESSING:
            return None
        if self._byte_pixels is None:
            self._byte_pixels = BytePixelMaker(self.image_rules)
        return self._byte_pixels

    @property
    def prompt_ids(self) -> PromptIds:
        """Prompt ids in the export's template (``luvc.runtime.prompt_ids``)."""
        if self._prompt_ids is None:
            self._prompt_ids = PromptIds(self.manifest, self.tokenizer)
        return self._prompt_ids

    def fit(self, visual):
        """``visual`` (an image, a ``Video`` or an (image, video) pair) fitted to one of the export's buckets, and what
        was done (``None``: the ``exact`` policy)."""
        if isinstance(visual, Video) or isinstance(visual, tuple) and any(isinstance(v, Video) for v in visual):
            self.video_temporal_patch()
        if self._fitter is None:
            self._fitter = BucketFitter.for_export(self.manifest, self.image_rules, self.fit_policy)
        return self._fitter(visual)

    def video_temporal_patch(self) -> int:
        """The frames one temporal patch of a video spans; refuses an export without video support."""
        temporal = self.manifest.geometry.temporal_patch_size
        if temporal is None or self.manifest.template.video_token_id is None:
            critical(f"{self.manifest.model.id} was exported without video support; send images to this export.")
        return temporal

    def preprocess(self, images: Sequence[Image.Image | Video]) -> tuple[np.ndarray | BytePixels, tuple]:
        """Pixels for the vision graph, exactly as the model's image processor makes them (``BytePixels`` where the
        device can make them), and the size that names their bucket (a video's: ``(frames, H, W)``)."""
        videos = [image for image in images if isinstance(image, Video)]
        stills = [image for image in images if not isinstance(image, Video)]
        if videos:
            if stills:
                critical("A batch holds images or videos, not both; send them as separate requests.")
            temporal, patch = self.video_temporal_patch(), self.manifest.geometry.patch_size
            pixels, video_grids = qwen_videos_pixels(videos, self.processor, temporal)
            t, height, width = video_grids[0].tolist()
            return pixels, (t * temporal, height * patch, width * patch)
        maker = self.byte_pixels
        fast = maker(stills) if maker is not None else None
        if fast is not None:  # the processor's geometry leaves them as they are: its arithmetic on the device
            return fast, fast.size
        pixels = self.processor(images=stills, return_tensors="np")
        if "image_grid_thw" in pixels:
            grids = {tuple(grid) for grid in np.asarray(pixels["image_grid_thw"]).tolist()}
            if len(grids) > 1:
                critical(f"Images of one batch must share a size after preprocessing; got grids {sorted(grids)}.")
            _, height, width = grids.pop()
            patch = self.manifest.geometry.patch_size
            return np.asarray(pixels["pixel_values"]), (height * patch, width * patch)
        values = np.asarray(pixels["pixel_values"])
        if "num_patches" in pixels:  # InternVL: each image's tiles; its bucket is the canvas the tiles were cut from
            canvases = {tile_canvas((image.height, image.width), self.image_rules) for image in stills}
            if len(canvases) > 1:
                critical(f"Images of one batch must share a tile layout; got canvases {sorted(canvases)}.")
            return values, canvases.pop()
        return values, tuple(values.shape[-2:])

    def seconds_per_slice(self, visuals: Sequence) -> float | None:
        """The seconds one temporal patch of the batch's videos spans (``None`` without videos); rows share it."""
        videos = [visual for visual in visuals if isinstance(visual, Video)]
        if not videos:
            return None
        seconds = {seconds_per_slice(video, self.video_temporal_patch()) for video in videos}
        if len(seconds) > 1:
            critical(
                f"Videos of one batch must be sampled at one rate; got {sorted(seconds)} seconds per temporal patch "
                "(sample them with the same --video-fps)."
            )
        return seconds.pop()

    def __call__(self, visuals, prompts) -> Prepared:
        """Fit one image (or ``Video``) per prompt to a bucket, preprocess them (a batch lands in one bucket; a single
        image and prompt are a batch of one) and build the prompt ids; errors name what does not fit the export.
        A row of an image and then a video is one prompt for a mixed bucket (``--mixed-size``); ``visuals=None``:
        prompts without visuals (text-only turns)."""
        began = time.perf_counter()
        if visuals is None:  # prompts without visuals: the text prefill
            prompts = [prompts] if isinstance(prompts, (str, Conversation)) else list(prompts)
            rows = self.prompt_ids.text_only(prompts)
            return Prepared(rows, (), None, preprocess_ms=(time.perf_counter() - began) * 1e3)
        visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        prompts = [prompts] * len(visuals) if isinstance(prompts, (str, Conversation)) else list(prompts)
        mixed = any(isinstance(visual, (list, tuple)) for visual in visuals)
        if mixed and (
            len(visuals) != 1 or len(prompts) != 1 or [isinstance(v, Video) for v in visuals[0]] != [False, True]
        ):
            critical(
                "An export takes one image or one video per prompt, or one prompt with one image and then one video "
                "(a mixed bucket, --mixed-size); send such a prompt alone."
            )
        if len(prompts) != len(visuals):
            critical(f"Got {len(visuals)} images but {len(prompts)} prompts; give one prompt per image.")
        images = [visual for visual in (visuals[0] if mixed else visuals[:1]) if isinstance(visual, Image.Image)]
        arrival = arrival_note(images[0]) if images else ""  # read before fitting: a padded canvas is new
        pairs = [self.fit(tuple(visual) if mixed else visual) for visual in visuals]
        buckets = sorted({fit.bucket for _, fit in pairs if fit is not None})
        if len(buckets) > 1:
            critical(f"The rows of one batch fit different buckets {buckets}; send them as separate requests.")
        visuals, fits = [visual for visual, _ in pairs], tuple(fit for _, fit in pairs)
        parts = [[visual] for visual in visuals[0]] if mixed else [visuals]  # one preprocess per visual of the bucket
        processed = [self.preprocess(part) for part in parts]
        sizes = tuple(size for _, size in processed)
        bucket = self.manifest.bucket_for(sizes if mixed else sizes[0])
        flat = list(visuals[0]) if mixed else visuals
        videos = [visual for visual in flat if isinstance(visual, Video)]
        rows = self.prompt_ids(prompts, bucket, videos)
        elapsed = (time.perf_counter() - began) * 1e3
        pixels = tuple(array for array, _ in processed)
        return Prepared(rows, pixels, bucket, self.seconds_per_slice(flat), elapsed, fits, arrival)

    def from_arrays(
        self, input_ids: np.ndarray, pixels, size: tuple, seconds_per_slice: float | None = None
    ) -> Prepared:
        """A ``Prepared`` for prompt ids and pixels made elsewhere (e.g. by the model's own processor), in the bucket
        of ``size`` (a video's ``(frames, H, W)``; a mixed bucket's pair of sizes, with a pair of pixel arrays)."""
        bucket = self.manifest.bucket_for(size)
        pixels = tuple(pixels) if bucket.parts else (pixels,)
        rows = np.asarray(input_ids).tolist()
        prompts = PromptRows.of(rows, [row_shift(self.manifest, bucket, row) for row in rows])
        return Prepared(prompts, tuple(np.asarray(p) for p in pixels), bucket, seconds_per_slice)
