"""In-flight batching: rows that decode together, joining and leaving at step boundaries.

A ``RunningBatch`` holds up to ``capacity`` generations in the sessions' KV cache of that many rows. ``admit`` puts
a prefilled batch's rows (``luvc.runtime.prefill``) after the running ones; each row keeps its own positions, KV
write index, length and sampling (settings, generator, penalty counts), so rows of any bucket, prompt length and
sampling decode together: the decode graph is one for every bucket, and its rows are independent. ``decode`` runs one
step for the running rows; ``leave`` ends a row and the last row takes its place, so the running rows are always the
first ``size`` and a step costs only theirs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from luvc.errors import critical
from luvc.runtime.feeds import GraphFeeds
from luvc.runtime.prefill import Prefill
from luvc.runtime.sampling import SamplingConfig, next_tokens
from luvc.runtime.sessions import Sessions, host_arrays


class RunningBatch:
    """Up to ``capacity`` rows generating together on ``sessions`` (which lends it its KV cache); each row is known
    by the member key it was admitted with."""

    def __init__(self, sessions: Sessions, feeds: GraphFeeds, capacity: int) -> None:
        self.sessions, self.feeds = sessions, feeds
        self.cache = sessions.kv_cache(capacity)
        self.cache.owner = self  # the cache now holds this batch's rows
        self.cache.clear_row()
        self.members: list[Hashable] = []
        self.samplings: list[SamplingConfig] = []
        self.generators: list[torch.Generator | None] = []
        device = sessions.device
        self.token = torch.zeros(capacity, dtype=torch.int64, device=device)
        rows = sessions.manifest.geometry.position_rows
        shape = (rows, capacity, 1) if rows == 3 else (capacity, 1)
        self.position = torch.zeros(shape, dtype=torch.int64, device=device)
        self.embeds: torch.Tensor | None = None  # (capacity, 1, hidden), of the embedding graph's dtype
        self.logits: torch.Tensor | None = None  # (capacity, vocab)
        self.counts: torch.Tensor | None = None  # (capacity, vocab) tokens generated per row, once a row has penalties

    @property
    def capacity(self) -> int:
        return self.cache.batch

    @property
    def size(self) -> int:
        """Rows running now."""
        return len(self.members)

    @property
    def free(self) -> int:
        """Rows that can still join."""
        return self.capacity - self.size

    def admit(self, prefill: Prefill, samplings: Sequence[SamplingConfig], members: Sequence[Hashable]) -> slice:
        """Put ``prefill``'s rows after the running ones, sampled by ``samplings`` (one per row) and known as
        ``members``; returns their rows. Their first tokens come from ``choose(prefill.outputs["logits"], rows)``."""
        batch = prefill.outputs["logits"].shape[0]
        if not len(samplings) == len(members) == batch:
            critical(
                f"Admitting {batch} rows needs a sampling and a member each; got {len(samplings)} and {len(members)}."
            )
        if batch > self.free:
            critical(f"{batch} rows do not fit a running batch with {self.free} free rows of {self.capacity}.")
        rows = slice(self.size, self.size + batch)
        with self.sessions.on_stream():
            self.cache.load(prefill.outputs, prefill.prompt_lengths, first_row=rows.start)
            self.position[..., rows, :].copy_(self.sessions.to_device(prefill.next_positions))
            self._allocate(prefill, samplings)
            if self.counts is not None:
                self.counts[rows].zero_()
        self.members.extend(members)
        self.samplings.extend(samplings)
        self.generators.extend(config.generator(self.sessions.device) for config in samplings)
        return rows

    def _allocate(self, prefill: Prefill, samplings: Sequence[SamplingConfig]) -> None:
        """The step buffers, made when the first rows join (their dtype and vocabulary are the graphs')."""
        device = self.sessions.device
        if self.embeds is None:
            embeds = prefill.feeds["inputs_embeds"]
            self.embeds = torch.empty(self.capacity, 1, embeds.shape[-1], dtype=embeds.dtype, device=device)
            logits = prefill.outputs["logits"]
            self.logits = torch.empty(self.capacity, logits.shape[-1], dtype=logits.dtype, device=device)
        if self.counts is None and any(config.penalized for config in samplings):
            self.counts = torch.zeros(self.capacity, self.logits.shape[-1], dtype=torch.float32, device=device)

    def choose(self, logits: torch.Tensor, rows: slice) -> torch.Tensor:
        """Choose the next token of each of ``rows`` from its ``logits`` row, by the row's own sampling and
        generator (exactly as it would be chosen alone), into ``token[rows]``; returns that view."""
        for index, row in enumerate(range(rows.start, rows.stop)):
            config = self.samplings[row]
            counts = self.counts[row : row + 1] if self.counts is not None and config.penalized else None
            next_tokens(logits[index : index + 1], config, self.generators[row], self.token[row : row + 1], counts)
        return self.token[rows]

    def decode(self, keep_feeds: bool = False) -> tuple[torch.Tensor, dict[str, np.ndarray] | None]:
        """One decode step of the running rows from their last tokens (``token``): the ``(size, vocab)`` logits on
        the device and, with ``keep_feeds``, the step's feeds on the host."""
        if self.cache.owner is not self:
            critical(
                "Another request on this pipeline has taken its KV cache since this one started; finish one request "
                "before starting the next, or give each concurrent request its own Pipeline."
            )
        size = self.size
        if not size:
            critical("A running batch with no rows has nothing to decode; admit rows first.")
        self.cache.check_room(size)
        with self.sessions.on_stream():
            embeds, logits = self.embeds[:size], self.logits[:size]
            self.feeds.embed(self.token[:size, None], out=embeds)
            position = self.position[..., :size, :]
            feeds = {"inputs_embeds": embeds, "position_ids": position, **self.cache.inputs(size)}
            recorded = host_arrays(feeds) if keep_feeds else None
            self.sessions["decode"].infer(feeds, targets={"logits": logits, **self.cache.targets(size)})
            self.cache.advance(size)
            position += 1
        return logits, recorded

    def step(self) -> np.ndarray:
        """One decode step and each running row's next token, ``(size,)`` on the host (the one copy per step)."""
        logits, _ = self.decode()
        return self.sessions.to_host(self.choose(logits, slice(0, self.size)))

    def leave(self, member: Hashable) -> None:
        """End ``member``'s row: the last running row moves into its place."""
        row, last = self.members.index(member), self.size - 1
        if row != last:
            with self.sessions.on_stream():
                self.cache.move_row(last, row)
                self.token[row] = self.token[last]
                self.position[..., row, :] = self.position[..., last, :]
                if self.counts is not None:
                    self.counts[row] = self.counts[last]
            self.members[row], self.samplings[row], self.generators[row] = (
                self.members[last],
                self.samplings[last],
                self.generators[last],
            )
        else:
            self.cache.clear_row(row)
        del self.members[last], self.samplings[last], self.generators[last]
