"""The language-model graphs as exportable modules: token embedding, prefill (with SPU) and one decode step.

They call the patched model's own modules, so an exported graph runs exactly the PyTorch LUVC code path. The
prefill outputs one key and one value per layer, each of its own length (text plus that layer's visual budget). The
decode step takes every layer's cache at a fixed capacity, writes its key/value in place at the layer's write index
(``luvc.export.kv_update``) and attends over a window of the cache that the runtime sizes to the valid prefix (the
``attention_window`` input's length), masking what the window holds beyond it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from luvc.compress.budgets import BudgetPlan
from luvc.export.kv_update import kv_cache_update, kv_window, window_length
from luvc.models.base import VLMAdapter
from luvc.models.cache import LuvcCache
from luvc.models.decoder import VisualPlan


class GraphCache(LuvcCache):
    """A ``LuvcCache`` for the prefill graph: starts empty and records each layer's present key and value, or, in a
    linear-attention layer, its convolution state (the last ``conv_kernel_size`` inputs of its convolution, zeros
    before the first) and its recurrent state."""

    def __init__(self) -> None:
        super().__init__()
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.conv: dict[int, torch.Tensor] = {}  # a linear-attention layer's, until its recurrent state comes

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.present[layer_idx] = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return None  # a prefill: no state before it

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return None

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    def update_conv_state(self, conv_states, layer_idx, state_idx=0, conv_kernel_size=None, **kwargs):
        width = conv_states.shape[-1] if conv_kernel_size is None else conv_kernel_size
        self.conv[layer_idx] = F.pad(conv_states, (max(width - conv_states.shape[-1], 0), 0))[..., -width:]
        return conv_states

    def update_recurrent_state(self, recurrent_states, layer_idx, state_idx=0, **kwargs):
        self.present[layer_idx] = (self.conv.pop(layer_idx), recurrent_states)
        return recurrent_states

    def flat_present(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for layer in sorted(self.present) for t in self.present[layer])


class InPlaceGraphCache(GraphCache):
    """A ``LuvcCache`` for the decode graph: each layer's fixed-capacity ``(B, H, C_l, D)`` cache gets the step's
    key/value written at ``write_index[l, b]`` for row ``b`` (``kv_cache_update``); attention reads the first
    ``min(W, C_l)`` tokens (``W``: the length of ``window``, ``kv_window``) and sees only each row's valid prefix of
    them, from ``window_start[l, b]`` on where a sliding window has left the first keys behind (``None``: from the
    first). A linear-attention layer's ``past`` pair is its convolution and recurrent states, both of fixed size: the
    step's are new tensors of the same shapes."""

    def __init__(
        self,
        past: Sequence[tuple[torch.Tensor, torch.Tensor]],
        write_index: torch.Tensor,
        window: torch.Tensor,
        window_start: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.past = list(past)
        self.write_index = write_index
        self.window = window
        self.window_start = window_start

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        past_key, past_value = self.past[layer_idx]
        rows = self.write_index[layer_idx]
        present = (kv_cache_update(past_key, key_states, rows), kv_cache_update(past_value, value_states, rows))
        self.present[layer_idx] = present
        return kv_window(present[0], self.window), kv_window(present[1], self.window)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.past[layer_idx][0].shape[-2]

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        # the layer shifts the step's input into the window in place: a copy, which becomes the present state
        self.conv[layer_idx] = self.past[layer_idx][0].clone()
        return self.conv[layer_idx]

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return self.past[layer_idx][1]

    def attention_mask(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """Additive ``(B, 1, 1, min(W, C_l))`` mask over the window: 0 for each row's cached tokens and the one just
        written (from its window start on), -inf-like elsewhere."""
        length = window_length(self.window, self.past[layer_idx][0])
        slots = torch.arange(length, device=hidden.device)[None, :]
        valid = slots <= self.write_index[layer_idx][:, None]
        if self.window_start is not None:
            valid = valid & (slots >= self.window_start[layer_idx][:, None])
        blocked = torch.full((), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        mask = torch.where(valid, torch.zeros((), dtype=hidden.dtype, device=hidden.device), blocked)
        return mask.view(hidden.shape[0], 1, 1, length)


def kept_index_layers(plan: BudgetPlan | None) -> list[int]:
    """Layers whose kept visual indices the prefill graph outputs: every SPU layer that keeps at least one token
    (a layer that keeps none would output an empty tensor; a prompt without visuals has no plan and none)."""
    return [] if plan is None else [layer for layer in plan.prune_layers() if plan.total[layer] > 0]


class EmbedGraph(nn.Module):
    """``input_ids (B, S)`` -> ``inputs_embeds (B, S, D)``: the token embedding table alone, shared by prefill and
    decode (the image features replace the placeholder rows on the host)."""

    def __init__(self, adapter: VLMAdapter) -> None:
        super().__init__()
        self.embed_tokens = adapter.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def deepstack_names(count: int) -> list[str]:
    """Names of the DeepStack planes (Qwen3-VL): vision-graph outputs and prefill-graph inputs."""
    return [f"deepstack.{index}" for index in range(count)]


def last_rows(hidden: torch.Tensor, prompt_lengths: torch.Tensor, removed: int) -> torch.Tensor:
    """``(B, D)``: each row's last prompt token of ``hidden (B, S', D)``, whose rows hold ``prompt_lengths (B,)``
    tokens (then padding on the right) less the ``removed`` visual tokens pruned before it."""
    index = (prompt_lengths - 1 - removed).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return torch.gather(hidden, 1, index)[:, 0]


class PrefillGraph(nn.Module):
    """``inputs_embeds (B, S, D)``, ``position_ids``, ``prompt_lengths (B,)``, ``visual_shift (B,)`` (and Qwen3-VL's
    ``deepstack.{k} (B, n, D)``) -> each row's last-token ``logits (B, V)`` (float32), every layer's present
    key/value (a linear-attention layer's convolution and recurrent states, each row's at its last token), and the
    kept visual indices of every layer where SPU prunes.

    The visual tokens of a row sit at ``spans`` (``(start, tokens)``: one per image, or per temporal slice of a
    Qwen3-VL video) moved by the row's ``visual_shift`` (the text before them has any length; ``shifts=False``, for
    the SpectrumPrune plugin: they sit at ``spans``, and the graph has no ``visual_shift`` input); the text after them
    has any length, and a row shorter than ``S`` is padded on the right (``prompt_lengths``: each row's tokens; its
    KV holds padding after them). Budgets are the frozen integers of ``budget_plan`` (one image or video per row);
    ``span_grids`` are the spans' token grids (``spu_lowpass="grid"``). Without spans and a plan it is the text
    prefill: a prompt without visuals, nothing pruned."""

    def __init__(
        self,
        adapter: VLMAdapter,
        spans: Sequence[tuple[int, int]],
        budget_plan: BudgetPlan | None,
        span_grids: Sequence[tuple[int, int, int]] | None = None,
        shifts: bool = True,
    ) -> None:
        super().__init__()
        self.language_model = adapter.language_model
        self.lm_head = adapter.model.lm_head
        self.spans = tuple(spans)
        self.budget_plan = budget_plan
        self.span_grids = None if span_grids is None else tuple(span_grids)
        self.shifts = shifts

    def forward(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, prompt_lengths: torch.Tensor, *rest: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        visual_shift, deepstack = (rest[0], rest[1:]) if self.shifts else (None, rest)
        cache = GraphCache()
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            visual=VisualPlan(
                self.spans, self.budget_plan, deepstack, None, self.span_grids, visual_shift, prompt_lengths
            ),
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(last_rows(hidden, prompt_lengths, inputs_embeds.shape[1] - hidden.shape[1])).float()
        kept = tuple(outputs.kept_visual_indices[layer] for layer in kept_index_layers(self.budget_plan))
        return (logits, *cache.flat_present(), *kept)


CACHED_ATTENTION = "luvc_cached"


def cached_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of a decode step over a fixed-capacity cache, the KV heads not repeated: ``query (B, H, L, D)``
    against ``key``/``value (B, H_kv, C, D)`` with the additive ``(B, 1, 1, C)`` mask -> ``(B, L, H, D)``.

    Grouped-query models share each KV head among ``H / H_kv`` query heads; the stock paths repeat the cache to
    ``H`` heads (a copy of the whole cache, times the group size, per layer and step) whenever a mask is given. Here
    the query heads of a group are stacked along the sequence axis instead, so the cache is only read."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * length, dim)  # head h uses KV head h // groups
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(probs, value).reshape(batch, heads, length, dim)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(CACHED_ATTENTION, cached_attention)


@contextlib.contextmanager
def attention_implementation(config, name: str) -> Iterator[None]:
    """Run the language model with attention implementation ``name`` (while tracing a graph)."""
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


class DecodeGraph(nn.Module):
    """One step: ``inputs_embeds (B, 1, D)``, ``position_ids``, ``kv_write_index (L, B)`` (tokens each layer's cache
    holds for each row before the step), ``attention_window (W,)`` (only its length is read: attention covers the first
    ``min(W, C_l)`` tokens of layer ``l``; ``W`` must exceed every write index), for a model with sliding-window
    layers ``kv_window_start (L, B)`` (each layer's first cache slot the step attends to: the slots before it hold keys
    the window has left; 0 in a global layer) and every layer's cache at its fixed capacity -> ``logits (B, V)``
    (float32) and every layer's cache with the step's key/value written at its write index (bind it to the input's
    buffer); a linear-attention layer takes and gives its two states instead. Attention reads the cache without
    repeating its KV heads (``cached_attention``)."""

    def __init__(self, adapter: VLMAdapter) -> None:
        super().__init__()
        self.language_model = adapter.language_model
        self.lm_head = adapter.model.lm_head
        self.takes_window_start = bool(adapter.sliding_layers)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        kv_write_index: torch.Tensor,
        attention_window: torch.Tensor,
        *rest: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        window_start, past = (rest[0], rest[1:]) if self.takes_window_start else (None, rest)
        cache = InPlaceGraphCache(list(zip(past[0::2], past[1::2])), kv_write_index, attention_window, window_start)
        with attention_implementation(self.language_model.config, CACHED_ATTENTION):
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, position_ids=position_ids, past_key_values=cache, use_cache=True
            )
        logits = self.lm_head(outputs.last_hidden_state[:, -1]).float()
        return (logits, *cache.flat_present())
