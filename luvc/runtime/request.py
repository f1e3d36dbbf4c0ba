"""A generation: ``GenerationOptions`` and a ``Prepared`` batch in, one ``Step`` per token out.

Everything between the graphs stays on the device as torch tensors: visual features, prompt embeddings, logits and
the per-layer ``KVCache`` of fixed capacities that the decode graph updates in place. Per decode step only the sampled
token ids cross to the host (and the logits, when the options keep them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.runtime.feeds import GraphFeeds
from luvc.runtime.kv_cache import KVCache
from luvc.runtime.prefill import run_prefill
from luvc.runtime.prepare import Prepared
from luvc.runtime.running_batch import RunningBatch
from luvc.runtime.sampling import SamplingConfig, next_tokens
from luvc.runtime.sessions import Sessions


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How to generate: up to ``max_new_tokens`` tokens, sampled by ``sampling`` (or each row by its own of
    ``row_sampling``, one per row: greedy, sampled and seeded rows share a batch, and each row's tokens are those it
    gets alone), stopping at ``stop_token_ids`` (``None``: the model's end-of-sequence ids; ``()``: never early);
    ``keep_logits`` and ``keep_decode_feeds`` keep each step's logits and decode feeds on the host (parity and
    calibration)."""

    max_new_tokens: int = 64
    sampling: SamplingConfig = SamplingConfig()
    stop_token_ids: tuple[int, ...] | None = None
    keep_logits: bool = False
    keep_decode_feeds: bool = False
    row_sampling: tuple[SamplingConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(token) for token in self.stop_token_ids))
        object.__setattr__(self, "row_sampling", tuple(self.row_sampling))

    def samplings(self, batch: int) -> tuple[SamplingConfig, ...]:
        """Each row's sampling for a batch of ``batch`` rows (``sampling`` for all, unless ``row_sampling`` is set)."""
        if not self.row_sampling:
            return (self.sampling,) * batch
        if len(self.row_sampling) != batch:
            critical(f"row_sampling has {len(self.row_sampling)} settings for a batch of {batch}; give one per row.")
        return self.row_sampling

    def stops(self, manifest: ExportManifest) -> list[int]:
        """The stop ids: as given, else the model's end-of-sequence ids from ``manifest``."""
        if self.stop_token_ids is not None:
            return list(self.stop_token_ids)
        eos = manifest.template.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])


@dataclasses.dataclass
class Timings:
    """Wall times of one request, in milliseconds, and the KV-cache bytes after the prompt."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0
    decode_ms: float = 0.0
    new_tokens: int = 0
    kv_cache_bytes: int = 0
    session_ms: float = 0.0  # time spent inside session runs (the rest is pipeline overhead)

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(self.new_tokens - 1, 0)
        return steps / (self.decode_ms / 1e3) if self.decode_ms > 0 else 0.0


@dataclasses.dataclass
class Step:
    """What one generation step produced: ``tokens (B,)`` on the host, which rows have stopped, and (when the
    options keep them) the ``(B, V)`` logits the tokens were chosen from and the decode graph's feeds."""

    index: int
    tokens: np.ndarray
    finished: np.ndarray
    logits: np.ndarray | None = None
    decode_feeds: dict[str, np.ndarray] | None = None


@dataclasses.dataclass
class Generation:
    texts: list[str]
    tokens: np.ndarray  # (B, new tokens)
    timings: Timings


class Request:
    """One generation of ``prepared`` under ``options`` (made by ``Pipeline.request``).

    It holds the prefill's device tensors (visual features, feeds and outputs) and runs its rows as a
    ``RunningBatch`` of their own on the sessions' KV cache (token ids, embeddings, logits, positions, per-row
    sampling state). Iterating runs the vision and prefill graphs for the first ``Step``, then one decode step per
    further token, until ``max_new_tokens`` or every row has produced a stop token (rows that stopped repeat their
    stop token)."""

    def __init__(
        self,
        sessions: Sessions,
        feeds: GraphFeeds,
        prepared: Prepared,
        options: GenerationOptions,
        stops: Sequence[int],
    ) -> None:
        sessions.manifest.profile.check_max_new_tokens(options.max_new_tokens)
        self.sessions, self.feeds, self.prepared, self.options = sessions, feeds, prepared, options
        self.stop_token_ids = list(stops)
        self.timings = Timings(preprocess_ms=prepared.preprocess_ms)
        self.image_features: dict[str, torch.Tensor] = {}
        self.prefill_feeds: dict[str, torch.Tensor] = {}
        self.prefill_outputs: dict[str, torch.Tensor] = {}
        self.steps_done = 0
        self.done = False
        self._began = self._decode_began = self._sessions_before = 0.0

    def __iter__(self) -> Iterator[Step]:
        while not self.done:
            yield self.step()

    def step(self) -> Step:
        """The next token: the first runs vision and prefill, each further one a decode step."""
        if self.done:
            critical("This request has finished; start a new one with Pipeline.request().")
        step = self._start() if self.steps_done == 0 else self._decode()
        self.steps_done += 1
        self.timings.new_tokens = self.steps_done
        finished = bool(self.stop_token_ids and step.finished.all())
        self.done = self.steps_done == self.options.max_new_tokens or finished
        now = time.perf_counter()
        if self.steps_done == 1:
            self.timings.first_token_ms = (now - self._began) * 1e3
            self._decode_began = now
        self.timings.decode_ms = (now - self._decode_began) * 1e3
        self.timings.session_ms = (self.sessions.seconds() - self._sessions_before) * 1e3
        return step

    def _start(self) -> Step:
        sessions, prepared, timings = self.sessions, self.prepared, self.timings
        self._began, self._sessions_before = time.perf_counter(), sessions.seconds()
        prefill = run_prefill(sessions, self.feeds, prepared)
        self.image_features, self.prefill_feeds = prefill.image_features, prefill.feeds
        self.prefill_outputs = prefill.outputs
        timings.vision_ms, timings.prefill_ms = prefill.vision_ms, prefill.prefill_ms
        batch = prepared.batch
        self.rows = RunningBatch(sessions, self.feeds, batch)  # one request at a time uses the sessions' cache
        self.rows.admit(prefill, self.options.samplings(batch), range(batch))
        timings.kv_cache_bytes = self.rows.cache.nbytes()
        device = sessions.device
        self.stops = torch.tensor(self.stop_token_ids or [-1], dtype=torch.int64).to(device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.hit = torch.zeros(batch, dtype=torch.bool, device=device)
        return self._choose(prefill.outputs["logits"], None)

    @property
    def cache(self) -> KVCache:
        """The KV cache holding the request's rows."""
        return self.rows.cache

    def _decode(self) -> Step:
        logits, recorded = self.rows.decode(keep_feeds=self.options.keep_decode_feeds)
        return self._choose(logits, recorded)

    def _choose(self, logits: torch.Tensor, decode_feeds: dict | None) -> Step:
        """Sample the next tokens on the device; rows that stopped repeat their stop token."""
        rows = self.rows
        with self.sessions.on_stream():
            if self.options.row_sampling:  # each row by its own settings and generator, as it would be chosen alone
                token = rows.choose(logits, slice(0, rows.size))
            else:  # the whole batch by one setting, from the first row's generator (as one row alone would)
                token = next_tokens(logits, self.options.sampling, rows.generators[0], rows.token, rows.counts)
            if self.stop_token_ids:
                token.masked_fill_(self.finished, self.stop_token_ids[0])
                self.finished |= torch.isin(token, self.stops, out=self.hit)
        tokens = self.sessions.to_host(token)  # the one copy to the host per step
        finished = np.isin(tokens, self.stop_token_ids)  # a stopped row repeats a stop token
        kept = self.sessions.to_host(logits) if self.options.keep_logits else None
        return Step(self.steps_done, tokens, finished, kept, decode_feeds)
