"""The first step of a generation: a prepared batch's vision and prefill graphs, on the device."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import BucketEntry
from luvc.runtime.feeds import GraphFeeds, visual_index
from luvc.runtime.prepare import Prepared
from luvc.runtime.sessions import Sessions
from luvc.runtime.sliding_window import prefill_key_positions


@dataclasses.dataclass
class Prefill:
    """What the vision and prefill graphs made for a batch: the visual features, the prefill graph that ran (a rung
    of a hybrid model's ladder), its feeds and outputs (logits of each row's last token, every layer's ``present``
    keys and values) on the device, each row's prompt length and the positions of its first generated token on the
    host, and the two stages' wall times."""

    image_features: dict[str, torch.Tensor]
    graph: str
    feeds: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    prompt_lengths: np.ndarray
    next_positions: np.ndarray
    vision_ms: float
    prefill_ms: float

    def key_positions(self, manifest: ExportManifest) -> dict[int, np.ndarray] | None:
        """Each sliding-window layer's ``(B, S_l)`` key positions after this prefill (``prefill_key_positions``: the
        position ids of the tokens its cuts kept); ``None`` for a model without sliding layers."""
        layers = manifest.geometry.sliding_layers
        if not layers:
            return None
        position_ids = self.feeds["position_ids"].cpu().numpy()
        bucket_name = manifest.graphs[self.graph].bucket
        if bucket_name is None:  # the text prefill: no visuals, nothing pruned
            return prefill_key_positions(position_ids, None, {}, (), layers)
        bucket = manifest.buckets[bucket_name]
        shifts = (
            self.feeds["visual_shift"].cpu().numpy()
            if "visual_shift" in self.feeds
            else np.zeros(len(position_ids), dtype=np.int64)
        )
        kept = {layer: self.outputs[f"kept_visual_indices.{layer}"].cpu().numpy() for layer in bucket.kept_index_layers}
        return prefill_key_positions(position_ids, visual_index(bucket, shifts), kept, bucket.prune_layers, layers)

    @property
    def sequence_length(self) -> int:
        """The prefill's sequence length: the longest prompt, or more where rows were padded for a captured graph."""
        return int(self.feeds["inputs_embeds"].shape[1])


def run_prefill(sessions: Sessions, feeds: GraphFeeds, prepared: Prepared) -> Prefill:
    """Run ``prepared``'s vision graphs (none for a prompt without visuals) and its bucket's prefill graph (the text
    prefill without visuals), on the sessions' stream."""
    with sessions.on_stream():
        return _run(sessions, feeds, prepared)


def _run(sessions: Sessions, feeds: GraphFeeds, prepared: Prepared) -> Prefill:
    bucket, prompts = prepared.bucket, prepared.prompts
    began = time.perf_counter()
    image_features: dict[str, torch.Tensor] = {}
    if bucket is not None:
        image_features = feeds.image_features(prepared.pixels, bucket)
        sessions.synchronize()
    vision_ms = (time.perf_counter() - began) * 1e3
    graph, length = sessions.prefill_shape(prefill_graph(sessions.manifest, bucket), prompts.input_ids.shape[1])
    prefill_feeds = feeds_at(feeds, prepared, image_features, length)
    if bucket is None:
        positions = feeds.text_positions(prompts.lengths, 1)
    else:
        positions = feeds.positions(bucket, prompts.lengths, 1, prepared.seconds_per_slice, prompts.visual_shifts)
    outputs = sessions[graph].infer(prefill_feeds)
    sessions.synchronize()
    prefill_ms = (time.perf_counter() - began) * 1e3 - vision_ms
    return Prefill(image_features, graph, prefill_feeds, outputs, prompts.lengths, positions, vision_ms, prefill_ms)


def prefill_graph(manifest: ExportManifest, bucket: BucketEntry | None) -> str:
    """The prefill graph of ``bucket`` (the text prefill for None), before ``Sessions.prefill_shape`` picks the rung
    of its ladder a prompt runs."""
    return manifest.text_prefill if bucket is None else bucket.prefill


def feeds_at(
    feeds: GraphFeeds, prepared: Prepared, image_features: dict[str, torch.Tensor], length: int
) -> dict[str, torch.Tensor]:
    """The prefill feeds of ``prepared``'s prompts padded on the right to ``length`` tokens, with ``image_features``
    (its vision graphs' outputs; none without a visual)."""
    prompts = prepared.prompts.widened(length)
    if prepared.bucket is None:
        return feeds.text_prefill_feeds(prompts)
    return feeds.prefill_feeds(prompts, image_features, prepared.bucket, prepared.seconds_per_slice)
