"""LUVC for InternVL3 (InternViT + pixel shuffle + MLP projector + Qwen2 LLM).

Order follows upstream ``modeling_internvl.py``: vision hook (OIM inside the InternViT layers) -> pixel shuffle ->
projector (unchanged) -> LLM layers (SPU, 1-D RoPE).

- **Merge unit.** The pixel shuffle concatenates each 2x2 patch block into one LLM token, so a merge unit is that
  block, as Qwen-VL's patch merger's. At the first merge step the patch tokens (never the CLS token) are put in
  unit order (``unit_order``: units in raster order, each unit's patches ``(0,0), (0,1), (1,0), (1,1)``); a step then
  averages units pairwise, weighted, as everywhere. The encoder has absolute position embeddings added before the
  first layer and no rotary ids, so the new token order changes nothing else. After a merge the pixel shuffle is
  a reshape of the unit-ordered tokens, which is exactly upstream's pixel shuffle (tested).
- **Tiles.** The image processor cuts an image into a grid of tiles (plus a thumbnail when there is more than one);
  every tile goes through the encoder, so every tile and the thumbnail are compressed. The LLM sees one image span
  of ``tiles x tokens per tile`` tokens, which SPU prunes as one image. A bucket is the processed canvas
  ``(rows x tile, cols x tile)``, which fixes the tile count (``tile_canvas``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.models.internvl.modeling_internvl import InternVLModel, InternVLVisionLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.cost import VisionSpec
from luvc.compress.oim import OIMStep, plan_oim, units_per_block
from luvc.errors import critical
from luvc.models.base import VLMAdapter, patch_modules, patch_oim_layers
from luvc.models.decoder import SpuDecoderMixin
from luvc.models.multimodal import ImageFeatures, LuvcMultimodalMixin
from luvc.models.plan import RequestPlan, VisionTrace
from luvc.models.scope import Scope
from luvc.processing import tile_canvas
from luvc.prompt import simple_chat_template

UNIT = 4  # patches in a merge unit: the 2x2 block one pixel-shuffled token holds


def unit_order(side: int) -> torch.Tensor:
    """Raster patch indices of a ``side x side`` grid in unit order (the pixel shuffle's token and channel order)."""
    half = torch.arange(side // 2)
    rows, cols = torch.meshgrid(half, half, indexing="ij")
    corners = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    r = 2 * rows.reshape(-1, 1) + corners[:, 0]
    c = 2 * cols.reshape(-1, 1) + corners[:, 1]
    return (r * side + c).reshape(-1)


def shuffled_ranking(patch_scores: torch.Tensor) -> torch.Tensor:
    """``(tiles, side x side)`` raster patch scores -> ``(tiles x units,)``: summed over the 2x2 block of each token
    the pixel shuffle makes, in its (raster) order."""
    tiles, patches = patch_scores.shape
    half = int(patches**0.5) // 2
    return patch_scores.reshape(tiles, half, 2, half, 2).sum(dim=(2, 4)).reshape(-1)


class LuvcInternVLVisionLayer(InternVLVisionLayer):
    """Modifications:

    - when ``luvc_step`` is set, the patch tokens (all but CLS) leaving this layer go through one OIM step over
      merge units of four patches; ``luvc_reorder`` (the first step only) puts the raster patches in unit order first.
    """

    luvc_step: OIMStep | None = None
    luvc_reorder: torch.Tensor | None = None
    luvc_units_in: int = 0
    luvc_oim: Scope  # Scope(merge_units), so traced graphs name the merge

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = super().forward(hidden_states)
        if self.luvc_step is None:
            return hidden_states
        patches = hidden_states[:, 1:]
        if patches.shape[1] != UNIT * self.luvc_units_in:
            critical(
                f"This InternViT layer expects {UNIT * self.luvc_units_in} patch tokens (the vision config's tile "
                f"size) but got {patches.shape[1]}; preprocess with the model's image processor (prepare_inputs())."
            )
        if self.luvc_reorder is not None:
            patches = patches[:, self.luvc_reorder.to(patches.device)]
        batch, _, width = patches.shape
        units = self.luvc_oim(patches.reshape(batch, -1, UNIT, width), self.luvc_step, 1)
        return torch.cat([hidden_states[:, :1], units.reshape(batch, -1, width)], dim=1)

    def extra_repr(self) -> str:
        return f"luvc_oim_axis={self.luvc_step.axis}" if self.luvc_step is not None else ""


class LuvcInternVLTextModel(SpuDecoderMixin, Qwen2Model):
    """Modifications: see ``SpuDecoderMixin`` (1-D positions)."""


class LuvcInternVLModel(LuvcMultimodalMixin, InternVLModel):
    """Modifications (the multimodal model's forward, ``LuvcMultimodalMixin``), for InternVL: image features from
    the LUVC vision tower (OIM inside the InternViT layers), the pixel shuffle (a reshape once tokens are in unit
    order) and the projector; each image's tiles form one visual span; 1-D positions continued by the decoder."""

    luvc_merged: bool = False  # whether OIM put the patch tokens in unit order
    luvc_feature_block: int = -1  # the encoder block whose output the pixel shuffle takes (set by the adapter)
    luvc_tile_grid: tuple[int, int] = (0, 0)  # a tile's LLM token grid (rows, cols), set by the adapter

    def luvc_check_inputs(self, inputs: dict) -> None:
        if inputs.get("mm_encoder_outputs"):
            critical("The LUVC model path takes pixel_values; mm_encoder_outputs is not supported.")

    def luvc_tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(tiles, n, D)`` LLM-ready features of a batch of tiles."""
        layer = self.config.vision_feature_layer
        outputs = self.vision_tower(pixel_values=pixel_values.to(self.dtype), output_hidden_states=layer != -1)
        features = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        tiles = features.shape[0]
        if self.luvc_merged:  # unit order: the pixel shuffle is a reshape
            features = features.reshape(tiles, -1, UNIT * features.shape[-1])
        else:
            side = int(features.shape[1] ** 0.5)
            shuffled = self.pixel_shuffle(features.reshape(tiles, side, side, -1), self.config.downsample_ratio)
            features = shuffled.reshape(tiles, -1, shuffled.shape[-1])
        return self.multi_modal_projector(features)

    def luvc_image_features(self, pixel_values: torch.Tensor, inputs: dict, rows: int) -> ImageFeatures:
        """Each image's tiles as one span; (VisionZip) ranked by the attention the CLS token gives each patch in the
        feature layer, summed over the 2x2 block each shuffled token holds."""
        attention = self.vision_tower.encoder.layer[self.luvc_feature_block].attention
        with self.luvc_encoder_probe(attention, "first-query") as record:
            tile_features = self.luvc_tile_features(pixel_values)
        tiles, rest = divmod(tile_features.shape[0], rows)
        if rest:
            critical(
                f"{tile_features.shape[0]} tiles do not split evenly over {rows} prompts; images of one batch need "
                "one tile layout (the same canvas)."
            )
        per_image = tiles * tile_features.shape[1]
        ranking = None if record is None else shuffled_ranking(record.concatenated()[:, 1:])
        grids = [(tiles, *self.luvc_tile_grid)] * rows
        return ImageFeatures(
            tile_features.reshape(-1, tile_features.shape[-1]), [per_image] * rows, ranking=ranking, grids=grids
        )


class InternVLVisionGraph(torch.nn.Module):
    """The vision side for one bucket (a tile count), as an exportable module: ``pixel_values (images x tiles, 3,
    T, T)`` -> ``image_embeds (images, tiles x n, D)``."""

    def __init__(self, model: LuvcInternVLModel, tiles: int) -> None:
        super().__init__()
        self.model = model
        self.tiles = tiles

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.luvc_tile_features(pixel_values)
        return features.reshape(-1, self.tiles * features.shape[1], features.shape[-1])


class InternVLAdapter(VLMAdapter):
    architecture = "InternVLForConditionalGeneration"
    image_placeholder = "<IMG_CONTEXT>"
    processor_only_keys = ("num_patches",)
    builtin_template = "<|im_start|>user\n<img>{image}</img>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    builtin_chat_template = simple_chat_template(
        "'<|im_start|>' + role + '\\n'", "<|im_end|>\n", "<img><IMG_CONTEXT></img>\n", "<|im_start|>assistant\n"
    )

    @property
    def vision_depth(self) -> int:
        return self.model.config.vision_config.num_hidden_layers

    @property
    def vision_blocks(self):
        return self.model.model.vision_tower.encoder.layer

    @property
    def patch_size(self) -> int:
        return self.model.config.vision_config.patch_size[0]  # (height, width), square

    @property
    def patch_side(self) -> int:
        """Patches along one side of a tile."""
        return self.model.config.vision_config.image_size[0] // self.patch_size

    def feature_block(self) -> int:
        """Index of the encoder block whose output feeds the pixel shuffle."""
        layer = self.model.config.vision_feature_layer
        if not isinstance(layer, int):
            critical(f"vision_feature_layer={layer!r}: the LUVC InternVL path takes one feature layer.")
        return layer if layer >= 0 else self.vision_depth + layer

    def oim_steps(self, config: ResolvedLUVCConfig) -> dict[int, OIMStep]:
        """Block index -> the merge step after it, over a tile's grid of merge units."""
        grid = (1, self.patch_side // 2, self.patch_side // 2)
        return dict(zip(config.oim_layers, plan_oim([grid], config.oim_axes())))

    def _patch(self, config: ResolvedLUVCConfig) -> None:
        if self.model.config.downsample_ratio != 0.5 or self.patch_side % 2:
            critical("The LUVC InternVL path needs downsample_ratio 0.5 and an even number of patches per tile side.")
        late = [block for block in config.oim_layers if block >= self.feature_block()]
        if late:
            critical(
                f"oim_layers {late} merge at or after block {self.feature_block()}, whose output InternVL takes as "
                f"image features; use blocks below {self.feature_block()} (CLI: --oim-layers)."
            )
        steps = self.oim_steps(config)
        patch_oim_layers(self.vision_blocks, LuvcInternVLVisionLayer, steps, (self.patch_side // 2) ** 2)
        first = min(steps, default=None)
        for index, layer in enumerate(self.vision_blocks):  # the first merging layer orders the units first
            layer.luvc_reorder = unit_order(self.patch_side) if index == first else None
        inner = self.model.model
        language = inner.language_model
        patch_modules(config, language, (language, LuvcInternVLTextModel), (inner, LuvcInternVLModel))
        inner.luvc_merged = bool(steps)
        inner.luvc_feature_block = self.feature_block()
        inner.luvc_tile_grid = self.tile_grid(config)

    def preprocess_images(self, images) -> dict:
        pixels = self.image_processor(images=list(images), return_tensors="pt")
        out = {"pixel_values": pixels["pixel_values"]}
        out["num_patches"] = torch.as_tensor(pixels.get("num_patches", [1] * len(images)))
        return out

    def images_key(self, inputs: dict) -> tuple:
        """Tiles per image: the processor's ``num_patches``, or (model inputs) the tile rows split over the prompts."""
        if "num_patches" in inputs:
            return tuple(int(t) for t in torch.as_tensor(inputs["num_patches"]).reshape(-1))
        rows = inputs["input_ids"].shape[0] if "input_ids" in inputs else 1  # pixels alone: one image's tiles
        return (inputs["pixel_values"].shape[0] // rows,) * rows

    def vision_trace(self, inputs: dict, config: ResolvedLUVCConfig) -> VisionTrace:
        units = units_per_block((self.patch_side // 2) ** 2, self.oim_steps(config), self.vision_depth)
        segments = [1 + UNIT * count for count in units[:-1]]  # the CLS token and the patches
        at_features = units[self.feature_block() + 1]
        tiles = self.images_key(inputs)
        block_segments = tuple(tuple(s for tile in tiles for s in (segment,) * tile) for segment in segments)
        grids = tuple((count, *self.tile_grid(config)) for count in tiles)
        return VisionTrace(block_segments, tuple(t * at_features for t in tiles), span_grids=grids)

    def tile_grid(self, config: ResolvedLUVCConfig) -> tuple[int, int]:
        """A tile's LLM tokens as a ``(rows, cols)`` grid after the OIM steps (one token per merge unit of 2x2
        patches; without OIM the pixel shuffle's order, the transpose of a square grid, which the grid low-pass
        treats alike)."""
        steps = list(self.oim_steps(config).values())
        _, rows, cols = steps[-1].grids[0] if steps else (1, self.patch_side // 2, self.patch_side // 2)
        return rows, cols

    def vision_graph(self, pixels: dict, plan: RequestPlan) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        (tiles,) = self.images_key(pixels)
        return InternVLVisionGraph(self.model.model, tiles), {"pixel_values": pixels["pixel_values"]}

    def pixel_rows_per_image(self, pixels: dict) -> int:
        (tiles,) = self.images_key(pixels)
        return tiles

    def processed_size(self, image_size: Sequence[int], pixels: dict) -> tuple[int, int]:
        return tile_canvas(image_size, self.image_processor)

    def vision_spec(self) -> VisionSpec:
        vision, text = self.model.config.vision_config, self.model.config.text_config
        patch = vision.num_channels * self.patch_size**2
        shuffled = UNIT * vision.hidden_size
        return VisionSpec(
            embed=vision.hidden_size,
            mlp=vision.intermediate_size,
            patch_flops_per_token=2 * patch * vision.hidden_size,
            projector_flops_per_unit=2 * shuffled * text.hidden_size + 2 * text.hidden_size**2,
            cls_token=True,
        )
