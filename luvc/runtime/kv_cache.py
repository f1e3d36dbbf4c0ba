"""Per-layer KV caches of different lengths, preallocated once per request.

Each layer's key and value live in two flat buffers sized for the longest length that layer reaches in the request
(its prompt length plus every new token). A decode step reads the past from one buffer and writes the present into
the other (ping-pong), so nothing is allocated per step: a ``(B, H, n, D)`` tensor is the contiguous prefix of a
flat buffer.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    """Keys and values of ``num_layers`` layers; ``lengths[l]`` tokens are held by layer ``l``."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, max_lengths: list[int], dtype) -> None:
        self.shape = (batch, kv_heads, head_dim)
        self.max_lengths = list(max_lengths)
        self.dtype = np.dtype(dtype)
        row = batch * kv_heads * head_dim
        self.buffers = [
            [[np.empty(row * length, self.dtype) for _ in range(2)] for _kind in ("key", "value")]
            for length in self.max_lengths
        ]
        self.lengths = [0] * len(self.max_lengths)
        self.current = 0

    def _view(self, layer: int, kind: int, side: int, length: int) -> np.ndarray:
        batch, heads, head_dim = self.shape
        flat = self.buffers[layer][kind][side]
        return flat[: batch * heads * length * head_dim].reshape(batch, heads, length, head_dim)

    def load(self, presents: dict[str, np.ndarray]) -> None:
        """Copy the prefill's ``present.{l}.key/value`` in (the only copy of a request)."""
        for layer in range(len(self.lengths)):
            length = presents[f"present.{layer}.key"].shape[2]
            if length > self.max_lengths[layer]:
                raise ValueError(f"layer {layer} holds {length} tokens, more than its {self.max_lengths[layer]}")
            for kind, name in enumerate(("key", "value")):
                self._view(layer, kind, self.current, length)[...] = presents[f"present.{layer}.{name}"]
            self.lengths[layer] = length

    def past(self) -> dict[str, np.ndarray]:
        """``past_key_values.{l}.key/value`` views of what each layer holds."""
        return {
            f"past_key_values.{layer}.{name}": self._view(layer, kind, self.current, self.lengths[layer])
            for layer in range(len(self.lengths))
            for kind, name in enumerate(("key", "value"))
        }

    def present_targets(self) -> dict[str, np.ndarray]:
        """``present.{l}.key/value`` views, one token longer, in the other buffer: where a decode step writes."""
        return {
            f"present.{layer}.{name}": self._view(layer, kind, 1 - self.current, self.lengths[layer] + 1)
            for layer in range(len(self.lengths))
            for kind, name in enumerate(("key", "value"))
        }

    def advance(self) -> None:
        """The decode step wrote the present: it becomes the past."""
        self.current = 1 - self.current
        self.lengths = [length + 1 for length in self.lengths]

    def nbytes(self) -> int:
        """Bytes of keys and values held now (what the cost model counts)."""
        batch, heads, head_dim = self.shape
        return 2 * sum(self.lengths) * batch * heads * head_dim * self.dtype.itemsize
