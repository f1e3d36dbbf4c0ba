"""``LuvcCache``: a ``DynamicCache`` whose layers hold different lengths, plus the request's position state."""

from __future__ import annotations

import torch
from transformers import DynamicCache


class LuvcCache(DynamicCache):
    """Per-layer KV cache for a LUVC-compressed model.

    Each layer caches only the tokens it processed, so layer 0 may hold the whole prompt and the last layer
    text only. Positions never come from a cache length: ``num_positions`` counts the tokens of the *original*
    (uncompressed) sequence seen so far, and decode positions continue from it. ``rope_deltas`` holds the M-RoPE
    offset of each batch row (Qwen-VL families) for the request, instead of storing it on the model.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_positions = 0
        self.rope_deltas: torch.Tensor | None = None

    def layer_lengths(self) -> list[int]:
        """Cached tokens per decoder layer."""
        return [layer.get_seq_length() for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes held by keys and values over all layers."""
        total = 0
        for layer in self.layers:
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def attention_mask(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """Additive mask layer ``layer_idx`` attends with in a one-token step, or ``None`` when every cached token
        is valid (caches that hold a fixed capacity return one)."""
        return None
