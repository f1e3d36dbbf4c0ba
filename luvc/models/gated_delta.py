"""The chunked gated delta rule (Gated DeltaNet, Qwen3.5's linear attention) as an exported graph computes it.

Within a chunk of ``C`` tokens the rule needs ``T = (I + L)^-1`` for the strictly lower triangular ``L`` of the chunk's
rate-weighted, decayed key products. transformers solves it with ``torch.linalg.solve_triangular``, which has no ONNX
form, and while exporting falls back to forward substitution: ``C - 1`` dependent row updates per chunk and layer,
each a handful of graph nodes (about 500 per chunk of 64, traced slowly and run as that many small kernels). Here
``N = -L`` is nilpotent (``N^C = 0``), so ``T = I + N + ... + N^(C-1) = (I + N)(I + N^2)(I + N^4)...(I + N^(C/2))``:
``log2(C)`` squarings and products, a dozen matrix products for 64 tokens, batched over every chunk and head.

``chunk_gated_delta_rule`` has the signature and results of transformers' ``torch_chunk_gated_delta_rule`` (its
``chunk_size`` padding is state-neutral: a zero rate and a zero log-decay leave the state as it was), and
``traced_by_squaring`` puts it in that one's place while a graph is traced.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def unit_lower_inverse(strict: torch.Tensor) -> torch.Tensor:
    """``(I + strict)^-1`` for ``strict (..., n, n)`` strictly lower triangular, by repeated squaring of ``-strict``."""
    size = strict.shape[-1]
    power = -strict
    inverse = torch.eye(size, dtype=strict.dtype, device=strict.device) + power
    for _ in range(max(math.ceil(math.log2(size)) - 1, 0)):
        power = power @ power
        inverse = inverse + power @ inverse
    return inverse


def _l2_normalized(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)


def chunk_gated_delta_rule(  # noqa: PLR0913 - transformers' signature, called in its place
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``query``/``key (B, S, Hk, Dk)``, ``value (B, S, Hv, Dv)``, log-decay ``g`` and rate ``beta (B, S, Hv)`` ->
    the output ``(B, S, Hv, Dv)`` in ``query``'s dtype and, with ``output_final_state``, the state
    ``(B, Hv, Dk, Dv)`` (float32), computed chunk by chunk from ``initial_state``."""
    dtype = query.dtype
    batch, length, key_heads, key_dim = key.shape
    value_heads, value_dim = value.shape[-2:]
    if key_heads != value_heads:  # each key head serves consecutive value heads
        query = query.repeat_interleave(value_heads // key_heads, dim=2)
        key = key.repeat_interleave(value_heads // key_heads, dim=2)
    query, key, value, beta, g = (x.transpose(1, 2).float() for x in (query, key, value, beta, g))
    if use_qk_l2norm_in_kernel:
        query, key = _l2_normalized(query), _l2_normalized(key)
    query = query * key_dim**-0.5
    padding = -length % chunk_size
    query, key, value = (F.pad(x, (0, 0, 0, padding)) for x in (query, key, value))
    beta, g = (F.pad(x, (0, padding)) for x in (beta, g))
    chunks = (length + padding) // chunk_size

    def chunked(x: torch.Tensor) -> torch.Tensor:  # (B, H, S, ...) -> (B, H, chunks, C, ...)
        return x.reshape(batch, value_heads, chunks, chunk_size, *x.shape[3:])

    query, key, value, beta, g = map(chunked, (query, key, value, beta, g))
    decay = g.cumsum(dim=-1)  # log of the decay from the chunk's start to each token
    later = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=query.device).triu(1)
    pairwise = (decay[..., :, None] - decay[..., None, :]).masked_fill(later, float("-inf")).exp()
    rated_key = key * beta[..., None]
    transform = unit_lower_inverse(((rated_key @ key.transpose(-1, -2)) * pairwise).tril(-1))
    new_values = transform @ (value * beta[..., None])
    decayed_keys = transform @ (rated_key * decay.exp()[..., None])
    attention = (query @ key.transpose(-1, -2)) * pairwise  # zero after each token (the decay of -inf)
    query = query * decay.exp()[..., None]
    key = key * (decay[..., -1:] - decay).exp()[..., None]
    chunk_decay = decay[..., -1].exp()[..., None, None]

    state = torch.zeros(batch, value_heads, key_dim, value_dim, dtype=torch.float32, device=query.device)
    if initial_state is not None:
        state = initial_state.float()
    outputs = []
    for index in range(chunks):
        corrected = new_values[:, :, index] - decayed_keys[:, :, index] @ state
        outputs.append(query[:, :, index] @ state + attention[:, :, index] @ corrected)
        state = state * chunk_decay[:, :, index] + key[:, :, index].transpose(-1, -2) @ corrected
    output = torch.stack(outputs, dim=2).reshape(batch, value_heads, -1, value_dim)[:, :, :length]
    return output.transpose(1, 2).contiguous().to(dtype), state if output_final_state else None


# the transformers modules whose Gated DeltaNet layers call ``torch_chunk_gated_delta_rule`` by its module's name
GATED_DELTA_MODULES = ("transformers.models.qwen3_5.modeling_qwen3_5",)


@contextlib.contextmanager
def traced_by_squaring() -> Iterator[None]:
    """While a graph is traced, the Gated DeltaNet layers of every loaded ``GATED_DELTA_MODULES`` module compute
    ``chunk_gated_delta_rule`` (eager PyTorch keeps transformers' triangular solve)."""
    modules = [module for name in GATED_DELTA_MODULES if (module := sys.modules.get(name)) is not None]
    name = "torch_chunk_gated_delta_rule"
    saved = [getattr(module, name) for module in modules]
    for module in modules:
        setattr(module, name, chunk_gated_delta_rule)
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            setattr(module, name, original)
