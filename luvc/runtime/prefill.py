"""The first step of a generation: a prepared batch's vision and prefill graphs, on the device."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from luvc.runtime.feeds import GraphFeeds
from luvc.runtime.prepare import Prepared
from luvc.runtime.sessions import Sessions


@dataclasses.dataclass
class Prefill:
    """What the vision and prefill graphs made for a batch: the visual features, the prefill's feeds and outputs
    (logits of each row's last token, every layer's ``present`` keys and values) on the device, each row's prompt
    length and the positions of its first generated token on the host, and the two stages' wall times."""

    image_features: dict[str, torch.Tensor]
    feeds: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    prompt_lengths: np.ndarray
    next_positions: np.ndarray
    vision_ms: float
    prefill_ms: float

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
    graph = sessions.manifest.text_prefill if bucket is None else bucket.prefill
    prompts = prompts.widened(sessions.prefill_length(graph, prompts.input_ids.shape[1]))
    if bucket is None:
        prefill_feeds = feeds.text_prefill_feeds(prompts)
        positions = feeds.text_positions(prompts.lengths, 1)
    else:
        seconds = prepared.seconds_per_slice
        prefill_feeds = feeds.prefill_feeds(prompts, image_features, bucket, seconds)
        positions = feeds.positions(bucket, prompts.lengths, 1, seconds, prompts.visual_shifts)
    outputs = sessions[graph].infer(prefill_feeds)
    sessions.synchronize()
    prefill_ms = (time.perf_counter() - began) * 1e3 - vision_ms
    return Prefill(image_features, prefill_feeds, outputs, prompts.lengths, positions, vision_ms, prefill_ms)
