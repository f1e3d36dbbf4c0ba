"""Where a sliding-window layer's decode step starts attending (Gemma 3), tracked on the host.

A sliding layer's token sees the keys of the last ``window`` positions. The KV cache keeps every key a layer processed
(a window's worth and more, never a ring), so a decode step masks the slots whose keys the window has left: the first
``kv_window_start[l, b]`` slots of layer ``l``'s cache in row ``b`` (the decode graph's input; 0 in a global layer).
After SPU a layer's slots are not its positions: its kept visual tokens are some of the image's, the text after them
sits the pruned tokens further on. So the positions each slot holds are recorded from the prefill (its position ids
gathered as the graph's cuts gathered its tokens, ``prefill_key_positions``) and from each step, and the start is the
count of slots whose position the step's window has passed (positions rise with the slots).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

EMPTY = np.iinfo(np.int64).max  # a slot that holds no key: never behind a window


def layer_token_index(
    length: int,
    visual_index: np.ndarray | None,
    kept: dict[int, np.ndarray],
    prune_layers: Sequence[int],
    layer: int,
) -> np.ndarray:
    """``(B, S_l)``: the prompt index of each token that entered decoder layer ``layer``, in order: every text token
    and the visual tokens (``visual_index (B, n)``, each row's) that the last cut before it kept (``kept[c] (B, k)``,
    indices into the visual tokens; a cut missing from ``kept`` kept none; ``None``: a prompt without visuals)."""
    batch = 1 if visual_index is None else visual_index.shape[0]
    index = np.broadcast_to(np.arange(length), (batch, length))
    cuts = [cut for cut in prune_layers if cut <= layer]
    if visual_index is None or not cuts:
        return index
    cut = max(cuts)
    keep = np.ones((batch, length), dtype=bool)
    np.put_along_axis(keep, visual_index, False, axis=1)
    if cut in kept:
        np.put_along_axis(keep, np.take_along_axis(visual_index, kept[cut], axis=1), True, axis=1)
    return index[keep].reshape(batch, -1)


def prefill_key_positions(
    position_ids: np.ndarray,
    visual_index: np.ndarray | None,
    kept: dict[int, np.ndarray],
    prune_layers: Sequence[int],
    layers: Collection[int],
) -> dict[int, np.ndarray]:
    """Each of ``layers``' ``(B, S_l)`` key positions after a prefill with ``position_ids (B, S)`` (1-D positions):
    the positions of the tokens that entered it (``layer_token_index``)."""
    found = {}
    for layer in layers:
        index = layer_token_index(position_ids.shape[1], visual_index, kept, prune_layers, layer)
        found[layer] = np.take_along_axis(
            position_ids, np.broadcast_to(index, (position_ids.shape[0], index.shape[1])), 1
        )
    return found


class WindowStarts:
    """The key positions of the sliding ``layers`` of caches of ``capacities`` slots (one per layer) for ``batch``
    rows, and the decode step's ``kv_window_start (layers, batch)`` on ``device`` computed from them
    (``for_step``)."""

    def __init__(self, window: int, layers: Sequence[int], capacities: Sequence[int], batch: int, device) -> None:
        self.window = window
        self.layers = list(layers)
        self.positions = np.full((len(self.layers), batch, max(capacities)), EMPTY, dtype=np.int64)
        self.next_position = np.zeros(batch, dtype=np.int64)  # each row's next token's
        self.starts = np.zeros((len(capacities), batch), dtype=np.int64)
        self.device_starts = torch.zeros(len(capacities), batch, dtype=torch.int64, device=device)

    def load(self, rows: slice, positions: dict[int, np.ndarray], held: np.ndarray) -> None:
        """Rows ``rows`` hold a prefill's keys at ``positions`` (``prefill_key_positions``), ``held[l, b]`` of them
        valid (a row padded on the right holds fewer)."""
        self.positions[:, rows] = EMPTY
        for slot, layer in enumerate(self.layers):
            found = positions[layer]
            for row, count in enumerate(held[layer]):
                self.positions[slot, rows.start + row, :count] = found[row, :count]
        first = self.layers[0]  # every layer's last key is the prompt's last token
        last = [positions[first][row, count - 1] for row, count in enumerate(held[first])]
        self.next_position[rows] = np.asarray(last, dtype=np.int64) + 1

    def advance(self, rows: int, held: np.ndarray) -> None:
        """A step wrote each of the first ``rows`` rows' next token at slot ``held[l, b]`` (the lengths before it)."""
        for slot, layer in enumerate(self.layers):
            self.positions[slot, np.arange(rows), held[layer, :rows]] = self.next_position[:rows]
        self.next_position[:rows] += 1

    def move_row(self, source: int, target: int) -> None:
        """Row ``source``'s positions go to row ``target`` (``source`` keeps them until cleared)."""
        self.positions[:, target] = self.positions[:, source]
        self.next_position[target] = self.next_position[source]

    def clear_row(self, row: int | slice = slice(None)) -> None:
        """Row ``row`` (default: every row) holds no keys."""
        self.positions[:, row] = EMPTY
        self.next_position[row] = 0

    def for_step(self, rows: int) -> torch.Tensor:
        """``(num_layers, rows)`` on the device: each layer's first slot the next step of each row attends to (the
        count of slots whose key is ``window`` or more positions before the step's token)."""
        edge = self.next_position[None, :rows, None] - self.window
        self.starts[self.layers, :rows] = np.count_nonzero(self.positions[:, :rows] <= edge, axis=2)
        self.device_starts[:, :rows].copy_(torch.from_numpy(self.starts[:, :rows]))
        return self.device_starts[:, :rows]
