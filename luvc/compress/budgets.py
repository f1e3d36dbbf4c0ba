"""Per-layer visual-token budgets for the Spectrum Pruning Unit (DESIGN.md section 2.2).

A budget ``k_l`` is the number of visual tokens *entering* decoder layer ``l``. Budgets never increase from one
layer to the next, and by default the last layer gets none. Pruning happens before every layer whose budget is
lower than the previous layer's (or than the visual token count, for layer 0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import overload

from luvc.compress.config import DEFAULT_DART_PIVOTS, ResolvedLUVCConfig
from luvc.errors import critical


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """Budgets for one request: ``total[l]`` visual tokens enter layer ``l``, ``per_image[l][j]`` of image ``j``."""

    tokens_per_image: tuple[int, ...]
    total: tuple[int, ...]
    per_image: tuple[tuple[int, ...], ...]

    @property
    def num_visual_tokens(self) -> int:
        return sum(self.tokens_per_image)

    def prune_layers(self) -> tuple[int, ...]:
        """Layers before which SPU runs (their budget is lower than what arrives)."""
        previous = (self.num_visual_tokens, *self.total[:-1])
        return tuple(layer for layer, (k, before) in enumerate(zip(self.total, previous)) if k < before)


def budget_values(spec: str | None) -> tuple[int, ...] | None:
    """The integers of a budget string (``"576,576,300,0"``); ``None`` for ``None``, ``""`` or ``"auto"`` (the
    default schedule). Only the syntax: ``parse_budget`` checks the values against the model."""
    if spec is None or spec.strip().lower() in ("", "auto"):
        return None
    try:
        return tuple(int(part) for part in spec.replace(" ", "").split(",") if part)
    except ValueError:
        critical(f"--budgets {spec!r} is not a comma-separated list of integers, e.g. '576,576,288,0'.")


@overload
def parse_budget(num_layers: int, spec: Sequence[int]) -> tuple[int, ...]: ...
@overload
def parse_budget(num_layers: int, spec: str | Sequence[int] | None) -> tuple[int, ...] | None: ...
def parse_budget(num_layers: int, spec: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Read an explicit budget list: ``None``/``"auto"`` (default schedule), ``"576,576,300,0"`` or a sequence
    of ints. A list shorter than ``num_layers`` is continued with its last value; a longer one is rejected."""
    if spec is None or isinstance(spec, str):
        spec = budget_values(spec)
        if spec is None:
            return None
    values = [int(v) for v in spec]
    if not values:
        critical("The budget list is empty; give one integer per decoder layer, or 'auto'.")
    if len(values) > num_layers:
        critical(
            f"The budget list has {len(values)} entries but the model has {num_layers} decoder layers; "
            f"give at most {num_layers} (shorter lists repeat their last value)."
        )
    negative = [(i, v) for i, v in enumerate(values) if v < 0]
    if negative:
        layer, value = negative[0]
        critical(f"Budget {value} for layer {layer} is negative; budgets count tokens and must be >= 0.")
    for layer in range(1, len(values)):
        if values[layer] > values[layer - 1]:
            critical(
                f"Budgets must not increase: layer {layer} has {values[layer]} > {values[layer - 1]} at layer "
                f"{layer - 1}. A pruned token cannot come back; make the list non-increasing."
            )
    return tuple(values + [values[-1]] * (num_layers - len(values)))


def default_schedule(num_layers: int, num_visual_tokens: int, config: ResolvedLUVCConfig) -> tuple[int, ...]:
    """Full budget before ``spu_start``, then a linear decay (to zero at the last layer when ``final_zero``),
    stepping every ``spu_every`` layers, each step's budget rounded to the nearest multiple of ``budget_tile``.
    ``config`` must be resolved."""
    start, every, n = config.spu_start, config.spu_every, num_visual_tokens
    budgets, current = [], n
    for layer in range(num_layers):
        is_last = layer == num_layers - 1
        if layer >= start and ((layer - start) % every == 0 or (is_last and config.final_zero)):
            if config.final_zero:
                fraction = (num_layers - 1 - layer) / (num_layers - start)
            else:
                fraction = (num_layers - layer) / (num_layers - start + 1)
            current = min(current, tile_rounded(math.floor(n * fraction), config.budget_tile or 1))
        budgets.append(current)
    return tuple(budgets)


def tile_rounded(budget: int, tile: int) -> int:
    """``budget`` rounded to the nearest multiple of ``tile`` (halves up)."""
    return (budget + tile // 2) // tile * tile


def ratio_schedule(
    num_layers: int, num_visual_tokens: int, ratio: float, config: ResolvedLUVCConfig
) -> tuple[int, ...]:
    """Budgets that give the LLM ``ratio`` of ``num_visual_tokens`` (the uncompressed model's visual tokens), then
    follow the default schedule's shape from there: held until ``spu_start``, then a linear decay (to zero at the last
    layer when ``final_zero``). Every method of a comparison at ``ratio`` gets these same budgets. ``config`` must be
    resolved."""
    if not 0.0 < ratio <= 1.0:
        critical(f"Ratio {ratio} is not in (0, 1]; a ratio is the share of the visual tokens the LLM receives.")
    # the epsilon keeps a ratio such as 2/9 of 576 at 128 (float products land just below)
    kept = math.floor(ratio * num_visual_tokens + 1e-9)
    if kept == 0 and num_visual_tokens > 0:
        critical(
            f"Ratio {ratio:g} keeps none of the {num_visual_tokens} visual tokens an input gives the LLM here; give a "
            f"ratio of at least {1 / num_visual_tokens:.3g} (one token), or compare without visual tokens on purpose "
            "with --budgets 0."
        )
    return default_schedule(num_layers, kept, config)


def plan_budgets(num_layers: int, tokens_per_image: Sequence[int], config: ResolvedLUVCConfig) -> BudgetPlan:
    """Budgets for a request with ``tokens_per_image`` visual tokens per image entering the LLM.

    ``config`` must be resolved. With ``spu_variant="none"`` every layer keeps every token.
    """
    tokens_per_image = tuple(int(n) for n in tokens_per_image)
    n = sum(tokens_per_image)
    fewest = min(tokens_per_image, default=0)
    if config.spu_variant == "dart" and tokens_per_image and config.dart_pivots > max(fewest, DEFAULT_DART_PIVOTS):
        critical(
            f"dart_pivots={config.dart_pivots} is more than the {fewest} visual tokens an image of this input has, "
            f"so DART could not pick that many pivots; give --option dart_pivots between 1 and {max(fewest, 1)}."
        )
    if config.spu_variant == "none":
        total = (n,) * num_layers
    elif config.budgets is not None:
        total = parse_budget(num_layers, config.budgets)
        if total[0] > n:
            critical(
                f"Budget {total[0]} for layer 0 is more than the {n} visual tokens this input has "
                f"(after OIM); lower the budgets to at most {n} or use a larger image."
            )
        if config.final_zero and total[-1] != 0:
            critical(
                f"final_zero is on but the budget for the last layer ({num_layers - 1}) is {total[-1]}; end the "
                f"list with 0, or pass --option final_zero=false."
            )
    else:
        total = default_schedule(num_layers, n, config)
    return BudgetPlan(tokens_per_image, total, _split_per_image(total, tokens_per_image))


def _split_per_image(total: Sequence[int], tokens_per_image: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Split each layer's budget over images in proportion to their token counts (largest remainder), never
    letting an image's share grow from one layer to the next."""
    n = sum(tokens_per_image)
    previous = list(tokens_per_image)
    split = []
    for k in total:
        if n == 0:
            split.append(tuple(0 for _ in tokens_per_image))
            continue
        exact = [k * t / n for t in tokens_per_image]
        shares = [min(math.floor(e), p) for e, p in zip(exact, previous)]
        order = sorted(range(len(exact)), key=lambda j: (-(exact[j] - math.floor(exact[j])), j))
        while sum(shares) < k:
            grown = False
            for j in order:
                if sum(shares) < k and shares[j] < previous[j]:
                    shares[j] += 1
                    grown = True
            if not grown:
                break
        previous = shares
        split.append(tuple(shares))
    return tuple(split)
