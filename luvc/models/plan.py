"""``RequestPlan``: what LUVC decides for one batch of images under one config, worked out once on the host.

Everything data-dependent about a request (the encoder's merge steps, rotary ids and attention segments; the visual
tokens each image brings to the LLM; the per-layer budgets) follows from the image grid and the config alone. It is
planned once per distinct (grid, config) and the same object is shared by ``VLMAdapter.prepare_inputs`` (how many
placeholders), the cost model, the model's forward, the export bucket and its vision and prefill graphs.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from luvc.compress.budgets import BudgetPlan, plan_budgets
from luvc.compress.config import ResolvedLUVCConfig

T = TypeVar("T")
LUVC_BUDGET_PLANS = "luvc_budget_plans"  # the multimodal model's attribute: its budget plans, shared with the adapter


@dataclasses.dataclass(frozen=True)
class VisionTrace:
    """The vision side of a plan: the family's encoder plan and the facts the LLM side and the cost model read."""

    block_segments: tuple[tuple[int, ...], ...]  # attention segment lengths of every encoder block
    tokens_per_image: tuple[int, ...]  # visual tokens per image (or video) entering the LLM
    encoder: Any = None  # the family's encoder plan (Qwen-VL: QwenVisionPlan); None where it is fixed (LLaVA)
    spans: tuple[int, ...] = ()  # prompt spans of each (a Qwen3-VL video: one per temporal slice); () = one each
    span_grids: tuple[tuple[int, int, int], ...] | None = None  # (blocks, rows, cols) of every prompt span, in order

    @property
    def spans_per_image(self) -> tuple[int, ...]:
        """How many equal prompt spans each image (or video) brings."""
        return self.spans or (1,) * len(self.tokens_per_image)

    @property
    def span_tokens(self) -> tuple[int, ...]:
        """Visual tokens of every prompt span, the spans of all images in order: what SPU prunes one by one."""
        return tuple(
            count // spans for count, spans in zip(self.tokens_per_image, self.spans_per_image) for _ in range(spans)
        )


@dataclasses.dataclass(frozen=True)
class RequestPlan:
    """One request's LUVC plan under a resolved ``config`` (``VLMAdapter.plan``)."""

    config: ResolvedLUVCConfig
    vision: VisionTrace
    budget_plan: BudgetPlan

    @property
    def tokens_per_image(self) -> tuple[int, ...]:
        return self.vision.tokens_per_image

    @property
    def block_segments(self) -> tuple[tuple[int, ...], ...]:
        return self.vision.block_segments


class PlanCache(Generic[T]):
    """The most recent ``size`` plans by key, so a request planned once is never planned again (a serving process
    sees a handful of image sizes, each planned on first sight). Plans are shared: callers must not modify them."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._plans: OrderedDict[Hashable, T] = OrderedDict()
        self.misses = 0  # plans worked out (not found)

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The plan stored under ``key``, made by ``make()`` on first use."""
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._plans[key] = make()
        self.misses += 1
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)
        return plan


def plans_on(owner: object, attribute: str) -> PlanCache:
    """The plan cache kept on ``owner`` (a patched module) under ``attribute``, made on first use: the module's
    forward and its adapter read one cache, so a plan the adapter made is the one the forward runs."""
    if not hasattr(owner, attribute):
        setattr(owner, attribute, PlanCache())
    return getattr(owner, attribute)


def planned_budgets(
    plans: PlanCache[BudgetPlan], num_layers: int, span_tokens: Sequence[int], config: ResolvedLUVCConfig
) -> BudgetPlan:
    """The per-layer budgets of prompt spans of ``span_tokens`` visual tokens under ``config`` (resolved), planned on
    first use of those spans and that config."""
    span_tokens = tuple(span_tokens)
    return plans.get((num_layers, span_tokens, config), lambda: plan_budgets(num_layers, span_tokens, config))
