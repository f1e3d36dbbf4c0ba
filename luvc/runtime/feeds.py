"""``GraphFeeds``: the host work between the graphs, on the device.

Vision feeds from a request's pixels and its bucket's ``HostPlan``; the vision graph's features (a mixed bucket's
image and video along the token axis); token embeddings; position ids; and the prefill feeds, where the visual
features overwrite the prompt's visual spans (static per bucket) in the token embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from luvc.errors import critical
from luvc.export.host_plan import HostPlan
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import BucketEntry
from luvc.runtime.base_session import TORCH_DTYPES
from luvc.runtime.pixels import BytePixels, pixels_on
from luvc.runtime.prompt_ids import PromptRows, visual_tokens
from luvc.runtime.sessions import Sessions
from luvc.videos import DEFAULT_SAMPLED_FPS


def visual_index(bucket: BucketEntry, shifts: np.ndarray) -> np.ndarray:
    """``(B, n)``: where each row's visual tokens of ``bucket`` sit in its prompt, its spans moved by its ``shifts``."""
    spans = np.concatenate([np.arange(start, start + count) for start, count in bucket.visual_spans])
    return shifts[:, None] + spans


class GraphFeeds:
    """Feeds and features for the graphs of ``manifest`` (export ``folder``), run through ``sessions``."""

    def __init__(self, folder: Path, manifest: ExportManifest, sessions: Sessions) -> None:
        self.folder, self.manifest, self.sessions = folder, manifest, sessions
        self._plans: dict[str, HostPlan] = {}

    def host_plan(self, bucket: BucketEntry) -> HostPlan:
        """The bucket's ``HostPlan`` (read once)."""
        if bucket.host not in self._plans:
            self._plans[bucket.host] = HostPlan.load(self.folder / bucket.host, bucket.visual_start)
        return self._plans[bucket.host]

    def vision_feeds(self, pixel_values: np.ndarray | BytePixels, bucket: BucketEntry) -> list[dict[str, torch.Tensor]]:
        """The feeds of the vision graph's calls for ``pixel_values``, on the device: one call for a
        ``(B, C, H, W)`` batch; one per image for Qwen-VL pixels ``(images * N, C)``, with the bucket's
        host-planned metadata."""
        inputs = self.manifest.graphs[bucket.vision].inputs
        pixels = pixels_on(pixel_values, self.sessions.to_device).to(TORCH_DTYPES[inputs[0].dtype])
        if len(inputs[0].shape) == 4:  # (B, C, H, W) with a dynamic batch
            return [{"pixel_values": pixels}]
        per_image = inputs[0].shape[0]
        if not isinstance(per_image, int):  # the exporter fixes a bucket's patches per image
            critical(f"{bucket.vision} takes a symbolic number of patches ({per_image}); export it again.")
        if pixels.dim() != 2 or pixels.shape[0] % per_image:
            critical(
                f"{bucket.vision} takes {per_image} patches per image; got pixels of shape "
                f"{tuple(pixels.shape)}. Preprocess with the model's image processor."
            )
        metadata = self.host_plan(bucket).vision_metadata
        on_device = {entry.name: self.sessions.to_device(metadata[entry.name]) for entry in inputs[1:]}
        return [{"pixel_values": chunk, **on_device} for chunk in torch.split(pixels, per_image)]

    def image_features(self, pixels: Sequence[np.ndarray | BytePixels], bucket: BucketEntry) -> dict[str, torch.Tensor]:
        """The vision graph's outputs on the device, images along axis 0: ``image_embeds (images, n, D)`` and
        (Qwen3-VL) the DeepStack planes ``deepstack.{k}`` of the same shape. ``pixels`` holds one array per visual of
        the bucket: a mixed bucket's image and video run their own buckets' graphs, joined along the token axis."""
        if bucket.parts:
            parts = [
                self.image_features((part_pixels,), self.manifest.buckets[part])
                for part_pixels, part in zip(pixels, bucket.parts)
            ]
            return {name: torch.cat([part[name] for part in parts], dim=1) for name in parts[0]}
        session = self.sessions[bucket.vision]
        calls = [session.infer(feeds) for feeds in self.vision_feeds(pixels[0], bucket)]
        if len(calls) == 1:
            return calls[0]
        return {name: torch.cat([outputs[name] for outputs in calls]) for name in calls[0]}

    def embed(self, input_ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings of device ``input_ids (B, S)``, into ``out`` when given."""
        targets = None if out is None else {"inputs_embeds": out}
        return self.sessions["embed"].infer({"input_ids": input_ids}, targets)["inputs_embeds"]

    def positions(
        self,
        bucket: BucketEntry,
        starts: np.ndarray,
        length: int,
        seconds_per_slice: float | None = None,
        shifts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Position ids of ``length`` tokens from each row's prompt index ``starts`` (``HostPlan.positions``); a video
        without ``seconds_per_slice`` is taken at the processors' default rate."""
        seconds = seconds_per_slice or (self.manifest.geometry.temporal_patch_size or 1) / DEFAULT_SAMPLED_FPS
        return self.host_plan(bucket).positions(starts, length, seconds, shifts)

    def text_positions(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Position ids of ``length`` tokens from each row's index ``starts`` in a prompt without visuals: the index
        itself, ``(3, B, S)`` for M-RoPE or ``(B, S)``."""
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
        rows = self.manifest.geometry.position_rows
        return np.broadcast_to(index, (rows, *index.shape)).copy() if rows == 3 else index

    def text_prefill_feeds(self, prompts: PromptRows) -> dict[str, torch.Tensor]:
        """Feeds of the text prefill (prompts without visuals): token embeddings, positions and each row's length."""
        batch, length = prompts.input_ids.shape
        return {
            "inputs_embeds": self.embed(self.sessions.to_device(prompts.input_ids)),
            "position_ids": self.sessions.to_device(self.text_positions(np.zeros(batch, dtype=np.int64), length)),
            "prompt_lengths": self.sessions.to_device(prompts.lengths),
        }

    def prefill_feeds(
        self,
        prompts: PromptRows,
        features: dict[str, torch.Tensor],
        bucket: BucketEntry,
        seconds_per_slice: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prefill feeds for ``prompts`` and their visuals' ``features`` (``image_features``): each row's visual spans
        (moved by its shift) take its ``image_embeds (B, n, D)``; the features the prefill graph also takes
        (DeepStack planes) are fed as they are, with each row's length and visual shift."""
        input_ids, shifts = prompts.input_ids, prompts.visual_shifts
        inputs = {entry.name for entry in self.manifest.graphs[bucket.prefill].inputs}
        if "visual_shift" not in inputs and self.manifest.passes.plugin_nodes and shifts.any():
            critical(
                f"{bucket.prefill} was traced with --plugin-nodes, whose SpectrumPrune plugin takes the visual tokens "
                "where the template has them; send prompts in the template's layout (no system prompt or history), "
                "or re-export without --plugin-nodes."
            )
        tokens = visual_tokens(self.manifest, bucket)
        batch, length = input_ids.shape
        index = visual_index(bucket, shifts)
        in_range = index.min() >= 0 and index.max() < length
        if not in_range or not np.isin(np.take_along_axis(input_ids, index, 1), tokens).all():
            critical(
                f"Prompts must hold bucket {bucket.name}'s {bucket.tokens_per_image} visual tokens where their visual "
                "shifts put them; build them with Pipeline.prepare() for the same bucket."
            )
        embeds = self.embed(self.sessions.to_device(input_ids.astype(np.int64)))
        rows = features["image_embeds"].to(embeds.dtype)
        device_index = self.sessions.to_device(index)[:, :, None].expand(-1, -1, embeds.shape[-1])
        embeds.scatter_(1, device_index, rows)
        positions = self.positions(bucket, np.zeros(batch, dtype=np.int64), length, seconds_per_slice, shifts)
        feeds = {
            "inputs_embeds": embeds,
            "position_ids": self.sessions.to_device(positions),
            "prompt_lengths": self.sessions.to_device(prompts.lengths),
        }
        if "visual_shift" in inputs:
            feeds["visual_shift"] = self.sessions.to_device(shifts)
        for name in inputs & features.keys():
            feeds[name] = features[name]
        return feeds
