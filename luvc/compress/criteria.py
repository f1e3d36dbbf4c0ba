"""Pruning criteria: how the pruning unit in the LLM ranks visual tokens before a layer whose budget drops.

The Spectrum Pruning Unit's own scores (``luvc.compress.spu``) and, as named peers for comparisons at equal budgets,
criteria from the token-reduction literature. Every criterion fills the same static per-layer budgets through the
same selection (the top-k of each image's tokens, kept in ascending order with their positions), so any two are
compared at equal token counts in every layer. This module names them (no PyTorch: the configuration reads it);
``luvc.compress.scorers`` computes their scores.

Two criteria rank by attention probabilities, which fused attention (SDPA, FlashAttention, TensorRT) never
materialises: ``fastv`` (one decoder layer's) and ``visionzip`` (the encoder's feature layer's). Their ranking is
measured once per request by an attention probe (``luvc.models.attention_probe``) and every later cut keeps the
best-ranked survivors; they run in PyTorch only.
"""

from __future__ import annotations

import dataclasses

LLM_ATTENTION = "llm-attention"  # the ranking comes from a decoder layer's attention (FastV)
ENCODER_ATTENTION = "encoder-attention"  # from the vision encoder's feature layer (VisionZip)
NO_PROBABILITIES = (
    "the exported graphs compute attention without its probabilities (as TensorRT's fused attention and "
    "FlashAttention do), so it runs in PyTorch only (luvc-export generate, luvc-export eval)"
)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A pruning criterion: its name (``LUVCConfig.spu_variant``), what it scores, where an attention ranking comes
    from (``None``: the scores follow from the tokens alone), and why it cannot be exported (``None``: it exports
    with static budgets, as SPU)."""

    name: str
    summary: str
    ranking: str | None = None
    export_refusal: str | None = None


CRITERIA: dict[str, Criterion] = {
    criterion.name: criterion
    for criterion in (
        Criterion("spectral-residual", "SPU: energy a token keeps after a low-pass over the token sequence"),
        Criterion("channel-spectrum", "SPU: share of a token's energy in the low frequencies of its hidden vector"),
        Criterion("random", "a seeded random order of the visual tokens (each cut keeps a random subset)"),
        Criterion("l2-norm", "the L2 norm of a token's hidden state (largest kept)"),
        Criterion(
            "dart",
            "duplication against pivots: the dart_pivots tokens of largest norm are kept first, every other token "
            "scores by its distance from the most similar pivot (DART, static form)",
        ),
        Criterion(
            "fastv",
            "attention the last prompt token gives each visual token in the decoder layer before the first cut "
            "(layer 0's own for a cut before it; FastV); needs eager attention in that layer (its probabilities)",
            ranking=LLM_ATTENTION,
            export_refusal=f"fastv ranks by a decoder layer's attention probabilities; {NO_PROBABILITIES}",
        ),
        Criterion(
            "visionzip",
            "VisionZip's dominant tokens, selected at the encoder output: attention the CLS token gives (or, without "
            "a CLS token, each token receives) in the encoder's feature layer",
            ranking=ENCODER_ATTENTION,
            export_refusal=f"visionzip ranks by the vision encoder's attention probabilities; {NO_PROBABILITIES}",
        ),
    )
}


def criterion(name: str) -> Criterion:
    """The criterion called ``name`` (a resolved ``LUVCConfig.spu_variant`` other than ``"none"``)."""
    return CRITERIA[name]


def ranks_in_encoder(variant: str | None) -> bool:
    """Whether criterion ``variant`` ranks by the encoder's attention (VisionZip): it selects tokens at the encoder
    output, where OIM would merge them, and the vision side measures its ranking."""
    return variant in CRITERIA and CRITERIA[variant].ranking == ENCODER_ATTENTION
