"""Parity tolerances per export precision, and the metric each one bounds."""

from __future__ import annotations

import dataclasses

# metric -> (tolerance field, True when larger values are better)
METRICS = {
    "relative_error": ("tensor_relative", False),
    "cosine": ("tensor_cosine", True),
    "kept_jaccard": ("kept_jaccard", True),
    "embed_cosine": ("embed_cosine", True),
    "top1_agreement": ("top1_agreement", True),
    "kl_divergence": ("kl_divergence", False),
    "exact_match": ("exact_match", True),
    "token_agreement": ("token_agreement", True),
}


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Bounds for one precision. Relative error is ``max |a - b| / max |b|`` against PyTorch LUVC in fp32."""

    tensor_relative: float  # level 1: per output tensor (and per layer when localising)
    tensor_cosine: float  # level 1: minimum cosine similarity
    kept_jaccard: float  # level 2: minimum Jaccard overlap of kept visual indices, per SPU layer
    embed_cosine: float  # level 2: minimum cosine of the OIM-merged image embeddings
    top1_agreement: float  # level 3: share of samples whose first token agrees
    kl_divergence: float  # level 3: maximum KL(reference || candidate) of first-token distributions
    exact_match: float  # level 4: share of samples whose generated text is identical
    token_agreement: float  # level 4: share of generated tokens identical position by position

    def limit(self, metric: str) -> float:
        return getattr(self, METRICS[metric][0])

    def passes(self, metric: str, value: float) -> bool:
        """Whether ``value`` of ``metric`` is within this precision's bound."""
        limit = self.limit(metric)
        return value >= limit if METRICS[metric][1] else value <= limit


# Documented in docs/parity.md; fp16 graphs keep FP32 islands for norms, softmax and SPU scores.
TOLERANCES = {
    "fp32": Tolerances(1e-4, 0.99999, 1.0, 0.99999, 1.0, 1e-6, 1.0, 1.0),
    "fp16": Tolerances(1e-2, 0.999, 0.9, 0.999, 1.0, 1e-3, 0.75, 0.9),
    # Q/DQ graphs: the worst element moves by a quantization step, so cosine is the sharper tensor check; greedy
    # text is judged as kept indices are (a first differing pick within the logits' measured noise is a tie,
    # ``luvc.parity.text``), so its bounds are fp16's
    "int8": Tolerances(0.25, 0.99, 0.75, 0.99, 0.75, 5e-2, 0.75, 0.9),
    "fp8": Tolerances(0.35, 0.99, 0.75, 0.98, 0.5, 5e-2, 0.75, 0.9),
    # weight-only INT4 (LLM linear layers; vision and activations stay as exported, here fp32; from an fp16 export see
    # tolerances_for): round-to-nearest in blocks moves each weight by up to half a step (amax / 7) of its block, about
    # 0.12 of the weights' rms for a block of 128 normal values, so each projection's output keeps a cosine of about
    # 0.993 and K/V (one projection deep) stay above 0.98; the vision encoder is the fp32 graph itself, so its
    # embeddings keep fp32's bound
    "int4": Tolerances(0.35, 0.98, 0.75, 0.99999, 0.75, 5e-2, 0.75, 0.9),
    # weight-only INT8 (LLM linear layers and LM head, one scale per output column): each weight moves by up to half a
    # step, amax / 254, about 0.01 of the weights' rms for normal values, so each projection keeps a cosine above
    # 0.9999; INT8's static bounds, with the vision encoder's embeddings at fp32's as INT4's
    "int8w": Tolerances(0.25, 0.99, 0.75, 0.99999, 0.75, 5e-2, 0.75, 0.9),
}


# a backend's own arithmetic beside the export's precision: OpenVINO's bf16 products (8 significant bits against
# fp16's 11) round each product's inputs to about 0.4 %; measured on the five tiny families (docs/parity.md)
COMPUTE_TOLERANCES = {
    "bf16": Tolerances(5e-2, 0.998, 0.75, 0.998, 1.0, 1e-2, 0.5, 0.75),
}


def tolerances_for(precision: str, float_precision: str = "fp32") -> Tolerances:
    """The tolerances of an export ``precision`` (``fp32``, ``fp16``, ``int8``, ``fp8``, ``int4``, ``int8w``). A
    quantized export whose unquantized rest is ``float_precision`` fp16 (INT4 weights in an fp16 export) carries both
    errors: each bound is the looser of the two."""
    from luvc.errors import critical

    if precision not in TOLERANCES or float_precision not in TOLERANCES:
        unknown = precision if precision not in TOLERANCES else float_precision
        critical(f"No parity tolerances for precision {unknown!r}; known: {list(TOLERANCES)}.")
    bounds, rest = TOLERANCES[precision], TOLERANCES[float_precision]
    if precision == float_precision or float_precision == "fp32":
        return bounds
    return looser(bounds, rest)


def looser(bounds: Tolerances, other: Tolerances) -> Tolerances:
    """Each bound the looser of ``bounds`` and ``other`` (for results that carry both errors)."""
    fields = {
        field: (min if larger_is_better else max)(bounds.limit(metric), other.limit(metric))
        for metric, (field, larger_is_better) in METRICS.items()
    }
    return Tolerances(**fields)


def backend_tolerances(bounds: Tolerances, compute: str) -> Tolerances:
    """The bounds of a backend that computes in ``compute`` (``""``: as the export's precision says; ``bf16``:
    OpenVINO's bf16 products, ``COMPUTE_TOLERANCES``): each the looser of the two."""
    return looser(bounds, COMPUTE_TOLERANCES[compute]) if compute else bounds
