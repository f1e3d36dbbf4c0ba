"""``LuvcCache``: a ``DynamicCache`` whose layers hold different lengths, plus the request's position state;
``new_cache`` makes one for a language model (state layers where it has linear attention, Qwen3.5)."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin


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
        self.key_positions: dict[int, torch.Tensor] = {}  # per layer, where a family's masks read distances

    def layer_lengths(self) -> list[int]:
        """Cached tokens per decoder layer (0 for a linear-attention layer: it keeps fixed-size states, no tokens)."""
        return [layer.get_seq_length() if isinstance(layer, CacheLayerMixin) else 0 for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes held over all layers: keys and values, and a linear-attention layer's convolution and recurrent
        states."""
        total = 0
        for layer in self.layers:
            held = [getattr(layer, "keys", None), getattr(layer, "values", None)]
            for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
                # a linear-attention layer's (transformers' LinearAttentionCacheLayerMixin, from the release that
                # added Qwen3.5), by state index
                held += states.values() if isinstance(states, dict) else []
            total += sum(tensor.numel() * tensor.element_size() for tensor in held if isinstance(tensor, torch.Tensor))
        return total

    def lay_out(self, text_config) -> None:
        """Give an empty cache made without a config (``LuvcCache()``) the layers a hybrid language model of
        ``text_config`` needs (``new_cache``); any other cache is left as it is."""
        if not self.layers and is_hybrid(text_config):
            self.layers = new_cache(text_config).layers

    def held_positions(self, layer_idx: int, positions: torch.Tensor) -> torch.Tensor:
        """Record that layer ``layer_idx`` caches tokens at request ``positions`` ``(B, S)``; return the positions of
        every key it then holds, ``(B, keys)`` (a sliding-window mask reads them, Gemma 3)."""
        held = self.key_positions.get(layer_idx)
        held = positions if held is None else torch.cat([held, positions], dim=1)
        self.key_positions[layer_idx] = held
        return held

    def attention_mask(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """Additive mask layer ``layer_idx`` attends with in a one-token step, or ``None`` when every cached token
        is valid (caches that hold a fixed capacity return one)."""
        return None


LINEAR_ATTENTION = "linear_attention"  # a layer type of a hybrid language model's config (Qwen3.5)


def linear_layers(text_config) -> frozenset[int]:
    """The linear-attention layers of a language model of ``text_config`` (none where every layer attends)."""
    layer_types = getattr(text_config, "layer_types", None) or ()
    return frozenset(index for index, kind in enumerate(layer_types) if kind == LINEAR_ATTENTION)


def is_hybrid(text_config) -> bool:
    """Whether a language model of ``text_config`` has linear-attention layers beside its attention layers."""
    return bool(linear_layers(text_config))


def new_cache(text_config) -> LuvcCache:
    """An empty cache for a language model of ``text_config``: a hybrid one's linear-attention layers get state layers
    (a convolution state and a recurrent state each), every other layer a key-value layer made on first use."""
    return LuvcCache(config=text_config) if is_hybrid(text_config) else LuvcCache()
