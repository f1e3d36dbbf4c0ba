"""Per-layer KV caches of fixed capacities on the pipeline's device, updated in place by the decode graph.

Layer ``l`` keeps its keys and values in two ``(B, H, capacity[l], D)`` tensors, allocated once per batch size and
reused by every request. The prefill's ``present`` tensors are copied into their prefix (the only copy of a
request); each decode step binds the same tensors as the graph's ``past`` inputs and ``present`` outputs, so the
graph writes the step's key/value at ``write_index[l]`` in place and nothing else moves. ``write_index`` lives on
the device and is advanced there.

Attention reads only a window of each cache (``luvc.export.kv_update.kv_window``): ``attention_window`` is a view of
one device tensor whose length is the longest valid prefix of any layer after the step, rounded up to 64 tokens
(``luvc.engines.static_shapes.attention_window_length``: an engine sees a new shape once per 64 tokens), at most the
largest capacity. A
short answer to a short prompt then costs its own length, not ``--max-text-tokens`` + ``--max-new-tokens``.

``aliased=False`` keeps a second set of buffers instead and alternates between them (``present`` written into the
other set): for a TensorRT 10.3 engine of the ``scatter-elements`` form, whose output may not share memory with its
input. The graph then copies the cache on the device each step; nothing crosses to the host either way.

A model with sliding-window layers (Gemma 3) also feeds each layer's first slot a step attends to
(``kv_window_start``), computed on the host from the positions its slots hold (``luvc.runtime.sliding_window``).

A hybrid model's linear-attention layers (Qwen3.5) keep no keys and values but two fixed-size states per row, its
convolution state and its recurrent state (float32), which the decode step reads whole and gives anew: they always
alternate between two sets (a step's output never overwrites what it reads), the attention layers' buffers shared by
both sets where they are aliased.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from luvc.engines.static_shapes import attention_window_length
from luvc.errors import critical
from luvc.export.manifest_entries import kv_names
from luvc.runtime.sliding_window import WindowStarts


@dataclasses.dataclass(frozen=True)
class KVLayout:
    """The shape of a decode graph's KV cache: ``kv_heads`` heads of ``head_dim`` per token, each layer's capacity in
    tokens (``capacities``), in ``dtype``; a hybrid model's ``linear_layers`` hold one row's ``conv_state_shape`` (in
    ``dtype``) and ``recurrent_state_shape`` (float32) instead; ``sliding_layers`` see the last ``sliding_window``
    positions only."""

    kv_heads: int
    head_dim: int
    capacities: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    linear_layers: frozenset[int] = frozenset()
    conv_state_shape: tuple[int, ...] = ()
    recurrent_state_shape: tuple[int, ...] = ()
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()

    def names(self, prefix: str) -> list[str]:
        """The decode graph's cache tensors under ``prefix``, two per layer in layer order."""
        return kv_names(prefix, len(self.capacities), self.linear_layers)

    def layer_buffers(self, layer: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s two zeroed buffers for ``batch`` rows."""
        if layer in self.linear_layers:
            conv = torch.zeros(batch, *self.conv_state_shape, dtype=self.dtype, device=device)
            return conv, torch.zeros(batch, *self.recurrent_state_shape, dtype=torch.float32, device=device)
        shape = (batch, self.kv_heads, self.capacities[layer], self.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=device), torch.zeros(shape, dtype=self.dtype, device=device)


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """The decode step's own input and output beside the cache: ``inputs_embeds (B, 1, hidden)`` in ``embeds_dtype``
    and ``logits (B, vocab)`` in ``logits_dtype``."""

    hidden: int
    embeds_dtype: torch.dtype
    vocab: int
    logits_dtype: torch.dtype


class KVCache:
    """Keys and values of ``len(layout.capacities)`` layers for ``batch`` rows; ``lengths[l]`` tokens are held by
    layer ``l``. With a ``step`` layout it also owns the decode step's embeddings and logits buffers (``embeds``,
    ``logits``): one owner for every buffer a step binds, reused by every request of this batch size, so a replayed
    step binds them as they are (``luvc.engines.static_shapes.replay_bound``)."""

    def __init__(
        self,
        batch: int,
        layout: KVLayout,
        device: torch.device | str = "cpu",
        aliased: bool = True,
        step: StepLayout | None = None,
    ) -> None:
        self.layout = layout
        self.capacities = list(layout.capacities)
        layers = range(len(self.capacities))
        first = [layout.layer_buffers(layer, batch, device) for layer in layers]
        self.sets = [first]
        if not aliased or layout.linear_layers:  # the other set: states always, keys and values where not aliased
            shared = [aliased and layer not in layout.linear_layers for layer in layers]
            self.sets.append(
                [first[layer] if shared[layer] else layout.layer_buffers(layer, batch, device) for layer in layers]
            )
        self.current = 0
        self.write_index = torch.zeros(len(self.capacities), batch, dtype=torch.int64, device=device)
        self.window = torch.zeros(max(self.capacities), dtype=torch.bool, device=device)  # only its views' lengths
        self.row_lengths = np.zeros((len(self.capacities), batch), dtype=np.int64)  # each row's, per layer
        self._attending = np.array([layer not in layout.linear_layers for layer in layers])
        self.sliding: WindowStarts | None = None  # where each sliding layer's step starts attending
        if layout.sliding_layers and layout.sliding_window is not None:
            self.sliding = WindowStarts(layout.sliding_window, layout.sliding_layers, self.capacities, batch, device)
        self.owner: object | None = None  # the request whose tokens the cache holds now
        self.embeds: torch.Tensor | None = None  # (batch, 1, hidden): the step's input, written by the embedding graph
        self.logits: torch.Tensor | None = None  # (batch, vocab): the step's output
        if step is not None:
            self.embeds = torch.empty(batch, 1, step.hidden, dtype=step.embeds_dtype, device=device)
            self.logits = torch.empty(batch, step.vocab, dtype=step.logits_dtype, device=device)

    @property
    def buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's ``(key, value)`` buffers (a linear-attention layer's ``(conv, recurrent)`` states) that hold
        the cache now."""
        return self.sets[self.current]

    def load(
        self,
        presents: dict[str, torch.Tensor],
        prompt_lengths: np.ndarray | None = None,
        first_row: int = 0,
        sequence_length: int | None = None,
        key_positions: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Copy the prefill's ``present.{l}.key/value`` into each layer's prefix of the rows from ``first_row`` on
        (as many as the prefill has; the other rows keep theirs); ``prompt_lengths (b,)``: each row's prompt tokens,
        when rows were padded on the right (their padding is overwritten by the steps after it and never attended)
        to the prefill's ``sequence_length`` (default: the longest row); ``key_positions``: each sliding layer's
        ``(b, S_l)`` positions of those keys (``luvc.runtime.sliding_window.prefill_key_positions``)."""
        if self.sliding is not None and key_positions is None:
            raise ValueError("a cache with sliding-window layers loads the positions of their keys too")
        names = self.layout.names("present")
        batch = presents[names[0]].shape[0]
        rows = slice(first_row, first_row + batch)
        if rows.stop > self.batch:
            critical(f"The KV cache holds {self.batch} rows; rows {first_row}..{rows.stop - 1} do not fit.")
        lengths = []  # the prefill's, per layer: the longest row's (0 for a state layer)
        for layer, pair in enumerate(self.buffers):
            presents_of_layer = [presents[name] for name in names[2 * layer : 2 * layer + 2]]
            if layer in self.layout.linear_layers:  # each row's states at its own last token
                for buffer, present in zip(pair, presents_of_layer):
                    buffer[rows].copy_(present)
                lengths.append(0)
                continue
            length = presents_of_layer[0].shape[2]
            if length > self.capacities[layer]:
                critical(
                    f"Layer {layer}'s prompt holds {length} tokens, more than its KV capacity "
                    f"{self.capacities[layer]}; shorten the prompt or re-export with a larger --max-text-tokens."
                )
            for buffer, present in zip(pair, presents_of_layer):
                buffer[rows, :, :length].copy_(present)
            lengths.append(length)
        padding = np.zeros(batch, dtype=np.int64)
        if prompt_lengths is not None:
            width = int(np.max(prompt_lengths)) if sequence_length is None else sequence_length
            padding = width - np.asarray(prompt_lengths, dtype=np.int64)
        held = np.asarray(lengths, dtype=np.int64)[:, None] - padding[None, :]
        self.row_lengths[:, rows] = np.where(self._attending[:, None], held, 0)
        self.write_index[:, rows].copy_(torch.from_numpy(self.row_lengths[:, rows]))
        if self.sliding is not None and key_positions is not None:
            self.sliding.load(rows, key_positions, self.row_lengths[:, rows])

    @property
    def batch(self) -> int:
        """Rows the buffers hold."""
        return self.write_index.shape[1]

    def move_row(self, source: int, target: int) -> None:
        """Put row ``source``'s keys, values (or states) and lengths in row ``target`` (which is given up) and empty
        ``source``: a running batch keeps its rows first (``luvc.runtime.running_batch``)."""
        longest = int(self.row_lengths[:, source].max())
        for layer, pair in enumerate(self.buffers):
            for buffer in pair:
                if layer in self.layout.linear_layers:
                    buffer[target].copy_(buffer[source])
                else:
                    buffer[target, :, :longest].copy_(buffer[source, :, :longest])
        self.row_lengths[:, target] = self.row_lengths[:, source]
        self.write_index[:, target].copy_(self.write_index[:, source])
        if self.sliding is not None:
            self.sliding.move_row(source, target)
        self.clear_row(source)

    def clear_row(self, row: int | slice = slice(None)) -> None:
        """Row ``row`` (default: every row) holds nothing (its buffers keep stale values that no step attends)."""
        self.row_lengths[:, row] = 0
        self.write_index[:, row] = 0
        if self.sliding is not None:
            self.sliding.clear_row(row)

    def _names(self, prefix: str, buffers) -> dict[str, torch.Tensor]:
        return dict(zip(self.layout.names(prefix), (tensor for pair in buffers for tensor in pair)))

    def inputs(self, rows: int | None = None) -> dict[str, torch.Tensor]:
        """The decode graph's cache inputs for the first ``rows`` rows (default: all): the write index, the attention
        window, with sliding-window layers where each layer's step starts attending (set on the device for the step)
        and every layer's ``past`` buffers."""
        rows = self.batch if rows is None else rows
        window = self.window[: attention_window_length(int(self.row_lengths[:, :rows].max()) + 1, len(self.window))]
        starts = {} if self.sliding is None else {"kv_window_start": self.sliding.for_step(rows)}
        return {
            "kv_write_index": self.write_index[:, :rows],
            "attention_window": window,
            **starts,
            **self._names("past_key_values", self._rows(self.buffers, rows)),
        }

    def targets(self, rows: int | None = None) -> dict[str, torch.Tensor]:
        """The decode graph's ``present`` outputs for the first ``rows`` rows: the very buffers fed as ``past`` (or
        the other set)."""
        rows = self.batch if rows is None else rows
        return self._names("present", self._rows(self.sets[(self.current + 1) % len(self.sets)], rows))

    @staticmethod
    def _rows(buffers, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``rows`` rows of each layer's buffers (contiguous views)."""
        return [(key[:rows], value[:rows]) for key, value in buffers]

    def check_room(self, rows: int | None = None) -> None:
        """Refuse a step that would write past a layer's capacity (it would overwrite the last token)."""
        rows = self.batch if rows is None else rows
        lengths = self.row_lengths[:, :rows].max(axis=1)
        full = [
            layer
            for layer, (length, cap) in enumerate(zip(lengths, self.capacities))
            if length >= cap and self._attending[layer]
        ]
        if full:
            critical(
                f"The KV cache of layer {full[0]} is full ({self.capacities[full[0]]} tokens); one more token does "
                "not fit. Generate fewer tokens or re-export with a larger --max-new-tokens."
            )

    def advance(self, rows: int | None = None) -> None:
        """A decode step wrote one token into every layer of the first ``rows`` rows (default: all; and, unaliased,
        those rows into the other set)."""
        rows = self.batch if rows is None else rows
        if self.sliding is not None:
            self.sliding.advance(rows, self.row_lengths)
        self.row_lengths[self._attending, :rows] += 1  # a state layer holds no tokens
        self.write_index[:, :rows] += 1  # (a state layer's is never read)
        self.current = (self.current + 1) % len(self.sets)

    @property
    def lengths(self) -> list[int]:
        """Tokens each layer holds for its longest row (a shorter row's padding counted)."""
        return self.row_lengths.max(axis=1).tolist()

    def valid(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s cached keys and values, ``(B, H, lengths[layer], D)`` views (a shorter row's padding
        included)."""
        key, value = self.buffers[layer]
        return key[:, :, : self.lengths[layer]], value[:, :, : self.lengths[layer]]

    def nbytes(self) -> int:
        """Bytes of the keys and values the rows hold now and, in a hybrid model, of their states (what the cost model
        counts)."""
        attending = [layer for layer in range(len(self.capacities)) if self._attending[layer]]
        key = self.buffers[attending[0]][0]
        per_token = 2 * key.shape[1] * key.shape[3] * key.element_size()
        rows = int(np.count_nonzero(self.row_lengths[attending].max(axis=0)))  # rows that hold a prompt
        states = sum(
            t[0].numel() * t.element_size() for layer in self.layout.linear_layers for t in self.buffers[layer]
        )
        return per_token * int(self.row_lengths.sum()) + rows * states

    def capacity_bytes(self) -> int:
        """Bytes the keys and values (or states) take on the device (a buffer that both sets share once)."""
        buffers = {id(t): t for pair_set in self.sets for pair in pair_set for t in pair}
        return sum(t.numel() * t.element_size() for t in buffers.values())

    def step_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode step's ``(embeds, logits)`` buffers (a cache made with a step layout)."""
        if self.embeds is None or self.logits is None:
            raise RuntimeError("this KV cache was made without the decode step's buffers (no StepLayout)")
        return self.embeds, self.logits
