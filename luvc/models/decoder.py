"""The decoder loop with the Spectrum Pruning Unit, shared by every family's language model.

``SpuDecoderMixin.forward`` replaces the upstream text-model forward. Before each layer whose budget is lower
than what arrives, it scores each image's visual tokens (no attention, see ``luvc.compress.spu``), keeps the
top-k per image in ascending original order, and gathers the hidden states and the rotary cos/sin (which carry
the original position ids, so text RoPE is unchanged). Text tokens are never pruned.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from luvc.compress.budgets import BudgetPlan
from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.criteria import LLM_ATTENTION, LLM_ATTENTION_EACH_CUT, criterion
from luvc.compress.scorers import Grid, Scorer, SpanLayout, make_scorer
from luvc.errors import critical
from luvc.models.attention_probe import attention_probe
from luvc.models.cache import LINEAR_ATTENTION, LuvcCache, new_cache
from luvc.models.compat import cache_kwargs, take_cache
from luvc.models.hf_module import HFModule
from luvc.models.padded_rows import RowTurns
from luvc.models.scope import scopes
from luvc.models.spans import Span, TokenPlacement, add_visual_plane, original_ids, spu_prune

GRID_REFUSAL = (
    "spu_lowpass=grid needs each image's token grid, which this model's visual tokens do not form (LLaVA with "
    "vision_feature_select_strategy 'full' adds the CLS token); use --option spu_lowpass=raster."
)


@dataclasses.dataclass
class LuvcDecoderOutput(BaseModelOutputWithPast):
    """``kept_visual_indices[l]``: ``(B, k_l)`` indices (into the LLM's visual tokens, all images concatenated)
    of the tokens that entered layer ``l``, for every layer where SPU pruned. ``image_hidden_states``: the
    visual embeddings after OIM and the projector, as scattered into the prompt (multimodal models only)."""

    kept_visual_indices: dict[int, torch.Tensor] | None = None
    image_hidden_states: torch.Tensor | None = None
    # read by upstream's ...ForConditionalGeneration.forward in some releases (luvc.models.compat); always None
    rope_deltas: torch.Tensor | None = None
    image_outputs: object | None = None
    video_outputs: object | None = None


def visual_columns(values: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """``(B, N)``: the columns of ``values (B, S)`` at the visual ``spans``, in span order."""
    return torch.cat([values[:, start : start + count] for start, count in spans], dim=1)


def last_token_attention(layer: HFModule, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``(B, S)``: the attention probabilities (mean over heads) that the last token of ``hidden`` gives every token
    in ``layer``'s self-attention, computed from the layer's input (the output is discarded)."""
    with attention_probe(layer.self_attn, "last-query") as record:
        normed = layer.input_layernorm(hidden)
        layer.self_attn(hidden_states=normed, position_embeddings=(cos, sin), attention_mask=None)
    return record.concatenated()


def install_spu_scopes(text_model: HFModule) -> None:
    """Give a patched text model one ``Scope(spu_prune)`` per decoder layer (named ``luvc_spu.{layer}``)."""
    if not isinstance(getattr(text_model, "luvc_spu", None), nn.ModuleList):
        text_model.luvc_spu = scopes(spu_prune, text_model.config.num_hidden_layers)


def causal_mask(batch: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``(B, 1, S, S)`` causal mask for attention implementations that need one (eager)."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)
    return mask.expand(batch, 1, length, length)


def _ranked_cuts(config: ResolvedLUVCConfig, cuts: Sequence[int]) -> set[int]:
    """The cuts that read a decoder layer's attention ranking, measured just before them: FastV's first cut (its
    later cuts keep the best-ranked survivors), every cut of PDrop, every cut after ToDRE's first."""
    if not cuts or config.spu_variant in (None, "none"):
        return set()
    chosen = criterion(config.spu_variant)
    if chosen.ranking == LLM_ATTENTION:
        return {cuts[0]}
    if chosen.ranking == LLM_ATTENTION_EACH_CUT:
        return set(cuts[chosen.ranking_from_cut :])
    return set()


def _check_layout(attention_mask: torch.Tensor | None, cache: LuvcCache | None, length: int) -> None:
    """Refuse what the LUVC decoder cannot take: padded rows, or more than one token after the prompt."""
    if attention_mask is not None and not bool(attention_mask.all()):
        critical(
            "Padded batches are not supported by the LUVC decoder: every row must have the same prompt "
            "length. Pad nothing, or run the rows one at a time."
        )
    if cache is not None and cache.get_seq_length() > 0 and length > 1:
        critical(
            "The LUVC decoder takes the prompt in one prefill and then one token per step; got "
            f"{length} tokens with a non-empty cache."
        )


class CutScoring:
    """What the cuts of one forward score with, layer by layer. A criterion that ranks by attention (FastV, PDrop,
    ToDRE) measures the last prompt token's attention in the layer before each cut it ranks (``probe``), or, for a cut
    before layer 0, layer 0's attention on its input; a ranking from the vision side (VisionZip) is used as it comes;
    a variation criterion (V2Drop) scores what the layer before changed; otherwise a cut scores the residual stream
    entering its layer, or its normed input (``spu_input="normed"``)."""

    def __init__(
        self,
        config: ResolvedLUVCConfig,
        cuts: Sequence[int],
        spans: Sequence[Span],
        layout: SpanLayout,
        visual_ranking: torch.Tensor | None,
    ) -> None:
        self.config, self.cuts, self.layout = config, list(cuts), layout
        self.ranked_cuts = _ranked_cuts(config, cuts)
        self.reads_variation = bool(cuts) and criterion(config.spu_variant).reads_variation
        self.num_visual = sum(count for _, count in spans)
        self.ranking = visual_ranking
        self.columns: torch.Tensor | None = None  # the attention columns of the visual tokens, from the last probe
        self.previous: torch.Tensor | None = None  # the last layer's input, for a variation criterion

    def scorer(
        self, layer: int, decoder_layer: HFModule, hidden, cos, sin, spans, visual_ids
    ) -> tuple[Scorer, torch.Tensor]:
        """The scorer of the cut before ``layer`` and what it scores."""
        if layer in self.ranked_cuts:
            if layer == 0:  # a cut before layer 0: layer 0's attention on its input
                self.columns = visual_columns(last_token_attention(decoder_layer, hidden, cos, sin), spans)
            if self.columns is None:
                raise RuntimeError(f"no attention was measured before the ranked cut at layer {layer}")
            if visual_ids is None:  # no cut yet: the columns are every visual token's, in order
                self.ranking = self.columns.float()
            else:
                ranking = torch.zeros(hidden.shape[0], self.num_visual, device=hidden.device)
                self.ranking = ranking.scatter(1, visual_ids, self.columns.float())
        scorer = make_scorer(self.config, self.num_visual, self.ranking, self.layout, self.cuts.index(layer))
        if self.reads_variation:
            return scorer, hidden if self.previous is None else hidden - self.previous
        if self.config.spu_input == "normed":
            return scorer, decoder_layer.input_layernorm(hidden)
        return scorer, hidden

    def probe(self, layer: int, decoder_layer: HFModule, hidden: torch.Tensor):
        """What runs around ``layer``: an attention probe when a ranked cut follows it (else nothing)."""
        if self.reads_variation:
            self.previous = hidden
        if layer + 1 in self.ranked_cuts:
            return attention_probe(decoder_layer.self_attn, "last-query")
        return contextlib.nullcontext()

    def measured(self, record, spans: Sequence[Span]) -> None:
        """Keep the visual tokens' attention columns a probe recorded (``None``: no probe ran)."""
        if record is not None:
            self.columns = visual_columns(record.concatenated(), spans)


@dataclasses.dataclass(frozen=True)
class VisualPlan:
    """What the decoder loop knows of a prompt's visual tokens and rows, fixed before it runs: each image's ``spans``
    in one row, the ``budgets`` of the layers, DeepStack's ``deepstack`` planes (Qwen3-VL), the vision side's
    ``ranking`` (VisionZip), each span's token grid (``grids``), and in exported graphs each row's ``shift`` of its
    spans and its ``row_lengths`` (its tokens, then padding on the right: a linear-attention layer runs on rows turned
    to put the padding first, ``luvc.models.padded_rows``)."""

    spans: Sequence[Span] = ()
    budgets: BudgetPlan | None = None
    deepstack: Sequence[torch.Tensor] = ()
    ranking: torch.Tensor | None = None
    grids: Sequence[Grid] | None = None
    shift: torch.Tensor | None = None
    row_lengths: torch.Tensor | None = None


NO_VISUALS = VisualPlan()


class SpuDecoderMixin:
    """Modifications (mixed into a family's text model, before the upstream class):

    - the forward prunes visual tokens before layers whose budget drops (``budget_plan``), keeping them in
      causal order with their original rotary positions;
    - each layer caches only the tokens it processed (``LuvcCache``); positions continue from the original
      prompt length;
    - prefill starts from an empty cache; padding masks are not supported (in PyTorch batch rows share one layout;
      exported graphs take each row's ``visual_shift`` and pad rows on the right, which causal attention never
      reads);
    - DeepStack planes (Qwen3-VL) are added after the first layers to the visual tokens those layers kept;
    - a criterion that ranks by a decoder layer's attention measures it in the layer before the cut (that layer's
      attention is probed), or, for a cut before layer 0, from layer 0's attention on its input: once, before the
      first cut (FastV), or before every cut it ranks (PDrop, ToDRE); a ranking from the vision side
      (``visual_ranking``, VisionZip) is used as it comes;
    - what a cut scores is the residual stream entering the layer, its normed input (``spu_input="normed"``), or
      what the layer before changed (V2Drop).
    """

    luvc_config: ResolvedLUVCConfig
    luvc_spu: nn.ModuleList  # one Scope(spu_prune) per layer, see install_spu_scopes
    # the upstream text model's, which this mixin extends
    config: HFModule
    embed_tokens: HFModule
    rotary_emb: HFModule
    layers: nn.ModuleList
    norm: HFModule

    def luvc_rotary_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Family hook: the position ids the rotary embedding takes, from what the caller passed."""
        return position_ids

    def luvc_rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Family hook: the rotary ``(cos, sin)`` of every token, ``(B, S, D)`` each, which a cut gathers with the
        tokens (a model with one rotary table per kind of layer returns them side by side, ``luvc_layer_rotary``)."""
        return self.rotary_emb(hidden, self.luvc_rotary_ids(position_ids))

    def luvc_layer_rotary(
        self, layer_index: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Family hook: the part of ``luvc_rotary``'s tables that decoder layer ``layer_index`` takes (all of them)."""
        return cos, sin

    def luvc_default_positions(self, batch: int, length: int, start: int, device: torch.device) -> torch.Tensor:
        """Family hook: positions of ``length`` new tokens after ``start`` when the caller gave none."""
        return (torch.arange(length, device=device) + start).expand(batch, length)

    def luvc_attends(self, layer_index: int) -> bool:
        """Whether decoder layer ``layer_index`` attends (takes a mask, keeps keys and values); a hybrid model's
        linear-attention layers (Qwen3.5) do not: they carry a convolution state and a recurrent state instead."""
        layer_types = getattr(self.config, "layer_types", None)
        return layer_types is None or layer_types[layer_index] != LINEAR_ATTENTION

    def _check_probes(self, ranked_cuts: set[int]) -> None:
        """Refuse a criterion that ranks by the attention of a layer that does not attend."""
        linear = sorted(layer for layer in {max(cut - 1, 0) for cut in ranked_cuts} if not self.luvc_attends(layer))
        if linear:
            critical(
                f"The criterion {self.luvc_config.spu_variant!r} ranks visual tokens by the attention of the layer "
                f"before each cut, and in this model layer(s) {linear} are linear attention, which computes none; "
                "use a criterion that scores the tokens themselves (LUVC's SPU: spectral-residual or channel-spectrum)."
            )

    # the decoder loop compiled for prefills (``luvc.models.compiled.CompiledLoop``); None: eager
    luvc_compiled: Callable[..., LuvcDecoderOutput] | None = None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: LuvcCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> LuvcDecoderOutput:
        """Check what the host can check (``_check_layout`` reads the mask), then run the decoder loop
        (``luvc_layers``): compiled for a prefill when ``luvc_compiled`` is set, eager otherwise."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        past_key_values = take_cache(past_key_values, kwargs)
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = new_cache(self.config)
        elif isinstance(past_key_values, LuvcCache):
            past_key_values.lay_out(self.config)
        _check_layout(attention_mask, past_key_values, hidden.shape[1])
        compiled = self.luvc_compiled
        if compiled is not None and hidden.shape[1] > 1 and not torch.compiler.is_compiling():
            return compiled(hidden, position_ids, past_key_values, use_cache, **kwargs)
        return self.luvc_layers(hidden, position_ids, past_key_values, use_cache, **kwargs)

    def luvc_layers(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor | None,
        past_key_values: LuvcCache | None,
        use_cache: bool,
        visual: VisualPlan = NO_VISUALS,
        **kwargs,
    ) -> LuvcDecoderOutput:
        """The decoder loop from the input embeddings ``hidden`` and the prompt's ``visual`` plan: no value is read
        back to the host (spans and budgets are Python values fixed before it), so it compiles whole
        (``torch.compile(fullgraph=True)``)."""
        visual_spans, budget_plan, deepstack = visual.spans, visual.budgets, visual.deepstack
        visual_ranking, span_grids, visual_shift = visual.ranking, visual.grids, visual.shift
        batch, length = hidden.shape[:2]
        start = getattr(past_key_values, "num_positions", 0) if past_key_values is not None else 0
        if position_ids is None:
            position_ids = self.luvc_default_positions(batch, length, start, hidden.device)
        cos, sin = self.luvc_rotary(hidden, position_ids)

        pruned = budget_plan if visual_spans else None
        cuts = sorted(pruned.prune_layers()) if pruned is not None else []
        per_image = pruned.per_image if pruned is not None else ()
        spans = tuple(visual_spans)
        layout = SpanLayout.of(tuple(c for _, c in spans), None if span_grids is None else tuple(span_grids))
        scoring = CutScoring(self.luvc_config, cuts, spans, layout, visual_ranking)
        if scoring.ranked_cuts and visual_shift is not None:
            raise ValueError("a criterion that ranks by attention reads the spans at fixed positions; give no shift")
        if self.luvc_config.spu_lowpass == "grid" and cuts and layout.grids is None:
            critical(GRID_REFUSAL)
        self._check_probes(scoring.ranked_cuts)
        visual_ids = None  # no cut yet (``original_ids``)
        kept_visual_indices: dict[int, torch.Tensor] = {}
        turns = RowTurns(visual.row_lengths, length)
        for layer_index, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            layer_cos, layer_sin = self.luvc_layer_rotary(layer_index, cos, sin)
            if layer_index in cuts:
                scorer, score_input = scoring.scorer(
                    layer_index, decoder_layer, hidden, layer_cos, layer_sin, spans, visual_ids
                )
                unit = self.luvc_spu[layer_index]
                if visual_ids is None and getattr(unit.fn, "takes_visual_ids", False):  # a plugin op's input
                    visual_ids = original_ids(batch, scoring.num_visual, hidden.device)
                hidden, cos, sin, kept_ids, spans = unit(
                    hidden, cos, sin, visual_ids, spans, per_image[layer_index], scorer, score_input, visual_shift
                )
                visual_ids = kept_visual_indices[layer_index] = kept_ids
                layer_cos, layer_sin = self.luvc_layer_rotary(layer_index, cos, sin)
            turned = None if self.luvc_attends(layer_index) else turns.at(hidden)
            mask: torch.Tensor | None
            if turned is not None:
                hidden, mask = turned.turn(hidden), turned.tokens
            else:
                placement = TokenPlacement(start, tuple(visual_spans), spans, visual_ids, visual_shift)
                mask = self._layer_mask(layer_index, hidden, length, past_key_values, placement)
            with scoring.probe(layer_index, decoder_layer, hidden) as record:
                hidden = decoder_layer(
                    hidden,
                    attention_mask=mask,
                    position_embeddings=(layer_cos, layer_sin),
                    position_ids=None,
                    use_cache=use_cache,
                    **cache_kwargs(past_key_values),
                    **kwargs,
                )
            if turned is not None:
                hidden = turned.turn_back(hidden)
            scoring.measured(record, spans)  # the layer before a ranked cut: the last prompt token's attention
            if layer_index < len(deepstack):
                hidden = add_visual_plane(hidden, spans, visual_ids, deepstack[layer_index], visual_shift)
        hidden = self.norm(hidden)
        if isinstance(past_key_values, LuvcCache):
            past_key_values.num_positions = start + length
        return LuvcDecoderOutput(
            last_hidden_state=hidden, kept_visual_indices=kept_visual_indices, **cache_kwargs(past_key_values)
        )

    def _layer_mask(
        self,
        layer_index: int,
        hidden: torch.Tensor,
        length: int,
        cache: LuvcCache | None,
        placement: TokenPlacement,
    ) -> torch.Tensor | None:
        """The mask decoder layer ``layer_index`` takes: none for a linear-attention layer; causal for a prefill
        under eager attention (the fused kernels take ``None`` as causal); for a one-token step, the cache's. A family
        whose masks depend on where its tokens came from (Gemma 3) reads ``placement``."""
        if not self.luvc_attends(layer_index):
            return None
        if length > 1:
            eager = self.config._attn_implementation == "eager"
            return causal_mask(hidden.shape[0], hidden.shape[1], hidden.dtype, hidden.device) if eager else None
        return cache.attention_mask(layer_index, hidden) if isinstance(cache, LuvcCache) else None

    def extra_repr(self) -> str:
        config = self.luvc_config
        if config.spu_variant == "none":
            return "luvc_spu=off"
        budgets = "linear" if config.budgets is None else list(config.budgets)
        return (
            f"luvc_spu={config.spu_variant}, rho={config.rho}, spu_start={config.spu_start}, "
            f"spu_every={config.spu_every}, budgets={budgets}, budget_tile={config.budget_tile}, "
            f"final_zero={config.final_zero}, "
            f"spu_keep={config.spu_keep}, spu_input={config.spu_input}, spu_lowpass={config.spu_lowpass}"
        )
