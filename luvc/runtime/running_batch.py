"""The generation loop: rows that decode together, joining and leaving at step boundaries, each ending once.

A ``RunningBatch`` holds up to ``capacity`` generations in the sessions' KV cache of that many rows. ``admit`` checks a
prepared batch's rows, runs their prefill (``luvc.runtime.prefill``), puts them after the running ones with their
``GenerationOptions`` and gives their first ``RowStep``; ``step`` runs one decode step for the running rows and gives
each its next. Each row keeps its own positions, KV write index, length and sampling (settings, generator, penalty
counts), so rows of any bucket, prompt length and sampling decode together: the decode graph is one for every bucket,
and its rows are independent.

This is the one place that decides when a row ends and why: at a stop token, where a stop string appears in its text
(the text ends before it), or at its ``max_new_tokens``. A row that ended leaves before the next ``admit`` or
``step`` (the last row takes its place, so the running rows are always the first ``size`` and a step costs only
theirs); until then its KV-cache row stays as the generation left it. ``Request`` (``run``, the library,
``eval``) and serve's in-flight runner (the HTTP server and the Triton model) only drive it, each admitting with one
call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic

import numpy as np
import torch

from luvc.errors import critical
from luvc.runtime.feeds import GraphFeeds
from luvc.runtime.options import FinishReason, GenerationOptions, Member, RowStep
from luvc.runtime.prefill import Prefill, run_prefill
from luvc.runtime.prepare import Prepared
from luvc.runtime.sampling import SamplingConfig, next_tokens
from luvc.runtime.sessions import Sessions, host_arrays
from luvc.runtime.text import TextStream

GREEDY = SamplingConfig()


@dataclasses.dataclass
class _Row(Generic[Member]):
    """One running row's settings and progress."""

    member: Member
    options: GenerationOptions
    stops: frozenset[int]
    stream: TextStream | None  # its text so far (None: no tokenizer, no text)
    generator: torch.Generator | None
    produced: int = 0
    ended: bool = False

    def take(self, token: int) -> tuple[str, FinishReason | None]:
        """The row's next ``token``: the text it makes final, and why the row ends with it (``None``: it goes on)."""
        self.produced += 1
        stop_token = token in self.stops
        stream = self.stream
        piece = stream.add(token) if stream is not None and not stop_token else ""
        stopped = stop_token or (stream is not None and stream.stopped)
        if not stopped and self.produced < self.options.max_new_tokens:
            return piece, None
        if stream is not None:
            piece += stream.flush()
        return piece, "stop" if stopped else "length"


class RunningBatch(Generic[Member]):
    """Up to ``capacity`` rows generating together on ``sessions`` (which lends it its KV cache); each row is known
    by the member key it was admitted with. ``tokenizer`` turns each row's tokens into text (and finds its stop
    strings); without one, rows have no text and cannot take stop strings."""

    def __init__(self, sessions: Sessions, feeds: GraphFeeds, capacity: int, tokenizer=None) -> None:
        self.sessions, self.feeds, self.tokenizer = sessions, feeds, tokenizer
        self.cache = sessions.kv_cache(capacity)
        self.cache.owner = self  # the cache now holds this batch's rows
        self.cache.clear_row()
        self.rows: list[_Row[Member]] = []
        device = sessions.device
        self.token = torch.zeros(capacity, dtype=torch.int64, device=device)
        rows = sessions.manifest.geometry.position_rows
        shape = (rows, capacity, 1) if rows == 3 else (capacity, 1)
        self.position = torch.zeros(shape, dtype=torch.int64, device=device)
        self.embeds, self.logits = self.cache.step_buffers()  # the decode step's, owned by the cache
        self.counts: torch.Tensor | None = None  # (capacity, vocab) tokens generated per row, once a row has penalties

    @property
    def capacity(self) -> int:
        return self.cache.batch

    @property
    def size(self) -> int:
        """Rows still generating."""
        return len(self.members)

    @property
    def members(self) -> list[Member]:
        """The member keys of the rows still generating, in row order."""
        return [row.member for row in self.rows if not row.ended]

    @property
    def free(self) -> int:
        """Rows that can still join."""
        return self.capacity - self.size

    def admit(
        self, prepared: Prepared, options: Sequence[GenerationOptions], members: Sequence[Member]
    ) -> tuple[Prefill, list[RowStep[Member]]]:
        """Check ``prepared``'s rows against this batch and the export (room, their ``options``' lengths and stop
        strings) before any work, run their vision and prefill graphs, and put them after the running ones, each
        generating under its ``options`` and known as its ``members`` key. Returns the prefill (its features, feeds,
        outputs and times) and each row's first step (chosen from the prefill's logits); rows that end with it have
        left already."""
        batch = prepared.batch
        if not len(options) == len(members) == batch:
            critical(f"Admitting {batch} rows needs options and a member each; got {len(options)} and {len(members)}.")
        self._drop_ended()
        if batch > self.free:
            critical(f"{batch} rows do not fit a running batch with {self.free} free rows of {self.capacity}.")
        if self.tokenizer is None and any(row_options.stop for row_options in options):
            critical("Stop strings need the text of each row: give the running batch the export's tokenizer.")
        for row_options in options:
            self.sessions.manifest.profile.check_max_new_tokens(row_options.max_new_tokens)
        prefill = run_prefill(self.sessions, self.feeds, prepared)
        return prefill, self._place(prefill, options, members)

    def _place(
        self, prefill: Prefill, options: Sequence[GenerationOptions], members: Sequence[Member]
    ) -> list[RowStep[Member]]:
        """Load ``prefill``'s rows into the cache after the running ones and give each its first step."""
        batch = prefill.outputs["logits"].shape[0]
        rows = slice(len(self.rows), len(self.rows) + batch)
        with self.sessions.on_stream():
            positions = prefill.key_positions(self.sessions.manifest)
            self.cache.load(prefill.outputs, prefill.prompt_lengths, rows.start, prefill.sequence_length, positions)
            self.position[..., rows, :].copy_(self.sessions.to_device(prefill.next_positions))
            self._allocate(prefill, [row_options.sampling for row_options in options])
            if self.counts is not None:
                self.counts[rows].zero_()
        manifest = self.sessions.manifest
        for member, row_options in zip(members, options):
            stream = None if self.tokenizer is None else TextStream(self.tokenizer, row_options.stop)
            generator = row_options.sampling.generator(self.sessions.device)
            self.rows.append(_Row(member, row_options, frozenset(row_options.stops(manifest)), stream, generator))
        return self._advance(prefill.outputs["logits"], rows)

    def _allocate(self, prefill: Prefill, samplings: Sequence[SamplingConfig]) -> None:
        """The penalties' token counts, made when the first rows that need them join."""
        if self.counts is None and any(config.penalized for config in samplings):
            vocab = prefill.outputs["logits"].shape[-1]
            self.counts = torch.zeros(self.capacity, vocab, dtype=torch.float32, device=self.sessions.device)

    def _choose(self, logits: torch.Tensor, rows: slice) -> torch.Tensor:
        """The next token of each of ``rows`` from its ``logits`` row into ``token[rows]`` (returned): greedy rows in
        one argmax (penalized ones too, when they share their penalties), others each by its own sampling and
        generator, exactly as it would be chosen alone."""
        configs = [row.options.sampling for row in self.rows[rows]]
        if all(config.greedy and not config.penalized for config in configs):
            return next_tokens(logits, GREEDY, None, self.token[rows])
        first = configs[0]
        if first.greedy and all(config == first for config in configs):  # one penalty for all: row-independent math
            counts = None if self.counts is None else self.counts[rows]  # made when the first penalized row joined
            return next_tokens(logits, first, None, self.token[rows], counts)
        for index, (row, config) in enumerate(zip(self.rows[rows], configs), start=rows.start):
            counts = self.counts[index : index + 1] if self.counts is not None and config.penalized else None
            here = slice(index - rows.start, index - rows.start + 1)
            next_tokens(logits[here], config, row.generator, self.token[index : index + 1], counts)
        return self.token[rows]

    def _advance(self, logits: torch.Tensor, rows: slice) -> list[RowStep[Member]]:
        """Choose ``rows``' next tokens from their ``logits`` and give each row its step; rows that end are marked to
        leave."""
        with self.sessions.on_stream():
            chosen = self._choose(logits, rows)
        tokens = self.sessions.to_host(chosen)  # the one copy to the host per step
        keeps = any(row.options.keep_logits for row in self.rows[rows])
        host_logits = self.sessions.to_host(logits) if keeps else None
        steps = []
        for index, (row, token) in enumerate(zip(self.rows[rows], tokens.tolist())):
            text, reason = row.take(token)
            row.ended = reason is not None
            kept = host_logits[index] if host_logits is not None and row.options.keep_logits else None
            steps.append(RowStep(row.member, token, text, reason, kept))
        return steps

    def _drop_ended(self) -> None:
        """Let the rows that ended with the last step leave."""
        for row in [row for row in self.rows if row.ended]:
            self._remove(self.rows.index(row))

    def decode(self, keep_feeds: bool = False) -> tuple[torch.Tensor, dict[str, np.ndarray] | None]:
        """One decode step of the running rows from their last tokens (``token``): the ``(size, vocab)`` logits on
        the device and, with ``keep_feeds``, the step's feeds on the host."""
        if self.cache.owner is not self:
            critical(
                "Another request on this pipeline has taken its KV cache since this one started; finish one request "
                "before starting the next, or give each concurrent request its own Pipeline."
            )
        size, embeds_buffer, logits_buffer = len(self.rows), self.embeds, self.logits
        if not size:
            critical("A running batch with no rows has nothing to decode; admit rows first.")
        self.cache.check_room(size)
        with self.sessions.on_stream():
            embeds, logits = embeds_buffer[:size], logits_buffer[:size]
            self.feeds.embed(self.token[:size, None], out=embeds)
            position = self.position[..., :size, :]
            feeds = {"inputs_embeds": embeds, "position_ids": position, **self.cache.inputs(size)}
            recorded = host_arrays(feeds) if keep_feeds else None
            self.sessions["decode"].infer(feeds, targets={"logits": logits, **self.cache.targets(size)})
            self.cache.advance(size)
            position += 1
        return logits, recorded

    def step(self, keep_feeds: bool = False) -> tuple[list[RowStep[Member]], dict[str, np.ndarray] | None]:
        """One decode step: each running row's next ``RowStep`` (rows that end with it leave before the next step)
        and, with ``keep_feeds``, the step's decode feeds on the host."""
        self._drop_ended()
        size = len(self.rows)
        logits, recorded = self.decode(keep_feeds)
        return self._advance(logits, slice(0, size)), recorded

    def leave(self, member: Member) -> None:
        """End ``member``'s row now (a cancelled generation): the last running row moves into its place."""
        self._remove([row.member for row in self.rows].index(member))

    def _remove(self, row: int) -> None:
        """Empty KV-cache row ``row``: the last row moves into its place."""
        last = len(self.rows) - 1
        if row != last:
            with self.sessions.on_stream():
                self.cache.move_row(last, row)
                self.token[row] = self.token[last]
                self.position[..., row, :] = self.position[..., last, :]
                if self.counts is not None:
                    self.counts[row] = self.counts[last]
            self.rows[row] = self.rows[last]
        else:
            self.cache.clear_row(row)
        del self.rows[last]
