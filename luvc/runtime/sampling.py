"""Next-token choice on the logits' device: greedy, or sampling with temperature, top-k and top-p (nucleus) from a
seeded generator; presence and frequency penalties (OpenAI's) lower the logits of tokens already generated, from
per-row token counts kept on the device."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from luvc.compress.config import MAX_SEED
from luvc.errors import critical

if TYPE_CHECKING:  # torch is imported where tokens are chosen: the CLI checks these options without it
    import torch


MAX_PENALTY = 2.0  # OpenAI's range for presence and frequency penalties: [-2, 2]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature`` 0 (default) is greedy; ``top_k`` 0 and ``top_p`` 1.0 disable those filters. A token generated
    ``c`` times so far has its logit lowered by ``c * frequency_penalty + (c > 0) * presence_penalty`` (both 0: off;
    greedy decoding takes them too)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        numbers_ok = all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in (self.temperature, self.top_p)
        )
        if (
            not numbers_ok
            or not math.isfinite(self.temperature)
            or self.temperature < 0
            or isinstance(self.top_k, bool)
            or not isinstance(self.top_k, int)
            or self.top_k < 0
            or not 0 < self.top_p <= 1
        ):
            critical(
                f"Sampling needs a finite temperature >= 0, an integer top_k >= 0 and 0 < top_p <= 1; got "
                f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}."
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED
        ):
            critical(f"seed={self.seed} must be an integer between 0 and {MAX_SEED} (2**63 - 1).")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or abs(value) > MAX_PENALTY
            ):
                critical(f"{name}={value} must be a finite number between -{MAX_PENALTY:g} and {MAX_PENALTY:g}.")

    @property
    def penalized(self) -> bool:
        """Whether tokens already generated change the next choice (a penalty is set)."""
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The request's random generator on ``device`` (``None`` for greedy decoding)."""
        if self.greedy:
            return None
        import torch

        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def penalized_logits(logits: torch.Tensor, config: SamplingConfig, counts: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` logits (float32) lowered by ``config``'s penalties for the tokens counted in ``counts (B, V)``."""
    logits = logits.float() - counts * config.frequency_penalty
    return logits - (counts > 0).to(logits.dtype) * config.presence_penalty


def next_tokens(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    out: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, V)`` logits -> ``(B,)`` token ids written into ``out`` (int64, on the logits' device). With penalties,
    ``counts (B, V)`` holds how often each row generated each token so far; it is updated with the chosen tokens."""
    import torch

    if config.penalized:
        if counts is None:
            critical("Penalties need each row's token counts; pass counts to next_tokens.")
        logits = penalized_logits(logits, config, counts)
    if config.greedy:
        torch.argmax(logits, dim=-1, out=out)
        return _counted(out, counts)
    scaled = logits.double() / config.temperature
    if config.top_k:
        kth = torch.topk(scaled, min(config.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        outside = torch.cumsum(sorted_probs, -1) - sorted_probs >= config.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    out.copy_(torch.multinomial(probs, 1, generator=generator).squeeze(-1))
    return _counted(out, counts)


def _counted(tokens: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    """``tokens``, after adding one to each row's count of its token (when counts are kept)."""
    if counts is not None:
        counts.scatter_add_(1, tokens[:, None], counts.new_ones(tokens.shape[0], 1))
    return tokens
