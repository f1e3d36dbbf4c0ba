"""Pruning criteria: how the pruning unit in the LLM ranks visual tokens before a layer whose budget drops.

The Spectrum Pruning Unit's own scores (``luvc.compress.spu``) and, as named peers for comparisons at equal budgets,
criteria from the token-reduction literature. Every criterion fills the same static per-layer budgets through the
same selection (the top-k of each image's tokens, kept in ascending order with their positions), so any two are
compared at equal token counts in every layer. This module names them (no PyTorch: the configuration reads it);
``luvc.compress.scorers`` computes their scores.

Four criteria rank by attention probabilities, which fused attention (SDPA, FlashAttention, TensorRT) never
materialises: ``fastv`` (one decoder layer's) and ``visionzip`` (the encoder's feature layer's), measured once per
request by an attention probe (``luvc.models.attention_probe``), every later cut keeping the best-ranked
survivors; ``pdrop`` and ``todre`` (after its first cut) measure the last prompt token's attention again in the layer
before every cut. They run in PyTorch only, as does ``todre``'s first cut (a greedy loop). ``v2drop`` scores how much
the layer before the cut changed each token (its input against its output), which exports.
"""

from __future__ import annotations

import dataclasses

LLM_ATTENTION = "llm-attention"  # the ranking comes from a decoder layer's attention (FastV: once)
LLM_ATTENTION_EACH_CUT = "llm-attention-each-cut"  # measured again before every cut (PDrop; ToDRE after its first)
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
    ranking_from_cut: int = 0  # the first cut (0-based) that reads the ranking (ToDRE: its first cut does not)
    reads_variation: bool = False  # scores what the layer before the cut changed (V2Drop), not the tokens


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
        Criterion(
            "pdrop",
            "attention the last prompt token gives each visual token, measured again in the layer before every cut "
            "(PDrop's pyramid: each stage ranks the survivors anew); needs eager attention in those layers",
            ranking=LLM_ATTENTION_EACH_CUT,
            export_refusal=f"pdrop ranks by decoder layers' attention probabilities; {NO_PROBABILITIES}",
        ),
        Criterion(
            "v2drop",
            "variation: how far the layer before the cut moved each visual token (L2 distance between that layer's "
            "input and output); the least changed ('lazy') tokens go first (V2Drop); a cut before layer 0 ranks by "
            "the token's norm",
            reads_variation=True,
        ),
        Criterion(
            "todre",
            "ToDRE: the first cut keeps a diverse subset (greedy k-center on cosine distance, from the token closest "
            "to the mean); later cuts keep what the last prompt token attends to in the layer before the cut (task "
            "relevance), down to the budget point's zero",
            ranking=LLM_ATTENTION_EACH_CUT,
            ranking_from_cut=1,
            export_refusal="todre's first cut is a greedy loop over the tokens and its later cuts rank by attention "
            f"probabilities; {NO_PROBABILITIES}",
        ),
    )
}


def criterion(name: str) -> Criterion:
    """The criterion called ``name`` (a resolved ``LUVCConfig.spu_variant`` other than ``"none"``)."""
    return CRITERIA[name]


def ranks_in_llm(variant: str | None) -> bool:
    """Whether criterion ``variant`` ranks by a decoder layer's attention (FastV, PDrop, ToDRE)."""
    return variant in CRITERIA and CRITERIA[variant].ranking in (LLM_ATTENTION, LLM_ATTENTION_EACH_CUT)


def ranks_in_encoder(variant: str | None) -> bool:
    """Whether criterion ``variant`` ranks by the encoder's attention (VisionZip): it selects tokens at the encoder
    output, where OIM would merge them, and the vision side measures its ranking."""
    return variant in CRITERIA and CRITERIA[variant].ranking == ENCODER_ATTENTION
