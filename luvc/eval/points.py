"""Budget points: where eval compares the methods that prune (a share of the visual tokens, or explicit per-layer
budgets), and the eval defaults the CLI shows."""

from __future__ import annotations

import dataclasses

from luvc.compress.budgets import parse_budget, ratio_schedule
from luvc.compress.config import ResolvedLUVCConfig

DEFAULT_RATIOS = (0.5, 0.25, 0.125)
DEFAULT_MAX_NEW_TOKENS = 16


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A published benchmark's layout: its keep ratios, and the baseline every table of it includes."""

    name: str
    summary: str
    ratios: tuple[float, ...]
    baseline: str


PROTOCOLS = {
    protocol.name: protocol
    for protocol in (
        Protocol(
            "unipruning",
            "the public visual-token pruning benchmark's layout: keep ratios 1/3, 2/9 and 1/9 of the visual tokens "
            "(192, 128 and 64 of LLaVA-1.5's 576), a random baseline, accuracy per question type and as a share of "
            "the uncompressed model's, prefill latency",
            (1 / 3, 2 / 9, 1 / 9),
            "random",
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class BudgetPoint:
    """Where the methods that prune are compared: a ``ratio`` of the visual tokens given to the LLM (then the default
    schedule's shape: held until ``spu_start``, linear decay to zero), or explicit per-layer ``budgets``."""

    ratio: float | None = None
    budgets: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        if self.ratio is not None:
            return f"ratio {self.ratio:.3g}"
        return "budgets " + ",".join(str(budget) for budget in self.budgets or ())

    def schedule(self, num_layers: int, visual_tokens: int, config: ResolvedLUVCConfig) -> tuple[int, ...]:
        """The budgets of this point for an image of ``visual_tokens`` uncompressed visual tokens (``config``
        resolved: its schedule knobs)."""
        if self.ratio is not None:
            return ratio_schedule(num_layers, visual_tokens, self.ratio, config)
        budgets = parse_budget(num_layers, self.budgets)
        if budgets is None:
            raise ValueError("a budget point needs a ratio or budgets")
        return budgets
