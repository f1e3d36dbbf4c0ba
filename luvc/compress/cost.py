"""Cost model (DESIGN.md section 2.3): tokens, FLOPs and KV-cache bytes, with and without LUVC.

FLOPs count multiply-adds as two. Linear layers cost ``2 * tokens * in * out``; attention costs
``4 * head_dim * heads`` per (query, key) pair: every pair inside an encoder segment, the causal half
``n (n + 1) / 2`` in a decoder prefill. Norms, activations and the rotary embedding are left out.

A hybrid language model (Qwen3.5) has linear-attention layers (``LinearAttentionSpec``): their cost grows linearly
with the tokens they process (projections, a short convolution and the gated delta rule's state update and read);
they keep a fixed-size state, no keys and values, so KV-cache bytes count the attention layers only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from luvc.compress.budgets import BudgetPlan
from luvc.compress.config import ResolvedLUVCConfig


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """Encoder shape: width, MLP width, the per-token cost of the patch embedding and projector, and whether it has
    a CLS token (VisionZip ranks by that token's attention row, else by the attention every token receives)."""

    embed: int
    mlp: int
    patch_flops_per_token: int  # patch embedding
    projector_flops_per_unit: int  # patch merger / multimodal projector per LLM token
    cls_token: bool = False


@dataclasses.dataclass(frozen=True)
class LinearAttentionSpec:
    """A hybrid language model's linear-attention layers (Gated DeltaNet): which layers, their key and value heads
    and widths, and the causal convolution's kernel."""

    layers: frozenset[int]
    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    conv_kernel: int

    def flops_per_token(self, hidden: int) -> int:
        """One token through a linear-attention layer's token mixer: the query-key-value, gate, decay and rate
        projections, the depthwise convolution over query, key and value, the gated delta rule (per value head: the
        state read by the key, its rank-one update, its read by the query, and its decay: four ``key x value``
        products) and the output projection."""
        keys, values = self.key_heads * self.key_dim, self.value_heads * self.value_dim
        mixed = 2 * keys + values
        projections = 2 * hidden * (mixed + values + 2 * self.value_heads) + 2 * values * hidden
        delta_rule = 4 * 2 * self.value_heads * self.key_dim * self.value_dim
        return projections + 2 * self.conv_kernel * mixed + delta_rule

    @property
    def conv_state_shape(self) -> tuple[int, int]:
        """One row's convolution state in one layer: query, key and value channels by the last ``conv_kernel``
        inputs."""
        return (2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim, self.conv_kernel)

    @property
    def recurrent_state_shape(self) -> tuple[int, int, int]:
        """One row's recurrent state in one layer: ``key x value`` per value head."""
        return (self.value_heads, self.key_dim, self.value_dim)

    def conv_state_elements(self) -> int:
        """Elements of one layer's convolution state."""
        return math.prod(self.conv_state_shape)

    def recurrent_state_elements(self) -> int:
        """Elements of one layer's recurrent state."""
        return math.prod(self.recurrent_state_shape)


@dataclasses.dataclass(frozen=True)
class LlmSpec:
    """Language-model shape; ``gated_query``: the query projection also makes an output gate (Qwen3.5's attention);
    ``linear``: a hybrid model's linear-attention layers (``None``: every layer attends)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_query: bool = False
    linear: LinearAttentionSpec | None = None

    def attends(self, layer: int) -> bool:
        """Whether ``layer`` is an attention layer (keys and values, a causal attention)."""
        return self.linear is None or layer not in self.linear.layers

    def attention_projection_flops_per_token(self) -> int:
        """The query (and its gate), key, value and output projections of one token."""
        query_and_output = (3 if self.gated_query else 2) * self.heads * self.head_dim
        return 2 * self.hidden * (query_and_output + self.kv_heads * self.head_dim * 2)

    def linear_flops_per_token(self) -> int:
        """An attention layer's projections and MLP for one token."""
        return self.attention_projection_flops_per_token() + self.mlp_flops_per_token()

    def mlp_flops_per_token(self) -> int:
        return 2 * 3 * self.hidden * self.intermediate

    def layer_flops(self, layer: int, tokens: int) -> int:
        """Prefill FLOPs of decoder layer ``layer`` over ``tokens`` tokens."""
        if self.attends(layer):
            return self.linear_flops_per_token() * tokens + self.causal_attention_flops(tokens)
        assert self.linear is not None
        return (self.linear.flops_per_token(self.hidden) + self.mlp_flops_per_token()) * tokens

    def state_bytes(self, bytes_per_element: int) -> int:
        """Bytes the linear-attention layers keep into decode, the same for every prompt (0 without such layers): the
        convolution state in the model's precision, the recurrent state in float32 (the gated delta rule accumulates
        in float32 whatever the model's precision)."""
        if self.linear is None:
            return 0
        per_layer = self.linear.conv_state_elements() * bytes_per_element + self.linear.recurrent_state_elements() * 4
        return len(self.linear.layers) * per_layer

    def causal_attention_flops(self, tokens: int) -> int:
        """Query-key products and the weighted sum of values over the causal half of ``tokens`` x ``tokens``."""
        return 4 * self.heads * self.head_dim * tokens * (tokens + 1) // 2


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Per request (batch 1). ``*_baseline`` fields are the uncompressed model's; ``decoder_tokens`` count text
    and visual tokens entering each layer; ``encoder_flops`` include the attention probabilities an encoder-side
    criterion computes (VisionZip)."""

    text_tokens: int
    llm_visual_tokens: int  # visual tokens the LLM receives (after OIM), before any pruning
    encoder_tokens: tuple[int, ...]
    encoder_tokens_baseline: tuple[int, ...]
    decoder_tokens: tuple[int, ...]
    decoder_tokens_baseline: tuple[int, ...]
    encoder_flops: int
    encoder_flops_baseline: int
    llm_prefill_flops: int
    llm_prefill_flops_baseline: int
    selection_flops: int  # scoring by the pruning criterion in the LLM (included in llm_prefill_flops)
    kv_cache_bytes: int
    kv_cache_bytes_baseline: int

    @property
    def encoder_speedup(self) -> float:
        return self.encoder_flops_baseline / self.encoder_flops

    @property
    def llm_prefill_speedup(self) -> float:
        return self.llm_prefill_flops_baseline / self.llm_prefill_flops

    @property
    def kv_cache_reduction(self) -> float:
        return self.kv_cache_bytes_baseline / self.kv_cache_bytes

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(
            encoder_speedup=self.encoder_speedup,
            llm_prefill_speedup=self.llm_prefill_speedup,
            kv_cache_reduction=self.kv_cache_reduction,
        )
        return data


def encoder_flops(spec: VisionSpec, block_segments: Sequence[Sequence[int]], llm_tokens: int) -> int:
    """Encoder FLOPs for blocks whose attention runs over ``block_segments`` (token counts per segment)."""
    first_tokens = sum(block_segments[0]) if block_segments else 0
    total = spec.patch_flops_per_token * first_tokens + spec.projector_flops_per_unit * llm_tokens
    for segments in block_segments:
        tokens = sum(segments)
        total += 2 * tokens * (4 * spec.embed * spec.embed + 2 * spec.embed * spec.mlp)
        total += 4 * spec.embed * sum(s * s for s in segments)
    return total


def decoder_tokens(plan: BudgetPlan, text_tokens: int) -> tuple[int, ...]:
    return tuple(text_tokens + k for k in plan.total)


def selection_flops(plan: BudgetPlan, llm: LlmSpec, config: ResolvedLUVCConfig, text_tokens: int = 0) -> int:
    """Scoring cost in the LLM of ``config``'s pruning criterion (resolved) over every cut: SPU's products with a
    ``ceil(rho n) x n`` basis or one rDFT; a norm (``l2-norm``); norms and similarities to the pivots (``dart``); for
    ``fastv``, once, the last prompt token's attention row in the layer before the first cut, or for a cut before
    layer 0 the extra attention pass of layer 0 that measures it; ``pdrop`` that row before every cut, ``todre``
    before every cut after its first, whose greedy k-center costs ``n`` distance updates; ``v2drop`` a difference and
    a norm. ``random`` and ``visionzip`` look their scores up. ``grid``: the 2-D low-pass is an ``n x n`` product;
    ``normed``: one RMS norm of the scored tokens."""
    variant, rho, lowpass, spu_input = config.spu_variant, config.rho, config.spu_lowpass, config.spu_input
    layers, hidden = plan.prune_layers(), llm.hidden
    ranked: tuple[int, ...] = {"fastv": layers[:1], "pdrop": layers, "todre": layers[1:]}.get(variant, ())
    total = sum(_attention_row_flops(plan, llm, layer, text_tokens) for layer in ranked)
    for cut, layer in enumerate(layers):
        entering = plan.per_image[layer - 1] if layer > 0 else plan.tokens_per_image
        for n in entering:
            if variant == "channel-spectrum":
                total += 2 * 2 * n * hidden * (hidden // 2 + 1)
            elif variant == "spectral-residual":
                total += 2 * 2 * (n if lowpass == "grid" else math.ceil(rho * n)) * n * hidden
            elif variant == "l2-norm":
                total += 2 * n * hidden
            elif variant == "v2drop":
                total += 3 * n * hidden
            elif variant == "dart":
                total += 2 * n * hidden * (min(config.dart_pivots, n) + 2)
            elif variant == "todre" and cut == 0:
                total += 2 * n * n * hidden
            if spu_input == "normed" and variant in ("spectral-residual", "channel-spectrum"):
                total += 4 * n * hidden
    return total


def _attention_row_flops(plan: BudgetPlan, llm: LlmSpec, layer: int, text_tokens: int) -> int:
    """The last prompt token's attention row in the layer before cut ``layer``; for a cut before layer 0, the extra
    attention pass of layer 0 over the whole prompt that measures it."""
    if layer == 0:
        sequence = text_tokens + plan.num_visual_tokens
        return llm.attention_projection_flops_per_token() * sequence + llm.causal_attention_flops(sequence)
    return 2 * llm.heads * llm.head_dim * (text_tokens + plan.total[layer - 1])


def encoder_ranking_flops(spec: VisionSpec, block_segments: Sequence[Sequence[int]], variant: str) -> int:
    """Cost of the attention probabilities an encoder-side criterion (``visionzip``) computes in the feature layer,
    which fused attention does not give: the CLS token's query against every key, or every query-key product of
    each segment (the layers share segments: such a criterion does not merge)."""
    if variant != "visionzip" or not block_segments:
        return 0
    segments = block_segments[-1]
    return 2 * spec.embed * (sum(segments) if spec.cls_token else sum(s * s for s in segments))


def llm_prefill_flops(spec: LlmSpec, tokens_per_layer: Sequence[int]) -> int:
    """Decoder prefill FLOPs with ``tokens_per_layer`` tokens in each layer, plus the last token's LM head."""
    return 2 * spec.hidden * spec.vocab + sum(spec.layer_flops(layer, n) for layer, n in enumerate(tokens_per_layer))


def kv_cache_bytes(spec: LlmSpec, tokens_per_layer: Sequence[int], bytes_per_element: int) -> int:
    """Keys and values of the attention layers (a linear-attention layer's fixed state is ``LlmSpec.state_bytes``)."""
    attending = (n for layer, n in enumerate(tokens_per_layer) if spec.attends(layer))
    return sum(2 * n * spec.kv_heads * spec.head_dim * bytes_per_element for n in attending)


def estimate_cost(
    vision: VisionSpec,
    llm: LlmSpec,
    compressed: tuple[Sequence[Sequence[int]], BudgetPlan],
    baseline: tuple[Sequence[Sequence[int]], BudgetPlan],
    text_tokens: int,
    config: ResolvedLUVCConfig,
    kv_bytes_per_element: int = 2,
) -> CostReport:
    """Cost of one request under LUVC ``config`` (resolved; ``compressed``) and without (``baseline``): each is the
    encoder's attention segments per block and the decoder's budget plan."""
    (segments, plan), (segments_base, plan_base) = compressed, baseline
    tokens, tokens_base = decoder_tokens(plan, text_tokens), decoder_tokens(plan_base, text_tokens)
    scoring = selection_flops(plan, llm, config, text_tokens)
    return CostReport(
        text_tokens=text_tokens,
        llm_visual_tokens=plan.num_visual_tokens,
        encoder_tokens=tuple(sum(s) for s in segments),
        encoder_tokens_baseline=tuple(sum(s) for s in segments_base),
        decoder_tokens=tokens,
        decoder_tokens_baseline=tokens_base,
        encoder_flops=encoder_flops(vision, segments, plan.num_visual_tokens)
        + encoder_ranking_flops(vision, segments, config.spu_variant),
        encoder_flops_baseline=encoder_flops(vision, segments_base, plan_base.num_visual_tokens),
        llm_prefill_flops=llm_prefill_flops(llm, tokens) + scoring,
        llm_prefill_flops_baseline=llm_prefill_flops(llm, tokens_base),
        selection_flops=scoring,
        kv_cache_bytes=kv_cache_bytes(llm, tokens, kv_bytes_per_element),
        kv_cache_bytes_baseline=kv_cache_bytes(llm, tokens_base, kv_bytes_per_element),
    )
