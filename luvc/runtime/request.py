"""A generation: ``GenerationOptions`` and a ``Prepared`` batch in, one ``Step`` per token out (driving the one
generation loop, ``luvc.runtime.running_batch``).

Everything between the graphs stays on the device as torch tensors: visual features, prompt embeddings, logits and
the per-layer ``KVCache`` of fixed capacities that the decode graph updates in place. Per decode step only the sampled
token ids cross to the host (and the logits, when the options keep them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import torch

from luvc.errors import critical
from luvc.runtime.feeds import GraphFeeds
from luvc.runtime.kv_cache import KVCache
from luvc.runtime.options import FinishReason, GenerationOptions, RowStep, Step
from luvc.runtime.prepare import Prepared
from luvc.runtime.running_batch import RunningBatch
from luvc.runtime.sessions import Sessions


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
class Generation:
    """A finished request: each row's text, ``tokens (B, new tokens)`` (a row that ended early repeats its last token)
    and why each row ended."""

    texts: list[str]
    tokens: np.ndarray  # (B, new tokens)
    timings: Timings
    finish_reasons: list[FinishReason] = dataclasses.field(default_factory=list)


class Request:
    """One generation of ``prepared`` under ``options`` (made by ``Pipeline.request``).

    It holds the prefill's device tensors (visual features, feeds and outputs) and drives its rows as a
    ``RunningBatch`` of their own on the sessions' KV cache: the loop decides when each row ends (a stop token, a stop
    string, ``max_new_tokens``). Iterating runs the vision and prefill graphs for the first ``Step``, then one decode
    step per further token, until every row has ended; ``texts`` holds each row's text so far."""

    def __init__(
        self, sessions: Sessions, feeds: GraphFeeds, prepared: Prepared, options: GenerationOptions, tokenizer=None
    ) -> None:
        sessions.manifest.profile.check_max_new_tokens(options.max_new_tokens)
        batch = prepared.batch
        self.sessions, self.feeds, self.prepared, self.options = sessions, feeds, prepared, options
        self.timings = Timings(preprocess_ms=prepared.preprocess_ms)
        # one request at a time: the sessions' cache; its rows are known by their index
        self.rows: RunningBatch[int] = RunningBatch(sessions, feeds, batch, tokenizer)
        self.row_options = options.rows(batch)
        self.texts = [""] * batch
        self.finish_reasons: list[FinishReason | None] = [None] * batch
        self.last_tokens = np.zeros(batch, dtype=np.int64)  # a row that ended repeats its last token
        self.image_features: dict[str, torch.Tensor] = {}
        self.prefill_graph = ""  # the prefill graph that ran (a rung of a hybrid model's ladder)
        self.prefill_feeds: dict[str, torch.Tensor] = {}
        self.prefill_outputs: dict[str, torch.Tensor] = {}
        self.steps_done = 0
        self.done = False
        self._began = self._decode_began = self._sessions_before = 0.0

    @property
    def cache(self) -> KVCache:
        """The KV cache holding the request's rows."""
        return self.rows.cache

    def ended_reasons(self) -> list[FinishReason]:
        """Each row's finish reason, once every row has finished."""
        reasons = [reason for reason in self.finish_reasons if reason is not None]
        if len(reasons) != len(self.finish_reasons):
            raise RuntimeError("the request still has rows running; iterate it to the end first")
        return reasons

    def __iter__(self) -> Iterator[Step]:
        while not self.done:
            yield self.step()

    def pieces(self, row: int = 0) -> Iterator[str]:
        """Run the request to its end, giving row ``row``'s text piece by piece as tokens make it final (the pieces
        join to ``texts[row]``)."""
        shown = 0
        for _ in self:
            if piece := self.texts[row][shown:]:
                shown += len(piece)
                yield piece

    def step(self) -> Step:
        """The next token: the first runs vision and prefill, each further one a decode step."""
        if self.done:
            critical("This request has finished; start a new one with Pipeline.request().")
        if self.steps_done == 0:
            row_steps, decode_feeds = self._start(), None
        else:
            row_steps, decode_feeds = self.rows.step(keep_feeds=self.options.keep_decode_feeds)
        step = self._gather(row_steps, decode_feeds)
        self.steps_done += 1
        self.timings.new_tokens = self.steps_done
        self.done = bool(step.finished.all())
        now = time.perf_counter()
        if self.steps_done == 1:
            self.timings.first_token_ms = (now - self._began) * 1e3
            self._decode_began = now
        self.timings.decode_ms = (now - self._decode_began) * 1e3
        self.timings.session_ms = (self.sessions.seconds() - self._sessions_before) * 1e3
        return step

    def _start(self) -> list[RowStep[int]]:
        sessions, prepared, timings = self.sessions, self.prepared, self.timings
        self._began, self._sessions_before = time.perf_counter(), sessions.seconds()
        prefill, row_steps = self.rows.admit(prepared, self.row_options, range(prepared.batch))
        self.image_features, self.prefill_feeds = prefill.image_features, prefill.feeds
        self.prefill_graph = prefill.graph
        self.prefill_outputs = prefill.outputs
        timings.vision_ms, timings.prefill_ms = prefill.vision_ms, prefill.prefill_ms
        timings.kv_cache_bytes = self.rows.cache.nbytes()
        return row_steps

    def _gather(self, row_steps: list[RowStep[int]], decode_feeds: dict | None) -> Step:
        """The batch's ``Step`` from its running rows' steps."""
        logits, first = None, row_steps[0].logits if row_steps else None
        if self.options.keep_logits and first is not None:
            logits = np.full((self.prepared.batch, first.shape[-1]), np.nan, first.dtype)
        for row_step in row_steps:
            row = row_step.member
            self.last_tokens[row] = row_step.token
            self.texts[row] += row_step.text
            self.finish_reasons[row] = row_step.finish_reason
            if logits is not None:
                logits[row] = row_step.logits
        finished = np.array([reason is not None for reason in self.finish_reasons])
        return Step(self.steps_done, self.last_tokens.copy(), finished, logits, decode_feeds)
