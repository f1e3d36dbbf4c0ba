"""Scorers of the pruning criteria (``luvc.compress.criteria``), as pure functions on tensors.

A scorer takes the visual tokens of one span (an image, or a frame of a video) as they enter the layer (or what the
criterion reads of them: their normed input, their variation), their original visual indices (``None`` for a scorer
marked ``tokens_only``) and the span's index, and returns one float32 score per token (the highest are kept):
``(tokens (B, n, D), visual_ids (B, n), span) -> (B, n)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.constants import constant_maker, constant_tensor
from luvc.compress.criteria import CRITERIA
from luvc.compress.spu import get_scorer, grid_residual_scores

Scorer = Callable[[torch.Tensor, Any, int], torch.Tensor]  # (tokens, their visual ids or None: tokens_only, span)
Grid = tuple[int, int, int]  # (blocks, rows, cols): frames or tiles of a rows x cols token grid in raster order


@dataclasses.dataclass(frozen=True)
class SpanLayout:
    """The request's visual spans as the LLM first receives them: the first original visual index of each, and
    (where the family knows it) each span's token grid (``spu_lowpass="grid"``)."""

    offsets: tuple[int, ...]
    grids: tuple[Grid, ...] | None = None

    @classmethod
    def of(cls, counts: tuple[int, ...], grids: tuple[Grid, ...] | None = None) -> SpanLayout:
        """The layout of spans of ``counts`` visual tokens, in prompt order."""
        return cls(tuple(sum(counts[:k]) for k in range(len(counts))), grids)


@constant_maker
def _random_table(seed: int, count: int) -> np.ndarray:
    table = np.random.default_rng(seed).random(count).astype(np.float32)
    table.flags.writeable = False
    return table


def random_scores(visual_ids: torch.Tensor, seed: int, num_visual_tokens: int) -> torch.Tensor:
    """``(B, n)`` float32: one seeded random score per original visual token (of ``num_visual_tokens``), looked up by
    ``visual_ids``. The order is fixed per request, so every cut keeps a random subset of what the last one kept; it
    is a constant of the traced graph."""
    table = constant_tensor("_random_table", seed, num_visual_tokens, device=visual_ids.device)
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


def k_center_scores(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, n, D)`` -> ``(B, n)`` float32 scores of a greedy k-center order on cosine distance (ToDRE's diversity
    stage): the token most similar to the tokens' mean first, then again and again the token farthest from every one
    picked. Any budget's top-k is the first k picked. A loop of ``n`` steps: PyTorch only."""
    values = tokens.float()
    unit = values / values.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    batch, n = unit.shape[:2]
    rows = torch.arange(batch, device=unit.device)
    scores = torch.zeros(batch, n, device=unit.device)
    pick = torch.einsum("bnd,bd->bn", unit, unit.mean(dim=1)).argmax(dim=-1)
    distance = torch.full((batch, n), float("inf"), device=unit.device)
    for order in range(n):
        scores[rows, pick] = float(n - order)
        distance = torch.minimum(distance, 1.0 - torch.einsum("bnd,bd->bn", unit, unit[rows, pick]))
        distance[rows, pick] = -1.0  # never picked twice
        pick = distance.argmax(dim=-1)
    return scores


def tokens_only(scorer: Scorer) -> Scorer:
    """Mark ``scorer`` as reading the tokens alone: its caller may pass ``None`` for the visual ids."""
    marked: Any = scorer  # a function takes attributes; Scorer's type declares none
    marked.reads_ids = False
    return scorer


def reads_ids(scorer: Scorer) -> bool:
    """Whether ``scorer`` reads the visual ids it is given (false only when marked ``tokens_only``)."""
    return getattr(scorer, "reads_ids", True)


def spu_scorer(variant: str, rho: float) -> Scorer:
    """The scorer of an SPU variant with the default knobs (its scores follow from the tokens alone)."""
    spu = get_scorer(variant, rho)
    return tokens_only(lambda tokens, visual_ids, span: spu(tokens))


def make_scorer(
    config: ResolvedLUVCConfig,
    num_visual_tokens: int,
    ranking: torch.Tensor | None = None,
    layout: SpanLayout | None = None,
    cut: int = 0,
) -> Scorer:
    """The scorer of ``config``'s criterion (resolved) at its ``cut``-th cut (0-based) for a request with
    ``num_visual_tokens`` visual tokens in spans ``layout``; ``ranking`` ``(B, N)`` is the attention ranking of the
    criteria that have one (measured by the caller)."""
    variant = config.spu_variant
    if variant in ("spectral-residual", "channel-spectrum"):
        scorer = _spu_scorer(config, layout)
        if config.spu_keep == "low":
            negated = lambda tokens, visual_ids, span: -scorer(tokens, visual_ids, span)  # noqa: E731
            return negated if reads_ids(scorer) else tokens_only(negated)
        return scorer
    if variant == "random":
        return lambda tokens, visual_ids, span: random_scores(visual_ids, config.seed, num_visual_tokens)
    if variant in ("l2-norm", "v2drop"):  # v2drop: the caller passes what the layer changed
        return tokens_only(lambda tokens, visual_ids, span: l2_norm_scores(tokens))
    if variant == "dart":
        return tokens_only(lambda tokens, visual_ids, span: dart_scores(tokens, config.dart_pivots))
    if variant in CRITERIA and CRITERIA[variant].ranking is not None:
        if cut < CRITERIA[variant].ranking_from_cut:  # ToDRE's first cut: diversity
            return tokens_only(lambda tokens, visual_ids, span: k_center_scores(tokens))
        if ranking is None:
            raise ValueError(f"criterion {variant!r} ranks by attention; measure its ranking first")
        return lambda tokens, visual_ids, span: ranked_scores(visual_ids, ranking)
    raise ValueError(f"{variant!r} is not a pruning criterion; use one of {list(CRITERIA)}.")


def _spu_scorer(config: ResolvedLUVCConfig, layout: SpanLayout | None) -> Scorer:
    """SPU's own scores, on the raster low-pass or (``spu_lowpass="grid"``) each span's 2-D grid."""
    if config.spu_lowpass != "grid":
        return spu_scorer(config.spu_variant, config.rho)
    if layout is None or layout.grids is None:
        raise ValueError("spu_lowpass='grid' needs the spans' token grids")
    offsets, grids = layout.offsets, layout.grids

    def grid_scores(tokens: torch.Tensor, visual_ids: torch.Tensor, span: int) -> torch.Tensor:
        local = visual_ids - offsets[span]
        return grid_residual_scores(tokens, local, grids[span], config.rho)

    return grid_scores
