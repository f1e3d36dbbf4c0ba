"""LUVC for Gemma 3 (SigLIP encoder, average-pooling projector, Gemma 3 language model).

Order follows upstream ``modeling_gemma3.py``: vision tower (OIM inside the SigLIP encoder layers; a merge unit is one
patch token, there is no CLS token) -> projector (average pooling to ``mm_tokens_per_image`` tokens, norm, projection)
-> LLM layers (SPU).

- **Merging goes before the pooling, inside the encoder.** The projector's pooling is itself a fixed merge: it
  averages each ``k x k`` window of patches (Gemma 3: 4 x 4 of a 64 x 64 grid) into one LLM token. An OIM step averages
  adjacent pairs along one axis, aligned with those windows, so after OIM the projector pools the merged grid with a
  kernel smaller by the merged factors (one W step: 4 x 2) and every LLM token still averages the same patch window,
  while the encoder blocks after the step run on half the tokens: OIM saves encoder compute, where nearly all of the
  vision side's cost is, without moving the image's LLM tokens. An axis merged below the pooled grid (more steps than
  the kernel has factors) pools with kernel 1 there and hands the LLM fewer tokens.
- **SPU in a language model of sliding-window and global layers.** A prompt's image tokens attend to each other both
  ways during prefill (upstream's ``token_type_ids``); a sliding layer lets a token see keys fewer than
  ``sliding_window`` positions before it. After a cut both rules are kept by the tokens' request positions: the kept
  tokens of one image still see each other both ways, and a sliding layer's window covers the same positions as in
  the uncompressed model (so a window holds fewer keys where tokens were pruned, never keys from further back).
  The decode step masks a sliding layer's keys by the positions the cache records for them (``LuvcCache``).
- Each kind of layer has its own rotary table (local and global bases): both are gathered at each cut, side by side.
- In exported graphs the prefill computes each token's request position where it sits (``TokenPlacement.positions``,
  the rows' spans moved by their shifts) for a sliding layer's window; the decode step takes where each layer's window
  starts in its cache (``kv_window_start``, computed on the host: ``luvc.runtime.sliding_window``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true
from transformers.models.gemma3.modeling_gemma3 import (
    Gemma3Model,
    Gemma3MultiModalProjector,
    Gemma3TextModel,
)
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.cost import VisionSpec
from luvc.compress.oim import OIMStep, units_per_block
from luvc.errors import critical
from luvc.models.base import patch_modules, patch_oim_layers, swap_class
from luvc.models.cache import LuvcCache
from luvc.models.decoder import SpuDecoderMixin
from luvc.models.multimodal import ImageFeatures, LuvcMultimodalMixin
from luvc.models.plan import RequestPlan, VisionTrace
from luvc.models.scope import Scope
from luvc.models.spans import TokenPlacement
from luvc.models.square_vit import SquareViTAdapter
from luvc.prompt import simple_chat_template

SLIDING = "sliding_attention"


def pooling_kernel(grid: tuple[int, int], tokens_per_side: int) -> tuple[int, int]:
    """The projector's pooling kernel ``(rows, cols)`` for an encoder output ``grid``: what takes each axis to
    ``tokens_per_side`` tokens, or 1 on an axis OIM already merged to that many or fewer."""
    kernel = []
    for side in grid:
        if side > tokens_per_side and side % tokens_per_side:
            critical(
                f"The encoder's {grid[0]}x{grid[1]} patch grid does not pool evenly to {tokens_per_side} tokens a "
                "side; use an image size whose patch grid is a multiple of the projector's (the checkpoint's own)."
            )
        kernel.append(max(side // tokens_per_side, 1))
    return kernel[0], kernel[1]


class LuvcSiglipEncoderLayer(SiglipEncoderLayer):
    """Modifications:

    - when ``luvc_step`` is set, the patch tokens leaving this layer go through one OIM step, planned once for the
      configured image size (SigLIP has no CLS token: every token is a patch).
    """

    luvc_step: OIMStep | None = None
    luvc_units_in: int = 0
    luvc_oim: Scope  # Scope(merge_units), so traced graphs name the merge

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs) -> torch.Tensor:
        hidden_states = super().forward(hidden_states, attention_mask, **kwargs)
        if self.luvc_step is None:
            return hidden_states
        if hidden_states.shape[1] != self.luvc_units_in:
            critical(
                f"This SigLIP layer expects {self.luvc_units_in} patch tokens (the vision config's image size) but got "
                f"{hidden_states.shape[1]}; resize images to the processor's size."
            )
        return self.luvc_oim(hidden_states, self.luvc_step, 1)

    def extra_repr(self) -> str:
        return f"luvc_oim_axis={self.luvc_step.axis}" if self.luvc_step is not None else ""


class LuvcGemma3MultiModalProjector(Gemma3MultiModalProjector):
    """Modifications: pools the encoder's output grid after OIM (``luvc_grid``) with the kernel that keeps each LLM
    token's patch window (``pooling_kernel``); ``None``: upstream's square grid."""

    luvc_grid: tuple[int, int] | None = None

    def forward(self, vision_outputs: torch.Tensor) -> torch.Tensor:
        if self.luvc_grid is None:
            return super().forward(vision_outputs)
        rows, cols = self.luvc_grid
        kernel = pooling_kernel(self.luvc_grid, self.tokens_per_side)
        batch, _, width = vision_outputs.shape
        planes = vision_outputs.transpose(1, 2).reshape(batch, width, rows, cols).contiguous()
        pooled = F.avg_pool2d(planes, kernel_size=kernel, stride=kernel).flatten(2).transpose(1, 2)
        normed = self.mm_soft_emb_norm(pooled)
        return torch.matmul(normed, self.mm_input_projection_weight).type_as(vision_outputs)


class LuvcGemma3TextModel(SpuDecoderMixin, Gemma3TextModel):
    """Modifications: see ``SpuDecoderMixin``; the two rotary tables (global, sliding) ride side by side through the
    cuts; each layer's mask is built from its tokens' request positions (``TokenPlacement``): causal, an image's
    tokens both ways, a sliding layer's window by position."""

    @property
    def luvc_rotary_kinds(self) -> list[str]:
        """The kinds of layer with a rotary table of their own, in the order their tables sit side by side."""
        return sorted(set(self.config.layer_types))

    def luvc_rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tables = [self.rotary_emb(hidden, position_ids, kind) for kind in self.luvc_rotary_kinds]
        return torch.cat([cos for cos, _ in tables], dim=-1), torch.cat([sin for _, sin in tables], dim=-1)

    def luvc_layer_rotary(
        self, layer_index: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kinds = self.luvc_rotary_kinds
        width = cos.shape[-1] // len(kinds)
        start = kinds.index(self.config.layer_types[layer_index]) * width
        return cos[..., start : start + width], sin[..., start : start + width]

    def _window(self, layer_index: int) -> int | None:
        return self.config.sliding_window if self.config.layer_types[layer_index] == SLIDING else None

    def _layer_mask(
        self,
        layer_index: int,
        hidden: torch.Tensor,
        length: int,
        cache: LuvcCache | None,
        placement: TokenPlacement,
    ) -> torch.Tensor | None:
        batch, tokens, device = hidden.shape[0], hidden.shape[1], hidden.device  # tokens: what the cuts left of length
        window = self._window(layer_index)
        # an exported prefill's length is symbolic: unless it provably fits, the window is applied (by position, below;
        # an exported decode step, at start 0, takes the window's first key from its cache: ``attention_mask``)
        if window is None or statically_known_true(placement.start + length <= window):  # it reaches past no key
            if isinstance(cache, LuvcCache) and placement.shift is None:  # kept for the steps whose window binds
                cache.held_positions(layer_index, placement.positions(batch, tokens, device))
            if length == 1 or not placement.spans:
                return super()._layer_mask(layer_index, hidden, length, cache, placement)  # causal; the cache's
            index = torch.arange(tokens, device=device)
            return self._as_mask(self._with_images(index[None, :] <= index[:, None], placement, tokens), hidden)
        positions = placement.positions(batch, tokens, device)  # an exported prefill's rows: moved by their shifts
        keys = cache.held_positions(layer_index, positions) if isinstance(cache, LuvcCache) else positions
        queries = positions[:, :, None]
        allowed = keys[:, None, :] <= queries
        if length > 1:
            allowed = self._with_images(allowed, placement, tokens)
        return self._as_mask(allowed & (keys[:, None, :] > queries - window), hidden)

    @staticmethod
    def _with_images(allowed: torch.Tensor, placement: TokenPlacement, tokens: int) -> torch.Tensor:
        """``allowed`` ``([B,] S, S)`` of a prefill, and each image's tokens seeing each other both ways."""
        blocks = placement.blocks(tokens, allowed.device)  # (B or 1, S)
        same_image = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
        return allowed | same_image

    def _as_mask(self, allowed: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``allowed`` ``(B or 1, queries, keys)`` as the ``(B, 1, queries, keys)`` mask the attention implementation
        takes: boolean, or additive under eager attention."""
        allowed = allowed.expand(hidden.shape[0], -1, -1)[:, None]
        if self.config._attn_implementation != "eager":
            return allowed
        blocked = torch.full((), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        return torch.where(allowed, torch.zeros((), dtype=hidden.dtype, device=hidden.device), blocked)


class LuvcGemma3Model(LuvcMultimodalMixin, Gemma3Model):
    """Modifications (the multimodal model's forward, ``LuvcMultimodalMixin``), for Gemma 3: image features from the
    LUVC vision tower (OIM inside the SigLIP layers) and the pooling projector; 1-D positions continued by the
    decoder; ``token_type_ids`` are taken and not needed (each image's tokens are found by their id)."""

    def luvc_image_features(self, pixel_values: torch.Tensor, inputs: dict, rows: int) -> ImageFeatures:
        size = self.config.vision_config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            critical(
                f"Images are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} pixels but this vision tower takes "
                f"{size}x{size}; preprocess with the model's image processor (prepare_inputs())."
            )
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        with self.luvc_encoder_probe(tower.encoder.layers[-1].self_attn, "received") as record:
            features = self.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        projector: Any = self.multi_modal_projector
        grid = projector.luvc_grid or (projector.patches_per_image,) * 2
        kernel = pooling_kernel(grid, projector.tokens_per_side)
        pooled = (grid[0] // kernel[0], grid[1] // kernel[1])
        ranking = None
        if record is not None:  # VisionZip: the attention each patch receives in the last block, summed per LLM token
            received = record.concatenated().reshape(-1, 1, *grid)
            ranking = F.avg_pool2d(received, kernel_size=kernel, stride=kernel).reshape(-1) * (kernel[0] * kernel[1])
        return ImageFeatures(
            features.reshape(-1, features.shape[-1]),
            [features.shape[1]] * features.shape[0],
            ranking=ranking,
            grids=[(1, *pooled)] * features.shape[0],
        )


class Gemma3VisionGraph(torch.nn.Module):
    """The vision tower (with OIM) and the pooling projector, as an exportable module:
    ``pixel_values (B, 3, H, W)`` -> ``image_embeds (B, n, D)``."""

    def __init__(self, model: Gemma3Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_tower(pixel_values=pixel_values).last_hidden_state
        return self.model.multi_modal_projector(hidden)


def pan_and_scan_settings() -> dict[str, Any]:
    """The crop settings upstream's ``Gemma3Processor`` passes its image processor with ``do_pan_and_scan=True`` (its
    defaults: crops of at least 256 pixels, at most 4, for an image at least 1.2 times wider than tall or taller
    than wide)."""
    from transformers.models.gemma3 import processing_gemma3

    defaults = getattr(processing_gemma3.Gemma3Processor, "images_kwargs", None)
    if defaults is None:
        critical(
            "This transformers has no Gemma3Processor.images_kwargs (its pan-and-scan defaults); upgrade transformers "
            "or leave pan_and_scan off."
        )
    return {name: value for name, value in defaults.items() if name.startswith("pan_and_scan")} | {
        "do_pan_and_scan": True
    }


class Gemma3Adapter(SquareViTAdapter):
    """Gemma 3: images at the encoder's size, each image's soft tokens between its begin and end tokens; several
    images in one prompt follow each other as the processor writes them. With ``pan_and_scan`` (PyTorch only, off
    as upstream's processor has it) a wide or tall image also brings its crops: a view each, one SPU span each."""

    architecture = "Gemma3ForConditionalGeneration"
    visual_separator = ""  # each image's text starts and ends with its blank lines, as the processor writes it
    processor_only_keys = ("num_crops",)  # pan-and-scan: the crops of each image, after its own view
    takes_pan_and_scan = True
    # upstream's text for an image and its crops (``Gemma3Processor``), around each view's image text
    crops_text = ("Here is the original image ", " and here are some crops to help you see better ", " ")
    image_placeholder = "<start_of_image>"  # what the chat template renders for an image (the processor's too)
    builtin_template = "<start_of_turn>user\n{image}{prompt}<end_of_turn>\n<start_of_turn>model\n"
    builtin_chat_template = simple_chat_template(
        "'<start_of_turn>' + (role | replace('assistant', 'model')) + '\\n'",
        "<end_of_turn>\n",
        "<start_of_image>",
        "<start_of_turn>model\n",
    )

    def __init__(self, model, tokenizer, image_processor, name: str | None = None) -> None:
        super().__init__(model, tokenizer, image_processor, name)
        if getattr(image_processor, "do_pan_and_scan", None):  # one view an image, as upstream's processor calls it
            image_processor.do_pan_and_scan = False  # (also in an export's saved processor, which the runtime uses)

    @property
    def attention_window(self) -> int | None:
        text = self.model.config.text_config
        return text.sliding_window if SLIDING in text.layer_types else None

    @property
    def sliding_layers(self) -> tuple[int, ...]:
        text = self.model.config.text_config
        return tuple(layer for layer, kind in enumerate(text.layer_types[: text.num_hidden_layers]) if kind == SLIDING)

    @property
    def tokens_per_side(self) -> int:
        """LLM tokens a side of an image without OIM (``mm_tokens_per_image`` is their square)."""
        return int(round(self.model.config.mm_tokens_per_image**0.5))

    def encoder_grid(self, config: ResolvedLUVCConfig) -> tuple[int, int]:
        """The encoder's output patch grid ``(rows, cols)`` after the OIM steps of ``config``."""
        steps = list(self.oim_steps(config).values())
        _, rows, cols = steps[-1].grids[0] if steps else (1, self.grid_side, self.grid_side)
        return rows, cols

    def token_grid(self, config: ResolvedLUVCConfig) -> tuple[int, int, int]:
        """An image's LLM tokens as a ``(1, rows, cols)`` grid in raster order: the encoder grid, pooled."""
        grid = self.encoder_grid(config)
        kernel = pooling_kernel(grid, self.tokens_per_side)
        return 1, grid[0] // kernel[0], grid[1] // kernel[1]

    def _patch(self, config: ResolvedLUVCConfig) -> None:
        patch_oim_layers(self.vision_blocks, LuvcSiglipEncoderLayer, self.oim_steps(config), self.grid_side**2)
        inner = self.model.model
        pairs = (inner.language_model, LuvcGemma3TextModel), (inner, LuvcGemma3Model)
        patch_modules(config, inner.language_model, *pairs)
        swap_class(inner.multi_modal_projector, LuvcGemma3MultiModalProjector).luvc_grid = self.encoder_grid(config)

    @property
    def image_sequence(self) -> tuple[str, str]:
        """The processor's image text: blank lines, the begin token, the soft tokens, the end token."""
        soft = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        end = self.tokenizer.convert_ids_to_tokens(self.model.config.eoi_token_index)
        return f"\n\n{self.image_placeholder}{{tokens}}{end}\n\n", soft

    def preprocess_images(self, images) -> dict:
        """As every square tower's; with ``pan_and_scan``, each image's view then its crops, and ``num_crops``."""
        if not self.pan_and_scan:
            return super().preprocess_images(images)
        processed = self.image_processor(images=list(images), return_tensors="pt", **pan_and_scan_settings())
        return self.checked_pixels(processed["pixel_values"]) | {"num_crops": processed["num_crops"]}

    def visual_text(self, visual, tokens: int, spans: int = 1) -> str:
        """An image's text; with crops (``spans`` views), upstream's words around each view's text."""
        if spans == 1:
            return super().visual_text(visual, tokens, spans)
        view = super().visual_text(visual, tokens // spans)
        original, crops, between = self.crops_text
        return original + view + crops + between.join([view] * (spans - 1))

    def why_not_exportable(self) -> str | None:
        if self.pan_and_scan:
            return (
                "Gemma 3's pan-and-scan crops do not export yet (an export's buckets take one view an image); set "
                "pan_and_scan = False to export each image as one view, as upstream's processor does by default."
            )
        return super().why_not_exportable()

    def images_key(self, inputs: dict):
        crops = inputs.get("num_crops")
        return super().images_key(inputs), None if crops is None else tuple(int(count) for count in crops)

    def _tokenized(self, pixels: dict, texts) -> dict:
        """As every family's, with upstream's ``token_type_ids`` (1 at the image's soft tokens), so that the inputs
        also run the stock model."""
        inputs = super()._tokenized(pixels, texts)
        inputs["token_type_ids"] = (inputs["input_ids"] == self.image_token_id).long()
        return inputs

    def vision_trace(self, inputs: dict, config: ResolvedLUVCConfig) -> VisionTrace:
        units = units_per_block(self.grid_side**2, self.oim_steps(config), self.vision_depth)
        views = int(inputs["pixel_values"].shape[0])
        grid = self.token_grid(config)
        block_segments = tuple((count,) * views for count in units[:-1])
        crops = inputs.get("num_crops")  # pan-and-scan: an image's views are its spans, each seen both ways alone
        spans = () if crops is None else tuple(int(count) + 1 for count in crops)
        tokens = tuple(grid[1] * grid[2] * count for count in spans) or (grid[1] * grid[2],) * views
        return VisionTrace(block_segments, tokens, spans=spans, span_grids=(grid,) * views)

    def vision_graph(self, pixels: dict, plan: RequestPlan) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        return Gemma3VisionGraph(self.model.model), {"pixel_values": pixels["pixel_values"]}

    def vision_spec(self) -> VisionSpec:
        vision, text = self.model.config.vision_config, self.model.config.text_config
        return self.tower_spec(2 * vision.hidden_size * text.hidden_size)  # the projection of each pooled token
