"""LUVC for LLaVA (CLIP vision tower + Llama).

Order follows upstream ``modeling_llava.py``: vision hook (OIM inside the CLIP encoder layers; a merge unit is one
patch token and the CLS token is never merged) -> projector (unchanged) -> LLM layers (SPU). CLIP adds absolute
position embeddings before the first layer, so no rotary ids need recomputing; LLaVA's LLM positions are 1D.
"""

from __future__ import annotations

import torch
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.llava.modeling_llava import LlavaModel

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.cost import VisionSpec
from luvc.compress.oim import OIMStep, units_per_block
from luvc.errors import critical
from luvc.models.base import patch_modules, patch_oim_layers
from luvc.models.decoder import SpuDecoderMixin
from luvc.models.multimodal import ImageFeatures, LuvcMultimodalMixin
from luvc.models.plan import RequestPlan, VisionTrace
from luvc.models.scope import Scope
from luvc.models.square_vit import SquareViTAdapter
from luvc.prompt import simple_chat_template


class LuvcCLIPEncoderLayer(CLIPEncoderLayer):
    """Modifications:

    - when ``luvc_step`` is set, the patch tokens (all but CLS) leaving this layer go through one OIM step,
      planned once for the configured image size.
    """

    luvc_step: OIMStep | None = None
    luvc_units_in: int = 0
    luvc_oim: Scope  # Scope(merge_units), so traced graphs name the merge

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = super().forward(hidden_states, attention_mask, **kwargs)
        if self.luvc_step is None:
            return hidden_states
        if hidden_states.shape[1] - 1 != self.luvc_units_in:
            critical(
                f"This CLIP layer expects {self.luvc_units_in} patch tokens (the vision config's image size) but got "
                f"{hidden_states.shape[1] - 1}; resize images to the processor's crop size."
            )
        patches = self.luvc_oim(hidden_states[:, 1:], self.luvc_step, 1)
        return torch.cat([hidden_states[:, :1], patches], dim=1)

    def extra_repr(self) -> str:
        return f"luvc_oim_axis={self.luvc_step.axis}" if self.luvc_step is not None else ""


class LuvcLlamaModel(SpuDecoderMixin, LlamaModel):
    """Modifications: see ``SpuDecoderMixin`` (1D positions)."""


class LuvcLlavaModel(LuvcMultimodalMixin, LlavaModel):
    """Modifications (the multimodal model's forward, ``LuvcMultimodalMixin``), for LLaVA: image features from the
    LUVC vision tower (OIM inside the CLIP layers) and the projector; 1-D positions continued by the decoder."""

    luvc_feature_block: int = -1  # the encoder block whose output the projector takes (set by the adapter)
    luvc_token_grid: tuple[int, int, int] | None = None  # an image's LLM token grid (None: the CLS token joins it)

    def luvc_image_features(self, pixel_values: torch.Tensor, inputs: dict, rows: int) -> ImageFeatures:
        size = self.config.vision_config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            critical(
                f"Images are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} pixels but this vision tower takes "
                f"{size}x{size}; preprocess with the model's image processor (prepare_inputs())."
            )
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        attention = tower.encoder.layers[self.luvc_feature_block].self_attn
        with self.luvc_encoder_probe(attention, "first-query") as record:
            features = self.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=self.config.vision_feature_layer,
                vision_feature_select_strategy=self.config.vision_feature_select_strategy,
                return_dict=True,
            ).pooler_output
        ranking = None
        if record is not None:  # VisionZip: the attention the CLS token gives each patch in the feature layer
            cls_row = record.concatenated()  # (images, 1 + patches): the CLS token's own column first
            if self.config.vision_feature_select_strategy == "default":
                ranking = cls_row[:, 1:].reshape(-1)
            else:  # the CLS feature is an LLM token too: it ranks first (a probability is at most 1)
                ranking = torch.cat([torch.full_like(cls_row[:, :1], 2.0), cls_row[:, 1:]], dim=1).reshape(-1)
        grids = None if self.luvc_token_grid is None else [self.luvc_token_grid] * len(features)
        return ImageFeatures(
            torch.cat(list(features), dim=0), [feature.shape[0] for feature in features], ranking=ranking, grids=grids
        )


class LlavaVisionGraph(torch.nn.Module):
    """The vision tower (with OIM) and the projector, as an exportable module:
    ``pixel_values (B, 3, H, W)`` -> ``image_embeds (B, n, D)``."""

    def __init__(self, model: LlavaModel) -> None:
        super().__init__()
        self.model = model

    # Adapted from transformers.models.llava.modeling_llava.LlavaModel.get_image_features (transformers==5.23),
    # which returns a per-image list: iterating the batch would make torch.export specialise its size.
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        config = self.model.config
        hidden_states = self.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        layers = config.vision_feature_layer
        selected = [hidden_states[layer] for layer in ([layers] if isinstance(layers, int) else layers)]
        if config.vision_feature_select_strategy == "default":
            selected = [features[:, 1:] for features in selected]
        return self.model.multi_modal_projector(torch.cat(selected, dim=-1))


class LlavaAdapter(SquareViTAdapter):
    architecture = "LlavaForConditionalGeneration"
    image_placeholder = "<image>"
    builtin_template = "USER: {image}\n{prompt} ASSISTANT:"
    builtin_chat_template = simple_chat_template("(role | upper) + ': '", " ", "<image>\n", "ASSISTANT:")
    processor_size_field = "crop_size"

    def feature_blocks(self) -> list[int]:
        """Indices of the encoder blocks whose output feeds the projector."""
        layers = self.model.config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        return [(layer if layer >= 0 else self.vision_depth + 1 + layer) - 1 for layer in layers]

    def _patch(self, config: ResolvedLUVCConfig) -> None:
        first_feature = min(self.feature_blocks())
        late = [block for block in config.oim_layers if block >= first_feature]
        if late:
            critical(
                f"oim_layers {late} merge after block {first_feature}, whose output LLaVA already takes as image "
                f"features (vision_feature_layer={self.model.config.vision_feature_layer}); use blocks below "
                f"{first_feature} (CLI: --oim-layers)."
            )
        patch_oim_layers(self.vision_blocks, LuvcCLIPEncoderLayer, self.oim_steps(config), self.grid_side**2)
        inner = self.model.model
        patch_modules(config, inner.language_model, (inner.language_model, LuvcLlamaModel), (inner, LuvcLlavaModel))
        inner.luvc_feature_block = max(self.feature_blocks())
        inner.luvc_token_grid = self.token_grid(config)

    def token_grid(self, config: ResolvedLUVCConfig) -> tuple[int, int, int] | None:
        """An image's LLM tokens as a ``(1, rows, cols)`` grid in raster order, after the OIM steps; ``None`` with
        the ``full`` feature strategy (the CLS token is an LLM token too)."""
        if self.model.config.vision_feature_select_strategy != "default":
            return None
        steps = list(self.oim_steps(config).values())
        return steps[-1].grids[0] if steps else (1, self.grid_side, self.grid_side)

    def vision_trace(self, inputs: dict, config: ResolvedLUVCConfig) -> VisionTrace:
        units = units_per_block(self.grid_side**2, self.oim_steps(config), self.vision_depth)
        segments = [1 + count for count in units[:-1]]  # the CLS token and the patches
        at_features = units[min(self.feature_blocks()) + 1]
        images = int(inputs["pixel_values"].shape[0])
        strategy_extra = 0 if self.model.config.vision_feature_select_strategy == "default" else 1
        block_segments = tuple((s,) * images for s in segments)
        grid = self.token_grid(config)
        grids = None if grid is None else (grid,) * images
        return VisionTrace(block_segments, (at_features + strategy_extra,) * images, span_grids=grids)

    def vision_graph(self, pixels: dict, plan: RequestPlan) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        return LlavaVisionGraph(self.model.model), {"pixel_values": pixels["pixel_values"]}

    def vision_spec(self) -> VisionSpec:
        vision, text = self.model.config.vision_config, self.model.config.text_config
        # the projector: two linear layers, vision width to text width, then text width to itself
        return self.tower_spec(2 * vision.hidden_size * text.hidden_size + 2 * text.hidden_size**2, cls_token=True)
