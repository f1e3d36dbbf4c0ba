"""Calibration feeds: the inputs every graph of an fp32 export sees when its own pipeline runs the samples, with
compression in the loop (the prefill graph sees merged image embeddings, the decode graph the pruned KV cache)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from luvc.calibration.verify import ReferenceRun
from luvc.engines.static_shapes import ladder
from luvc.runtime.options import GenerationOptions
from luvc.runtime.prefill import feeds_at, prefill_graph
from luvc.runtime.prepare import Prepared
from luvc.runtime.request import Request
from luvc.runtime.sessions import host_arrays
from luvc.samples import Sample


def collect_feeds(
    pipeline, samples: Sequence[Sample], decode_steps: int, advance
) -> tuple[dict[str, list[dict]], list[ReferenceRun]]:
    """Feeds of every vision, prefill and decode call the fp32 pipeline makes for ``samples``, and of the text
    prefill for each sample's prompt without its visual, per graph name (host copies, as ONNX Runtime's calibration
    reader takes them), and each sample's greedy run (the reference the quantized export is compared with)."""
    feeds: dict[str, list[dict]] = {}
    references = []
    for sample in samples:
        prepared = pipeline.prepare([sample.image], [sample.prompt])
        bucket = prepared.bucket
        if not bucket.parts:  # a mixed bucket's vision graphs calibrate on their own buckets' samples
            vision_feeds = pipeline.feeds.vision_feeds(prepared.pixels[0], bucket)
            feeds.setdefault(bucket.vision, []).extend(map(host_arrays, vision_feeds))
        options = GenerationOptions(decode_steps + 1, stop_token_ids=(), keep_logits=True, keep_decode_feeds=True)
        request = pipeline.request(prepared, options)
        steps = list(request)
        feeds.setdefault("decode", []).extend(step.decode_feeds for step in steps[1:])
        for graph, fed in _every_rung(pipeline, prepared, request).items():
            feeds.setdefault(graph, []).append(fed)
        tokens, logits = (np.stack([getattr(step, field)[0] for step in steps]) for field in ("tokens", "logits"))
        references.append(ReferenceRun(tokens, logits))
        text_prepared = pipeline.prepare(None, [sample.prompt])
        text_only = pipeline.request(text_prepared, GenerationOptions(1))
        text_only.step()
        for graph, fed in _every_rung(pipeline, text_prepared, text_only).items():
            feeds.setdefault(graph, []).append(fed)
        advance(f"calibration feeds: {sample.name}")
    return feeds, references


def _every_rung(pipeline, prepared: Prepared, request: Request) -> dict[str, dict]:
    """The prefill feeds of ``request`` (which ran ``prepared``) by graph: the graph it ran, and each other rung of a
    hybrid model's prefill ladder that holds its prompts (``luvc.engines.static_shapes.ladder``), so that every rung
    is calibrated."""
    fed = {request.prefill_graph: host_arrays(request.prefill_feeds)}
    width = prepared.prompts.input_ids.shape[1]
    for length, graph in ladder(pipeline.manifest, prefill_graph(pipeline.manifest, prepared.bucket)):
        if length >= width and graph not in fed:
            fed[graph] = host_arrays(feeds_at(pipeline.feeds, prepared, request.image_features, length))
    return fed
