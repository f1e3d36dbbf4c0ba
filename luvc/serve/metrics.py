"""Prometheus metrics of one server (its own registry, so several servers in one process never mix counts)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series only add noise to a scrape

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class ServerMetrics:
    """Requests by outcome, time to first token, generated tokens and decode rate, batch sizes, queue depth, and the
    visual tokens kept per image: entering the LLM (after OIM) and summed over the decoder layers (after SPU)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "luvc_requests", "Chat completion requests by outcome", ["outcome"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "luvc_time_to_first_token_seconds",
            "From a request's arrival to its first token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter("luvc_generated_tokens", "Completion tokens", registry=self.registry)
        self.decode_tokens_per_second = Histogram(
            "luvc_decode_tokens_per_second",
            "Completion tokens after the first, per second of decoding, per request",
            buckets=RATE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "luvc_batch_size",
            "Requests per decode step (the in-flight batch)",
            buckets=(1, 2, 3, 4, 6, 8, 16),
            registry=self.registry,
        )
        self.prefill_batch_size = Histogram(
            "luvc_prefill_batch_size",
            "Requests per prefill (those of one bucket that joined the in-flight batch together)",
            buckets=(1, 2, 3, 4, 6, 8, 16),
            registry=self.registry,
        )
        self.queue_depth = Gauge("luvc_queue_depth", "Requests waiting for the worker", registry=self.registry)
        self.visual_tokens = Counter(
            "luvc_visual_tokens",
            "Visual tokens kept per image: 'llm_input' after OIM, 'llm_layers' summed over decoder layers after SPU",
            ["stage"],
            registry=self.registry,
        )
        self.bucket_requests = Counter(
            "luvc_bucket_requests",
            "Requests per bucket, by whether the fit policy changed the image ('fitted') or not ('as_sent')",
            ["bucket", "fit"],
            registry=self.registry,
        )

    def watch_cuda_graphs(self, counts: Callable[[], Sequence[int]]) -> None:
        """Report CUDA-graph replay at each scrape from ``counts()`` (``Sessions.replay_counts``: enabled, shapes
        captured, runs replayed, graphs that fell back to plain runs)."""
        enabled = Gauge("luvc_cuda_graphs_enabled", "1 when graphs are captured and replayed", registry=self.registry)
        captured = Gauge("luvc_cuda_graphs_captured", "Graph shapes captured as CUDA graphs", registry=self.registry)
        replays = Gauge(
            "luvc_cuda_graph_replays", "Graph runs replayed from a captured CUDA graph", registry=self.registry
        )
        failed = Gauge(
            "luvc_cuda_graphs_failed", "Graphs whose capture failed (they run plain)", registry=self.registry
        )
        for index, gauge in enumerate((enabled, captured, replays, failed)):
            gauge.set_function(functools.partial(_item, counts, index))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _item(counts: Callable[[], Sequence[int]], index: int) -> float:
    """Item ``index`` of what ``counts()`` reports now (a gauge's value at a scrape)."""
    return float(counts()[index])
