"""The multimodal model's forward under LUVC, one for every family, with per-family hooks.

``LuvcMultimodalMixin.forward`` replaces the upstream multimodal forward: image features come from the LUVC
encoder (``luvc_image_features``: OIM inside, one feature row per kept merge unit), overwrite the prompt's image
placeholders (the prompt holds as many as the compressed grid yields; ``VLMAdapter.prepare_inputs`` builds it),
positions come from the family (``luvc_position_ids``: M-RoPE from the compressed grid, or ``None`` for the
decoder's own), and each image's visual span and the budget plan go to the SPU decoder (``SpuDecoderMixin``). The
budget plan is the request plan's (``VLMAdapter.plan``): both read one cache on this model (``luvc_budget_plans``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.criteria import ranks_in_encoder
from luvc.models.attention_probe import Reduction, attention_probe
from luvc.models.cache import LuvcCache, new_cache
from luvc.models.compat import take_cache
from luvc.models.decoder import NO_VISUALS, LuvcDecoderOutput, VisualPlan
from luvc.models.hf_module import HFModule
from luvc.models.plan import LUVC_BUDGET_PLANS, planned_budgets, plans_on
from luvc.models.spans import scatter_visual_features


@dataclasses.dataclass(frozen=True)
class ImageFeatures:
    """The LLM-ready features of a batch's images (or videos), rows of all concatenated: ``embeds (n, D)``, how many
    rows each has, (Qwen-VL) what the rotary index takes about the compressed grids (``rope_grids``:
    ``image_grid_thw`` or ``video_grid_thw``, and Qwen2.5-VL's ``second_per_grid_ts``), (Qwen3-VL) the DeepStack
    planes ``(n, D)`` added after the first decoder layers, the placeholder token they replace (``None``: the
    image token), (VisionZip) the encoder's ranking ``(n,)`` of the rows, and each span's token grid (``None``: the
    tokens form none)."""

    embeds: torch.Tensor
    tokens_per_image: list[int]
    rope_grids: dict[str, torch.Tensor] | None = None
    deepstack: tuple[torch.Tensor, ...] = ()
    token_id: int | None = None
    ranking: torch.Tensor | None = None
    grids: list[tuple[int, int, int]] | None = None  # each span's (blocks, rows, cols) token grid, as tokens_per_image


class LuvcMultimodalMixin:
    """Modifications (the multimodal model's forward): see the module docstring. A family implements
    ``luvc_image_features`` and may override ``luvc_check_inputs`` and ``luvc_position_ids``."""

    luvc_config: ResolvedLUVCConfig
    # the upstream multimodal model's, which this mixin extends
    config: HFModule
    language_model: HFModule
    get_input_embeddings: Callable[[], nn.Module]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: LuvcCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> LuvcDecoderOutput:
        past_key_values = take_cache(past_key_values, kwargs)
        self.luvc_check_inputs(kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        use_cache = self.config.text_config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = new_cache(self.config.text_config)
        placed, budget_plan = None, None
        groups = self.luvc_visual_features(pixel_values, kwargs, inputs_embeds.shape[0])
        if groups:
            if input_ids is None:
                raise ValueError("visual features are placed at the prompt's placeholder ids: pass input_ids")
            placed = scatter_visual_features(input_ids, inputs_embeds, groups, self.config.image_token_id)
            inputs_embeds = placed.inputs_embeds
            span_tokens = [count for _, count in placed.spans]
            layers = self.config.text_config.num_hidden_layers
            budget_plan = planned_budgets(plans_on(self, LUVC_BUDGET_PLANS), layers, span_tokens, self.luvc_config)
        if position_ids is None:
            batch, length = inputs_embeds.shape[:2]
            position_ids = self.luvc_position_ids(input_ids, groups, past_key_values, batch, length, kwargs)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            visual=VisualPlan(placed.spans, budget_plan, placed.deepstack, placed.ranking, placed.grids)
            if placed
            else NO_VISUALS,
        )
        outputs.image_hidden_states = torch.cat([group.embeds for group in groups]) if groups else None
        return outputs

    @property
    def luvc_ranks_in_encoder(self) -> bool:
        """Whether the vision side measures a ranking of its tokens (``ImageFeatures.ranking``, VisionZip)."""
        return ranks_in_encoder(self.luvc_config.spu_variant)

    def luvc_encoder_probe(self, attention: HFModule, reduction: Reduction) -> contextlib.AbstractContextManager:
        """A probe on the encoder's feature-layer ``attention`` when the criterion ranks there (VisionZip), yielding
        its ``AttentionRecord``; else a context that does nothing and yields ``None``."""
        return attention_probe(attention, reduction) if self.luvc_ranks_in_encoder else contextlib.nullcontext()

    def luvc_check_inputs(self, inputs: dict) -> None:
        """Refuse what the LUVC path does not take (the forward's other keyword arguments are in ``inputs``)."""

    def luvc_visual_features(self, pixel_values: torch.Tensor | None, inputs: dict, rows: int) -> list[ImageFeatures]:
        """The request's feature groups: its images' (``luvc_image_features``), and for a family that takes videos
        its videos' too."""
        return [] if pixel_values is None else [self.luvc_image_features(pixel_values, inputs, rows)]

    def luvc_image_features(self, pixel_values: torch.Tensor, inputs: dict, rows: int) -> ImageFeatures:
        """The batch's image (or video) features (``rows``: prompt rows; ``inputs``: the forward's other keyword
        arguments, where a family that takes videos finds which it got)."""
        raise NotImplementedError

    def luvc_position_ids(
        self,
        input_ids: torch.Tensor | None,
        groups: list[ImageFeatures],
        cache: LuvcCache | None,
        batch: int,
        length: int,
        inputs: dict,
    ) -> torch.Tensor | None:
        """Position ids of this call, or ``None`` for the decoder's own (1-D, continued from the cache)."""
        return None
