"""Window attention of a Qwen2.5-VL encoder as one batched attention, for export.

Upstream attention splits the token sequence at ``cu_seqlens`` and runs one attention per window: traced, the graph
holds one attention per window per block (12,759 nodes for a 672x1008 bucket of a 3B-shaped encoder) and grows
with the image. A bucket's window layout is static, so here the tokens of every window are gathered into a padded
``(windows, heads, longest window, head_dim)`` batch, attended in one call with a key mask for the padding, and
scattered back: the graph has the same nodes for any number of windows, and the work stays per window.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Iterator

import numpy as np
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
)


@dataclasses.dataclass(frozen=True)
class WindowLayout:
    """Static windows of a token sequence: ``gather`` picks ``(windows * longest)`` tokens (padding repeats the
    window's first token), ``key_mask`` ``(windows, 1, 1, longest)`` marks real tokens, ``scatter`` puts each token's
    row of the batch back in sequence order."""

    gather: torch.Tensor
    scatter: torch.Tensor
    key_mask: torch.Tensor
    windows: int
    longest: int

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: np.ndarray | torch.Tensor) -> WindowLayout:
        bounds = np.asarray(cu_seqlens, dtype=np.int64)
        starts, lengths = bounds[:-1], np.diff(bounds)
        starts, lengths = starts[lengths > 0], lengths[lengths > 0]
        longest = int(lengths.max())
        offsets = np.arange(longest)
        valid = offsets[None, :] < lengths[:, None]
        gather = np.where(valid, starts[:, None] + offsets[None, :], starts[:, None])
        rows = np.flatnonzero(valid.reshape(-1))  # batch rows of the real tokens, in sequence order
        return cls(
            gather=torch.from_numpy(gather.reshape(-1)),
            scatter=torch.from_numpy(rows),
            key_mask=torch.from_numpy(valid[:, None, None, :]),
            windows=len(lengths),
            longest=longest,
        )


def batched_window_forward(
    self: Qwen2_5_VLVisionAttention,
    hidden_states: torch.Tensor,
    cu_seqlens: WindowLayout | torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs,
) -> torch.Tensor:
    """``Qwen2_5_VLVisionAttention.forward`` for ``cu_seqlens`` given as a ``WindowLayout``: the same projections and
    rotary embedding, the windows attended as one batch through the model's attention implementation."""
    if not isinstance(cu_seqlens, WindowLayout):
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, **kwargs)
    if position_embeddings is None:  # transformers 5 passes them; the batched windows cannot make their own
        raise ValueError("batched window attention needs the rotary position_embeddings")
    layout = cu_seqlens
    seq_length = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    gather = layout.gather.to(hidden_states.device)

    def windows(states: torch.Tensor) -> torch.Tensor:  # (N, H, d) -> (W, H, L, d)
        return states[gather].view(layout.windows, layout.longest, self.num_heads, -1).transpose(1, 2)

    mask = torch.zeros(layout.key_mask.shape, dtype=query.dtype, device=query.device)
    mask = mask.masked_fill(~layout.key_mask.to(query.device), torch.finfo(query.dtype).min)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, _ = attention(
        self, windows(query), windows(key), windows(value), attention_mask=mask, scaling=self.scaling, dropout=0.0
    )  # (W, L, H, d)
    output = output.reshape(layout.windows * layout.longest, -1)[layout.scatter.to(output.device)]
    return self.proj(output)


@contextlib.contextmanager
def batched_windows(encoder: torch.nn.Module) -> Iterator[None]:
    """While active, the encoder's window-attention modules take a ``WindowLayout`` as ``cu_seqlens``."""
    modules = [module for module in encoder.modules() if isinstance(module, Qwen2_5_VLVisionAttention)]
    for module in modules:
        module.__dict__["forward"] = types.MethodType(batched_window_forward, module)  # this instance's forward
    try:
        yield
    finally:
        for module in modules:
            del module.forward
