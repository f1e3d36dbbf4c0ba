"""Scorers of the pruning criteria (``luvc.compress.criteria``), as pure functions on tensors.

A scorer takes the visual tokens of one image as they enter the layer and their original visual indices, and returns
one float32 score per token (the highest are kept): ``(tokens (B, n, D), visual_ids (B, n)) -> (B, n)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from luvc.compress.criteria import CRITERIA
from luvc.compress.spu import get_scorer

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=64)
def _random_table(seed: int, count: int) -> np.ndarray:
    table = np.random.default_rng(seed).random(count).astype(np.float32)
    table.flags.writeable = False
    return table


def random_scores(visual_ids: torch.Tensor, seed: int, num_visual_tokens: int) -> torch.Tensor:
    """``(B, n)`` float32: one seeded random score per original visual token (of ``num_visual_tokens``), looked up by
    ``visual_ids``. The order is fixed per request, so every cut keeps a random subset of what the last one kept; it
    is a constant of the traced graph."""
    table = torch.tensor(_random_table(seed, num_visual_tokens), device=visual_ids.device)
    return table[visual_ids]


def l2_norm_scores(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, n, D)`` -> ``(B, n)`` float32 L2 norms of the hidden states."""
    return tokens.float().norm(dim=-1)


def dart_scores(tokens: torch.Tensor, pivots: int) -> torch.Tensor:
    """``(B, n, D)`` -> ``(B, n)`` float32 DART scores with static shapes: the ``pivots`` tokens of largest norm score
    in (2, 3] by norm (kept first); every other token scores ``-max cos(token, pivot)`` in [-1, 1], so near-duplicates
    of a pivot go first. (DART lets each pivot pick its least similar tokens in turn, a data-dependent loop; the
    static form keeps the tokens least similar to their closest pivot.)"""
    values = tokens.float()
    tiny = torch.finfo(torch.float32).tiny
    norms = values.norm(dim=-1)
    largest = torch.topk(norms, min(pivots, values.shape[1]), dim=-1)
    unit = values / norms.clamp_min(tiny)[..., None]
    pivot_units = torch.gather(unit, 1, largest.indices[..., None].expand(-1, -1, unit.shape[-1]))
    similarity = torch.bmm(unit, pivot_units.transpose(1, 2)).amax(dim=-1)  # (B, n): to the closest pivot
    is_pivot = norms >= largest.values[:, -1:]
    return torch.where(is_pivot, 2.0 + norms / largest.values[:, :1].clamp_min(tiny), -similarity)


def ranked_scores(visual_ids: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """``(B, n)``: the values of the tokens ``visual_ids`` in the request's ranking ``(B, N)`` (one per original visual
    token)."""
    return torch.gather(ranking.float(), 1, visual_ids)


def spu_scorer(variant: str, rho: float) -> Scorer:
    """The scorer of an SPU variant (its scores follow from the tokens alone)."""
    spu = get_scorer(variant, rho)
    return lambda tokens, visual_ids: spu(tokens)


def make_scorer(
    variant: str,
    rho: float,
    seed: int,
    dart_pivots: int,
    num_visual_tokens: int,
    ranking: torch.Tensor | None = None,
) -> Scorer:
    """The scorer of criterion ``variant`` for a request with ``num_visual_tokens`` visual tokens; ``ranking``
    ``(B, N)`` is the attention ranking of the criteria that have one (measured by the caller)."""
    if variant in ("spectral-residual", "channel-spectrum"):
        return spu_scorer(variant, rho)
    if variant == "random":
        return lambda tokens, visual_ids: random_scores(visual_ids, seed, num_visual_tokens)
    if variant == "l2-norm":
        return lambda tokens, visual_ids: l2_norm_scores(tokens)
    if variant == "dart":
        return lambda tokens, visual_ids: dart_scores(tokens, dart_pivots)
    if variant in CRITERIA and CRITERIA[variant].ranking is not None:
        if ranking is None:
            raise ValueError(f"criterion {variant!r} ranks by attention; measure its ranking first")
        return lambda tokens, visual_ids: ranked_scores(visual_ids, ranking)
    raise ValueError(f"{variant!r} is not a pruning criterion; use one of {list(CRITERIA)}.")
