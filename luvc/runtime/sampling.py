"""Next-token choice: greedy, or sampling with temperature, top-k and top-p (nucleus) from a seeded generator."""

from __future__ import annotations

import dataclasses

import numpy as np

from luvc.errors import critical


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature`` 0 (default) is greedy; ``top_k`` 0 and ``top_p`` 1.0 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            critical(
                f"Sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got temperature={self.temperature},"
                f" top_k={self.top_k}, top_p={self.top_p}."
            )


def next_tokens(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """``(B, V)`` logits -> ``(B,)`` token ids."""
    if config.temperature == 0:
        return logits.argmax(-1)
    scaled = logits.astype(np.float64) / config.temperature
    if config.top_k:
        kth = np.sort(scaled, axis=-1)[:, -min(config.top_k, scaled.shape[-1])][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if config.top_p < 1:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        outside = np.cumsum(sorted_probs, -1) - sorted_probs >= config.top_p  # keep the smallest set reaching top_p
        np.put_along_axis(probs, order, np.where(outside, 0.0, sorted_probs), -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs])
