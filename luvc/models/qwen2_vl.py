"""LUVC for Qwen2-VL (and the shared Qwen-VL machinery Qwen2.5-VL reuses).

Order follows upstream ``modeling_qwen2_vl.py``: vision hook (OIM between blocks) -> patch merger (unchanged:
a merge unit is the 2x2 patch group it concatenates) -> LLM layers (SPU) -> rope index (M-RoPE on the compressed
grid). All data-dependent metadata (rotary ids, ``cu_seqlens``, window indices, merge indices) is planned on the
host by ``luvc.models.qwen_vision_plan``; the encoder forward only gathers and adds.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLModel,
    Qwen2VLTextModel,
)

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.cost import VisionSpec
from luvc.compress.oim import merge_units
from luvc.errors import critical
from luvc.models.base import VLMAdapter, patch_modules
from luvc.models.compat import vision_position_embeddings
from luvc.models.decoder import SpuDecoderMixin
from luvc.models.hf_module import HFModule
from luvc.models.multimodal import ImageFeatures, LuvcMultimodalMixin
from luvc.models.plan import PlanCache, RequestPlan, VisionTrace, plans_on
from luvc.models.qwen_vision_plan import QwenVisionPlan, planned_qwen_vision
from luvc.models.scope import scopes
from luvc.models.window_attention import WindowLayout, batched_windows
from luvc.prompt import simple_chat_template
from luvc.videos import Video, qwen_videos_pixels

IMAGE_KEYS = ("pixel_values", "image_grid_thw")
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def without_keys(inputs: dict, keys: Sequence[str]) -> dict:
    """``inputs`` without ``keys``: one modality's part of a request that holds images and videos."""
    return {key: value for key, value in inputs.items() if key not in keys}


def modality_parts(inputs: dict) -> list[dict]:
    """A request's parts by modality: its images', then its videos' (each without the other's keys), for a request
    that holds both; else the request itself."""
    if not is_mixed(inputs):
        return [inputs]
    return [without_keys(inputs, VIDEO_KEYS), without_keys(inputs, IMAGE_KEYS)]


def is_mixed(inputs: dict) -> bool:
    """Whether a request holds images and videos."""
    return inputs.get("image_grid_thw") is not None and inputs.get("video_grid_thw") is not None


def qwen_visual_grid(inputs: dict) -> tuple[torch.Tensor, bool]:
    """The patch grids ``(n, 3)`` of a request's videos, or else of its images, and whether they are videos."""
    if inputs.get("video_grid_thw") is not None:
        return inputs["video_grid_thw"], True
    return inputs["image_grid_thw"], False


def rope_grids(plan: QwenVisionPlan, inputs: dict) -> dict[str, torch.Tensor]:
    """What ``get_rope_index`` takes about the compressed grids of the request in ``inputs``: M-RoPE positions follow
    the merged grid. For a video, Qwen2.5-VL's ``second_per_grid_ts`` (its time axis counts seconds) doubles with
    each temporal merge, so a merged slice sits at the time of the first slice it covers."""
    _, video = qwen_visual_grid(inputs)
    if not video:
        return {"image_grid_thw": plan.output_grid_thw}
    grids = {"video_grid_thw": plan.output_grid_thw}
    seconds = inputs.get("second_per_grid_ts")
    if seconds is not None:
        grids["second_per_grid_ts"] = torch.as_tensor(seconds, dtype=torch.float32) * 2**plan.temporal_merges
    return grids


def _to(cu_seqlens, device):
    return cu_seqlens.to(device) if isinstance(cu_seqlens, torch.Tensor) else cu_seqlens


@dataclasses.dataclass(frozen=True)
class QwenVisionOutput:
    """What a Qwen-VL encoder gives under LUVC: the last hidden states, the merged features ``(units, D)`` and
    (Qwen3-VL) the DeepStack features, each taken after its block and merged by every OIM step from that block on."""

    hidden: torch.Tensor
    merged: torch.Tensor
    deepstack: tuple[torch.Tensor, ...] = ()


def patch_embedding(embed: HFModule, pixel_values: torch.Tensor) -> torch.Tensor:
    """``embed`` (a Qwen-VL patch embedding: a Conv3d whose kernel is its stride, over patches already flattened in
    the kernel's (C, T, H, W) order), exported as one matrix product with the flattened kernel: the same sums, and one
    MatMul in the graphs. cuDNN's heuristics find no fp16 algorithm for this Conv3d on a Hopper GPU (weight [1280, 3,
    2, 14, 14], stride [2, 14, 14]) under ONNX Runtime's default search; a MatMul runs on every backend. PyTorch itself
    runs the module, so that LUVC off stays exactly stock transformers."""
    proj = embed.proj
    regular = tuple(proj.kernel_size) == tuple(proj.stride) and not any(proj.padding) and proj.groups == 1
    if not (regular and torch.compiler.is_exporting()):
        return embed(pixel_values)
    weight = proj.weight.reshape(proj.out_channels, -1)
    return torch.nn.functional.linear(pixel_values.reshape(-1, weight.shape[1]).to(weight.dtype), weight, proj.bias)


def run_qwen_vision(encoder, pixel_values: torch.Tensor, plan: QwenVisionPlan) -> QwenVisionOutput:
    """The encoder forward under ``plan``: patch and position embeddings, blocks, OIM steps between them, DeepStack
    mergers (Qwen3-VL), patch merger."""
    unit = encoder.spatial_merge_size**2
    hidden = patch_embedding(encoder.patch_embed, pixel_values)
    dim = hidden.shape[-1]
    if plan.position_taps is not None:
        indices, weights = (tensor.to(hidden.device) for tensor in plan.position_taps)
        hidden = hidden + (encoder.pos_embed(indices) * weights[:, :, None]).sum(1).to(hidden.dtype)
    deepstack_blocks = list(getattr(encoder, "deepstack_visual_indexes", None) or ())
    deepstack = []
    if plan.window_index is not None:
        hidden = hidden.view(-1, unit, dim)[plan.window_index.to(hidden.device)].reshape(-1, dim)
    stage = plan.stages[0]
    position_embeddings = vision_position_embeddings(encoder.rotary_pos_emb, hidden, stage.rotary_ids.to(hidden.device))
    for index, block in enumerate(encoder.blocks):
        windowed = stage.cu_window_seqlens is not None and index not in plan.full_attention_blocks
        hidden = block(
            hidden,
            cu_seqlens=_to(stage.cu_window_seqlens if windowed else stage.cu_seqlens, hidden.device),
            max_seqlen=stage.max_window_seqlen if windowed else stage.max_seqlen,
            position_embeddings=position_embeddings,
        )
        if index in deepstack_blocks:  # one row per merge unit, like the merger's output
            deepstack.append(encoder.deepstack_merger_list[deepstack_blocks.index(index)](hidden))
        if index in plan.merges:
            step = plan.merges[index]
            hidden = encoder.luvc_oim[index](hidden.view(-1, unit, dim), step).reshape(-1, dim)
            deepstack = [encoder.luvc_oim[index](feature, step) for feature in deepstack]
            stage = plan.stage_of_block(index + 1)
            position_embeddings = vision_position_embeddings(
                encoder.rotary_pos_emb, hidden, stage.rotary_ids.to(hidden.device)
            )
    merged = encoder.merger(hidden)
    if plan.reverse_index is not None:
        reverse = plan.reverse_index.to(merged.device)
        merged, deepstack = merged[reverse], [feature[reverse] for feature in deepstack]
    return QwenVisionOutput(hidden, merged, tuple(deepstack))


class QwenVisionGraph(torch.nn.Module):
    """The encoder for one image-size bucket, as an exportable module.

    Input: ``pixel_values``. Everything else the plan holds is a constant of the bucket, traced into the graph: merge
    indices and attention segments (``cu_seqlens``; as inputs they would make shapes data-dependent), and the rotary
    ids of each stage, the windows (Qwen2.5-VL) and the position-table taps (Qwen3-VL), so that the exporter folds
    the rotary tables and the position embedding of the bucket instead of the GPU computing them on every image
    (about 15 small nodes per stage; OIM adds a stage). Outputs: ``image_embeds (1, n, D)``, then (Qwen3-VL) one
    ``deepstack.{k} (1, n, D)`` per DeepStack feature.
    """

    def __init__(self, encoder, plan: QwenVisionPlan) -> None:
        super().__init__()
        self.encoder = encoder
        # Segment boundaries as NumPy arrays: upstream attention splits by ``(cu[1:] - cu[:-1]).tolist()``, which on
        # a tensor becomes data-dependent under torch.export; on NumPy it yields the bucket's constant split sizes.
        # Windows become a static layout attended as one batch (``batched_windows``), not one attention each.
        stages = tuple(
            dataclasses.replace(
                stage,
                cu_seqlens=np.asarray(stage.cu_seqlens),
                cu_window_seqlens=None
                if stage.cu_window_seqlens is None
                else WindowLayout.from_cu_seqlens(np.asarray(stage.cu_window_seqlens)),
            )
            for stage in plan.stages
        )
        self.plan = dataclasses.replace(plan, stages=stages)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        windows = batched_windows(self.encoder) if self.plan.window_index is not None else contextlib.nullcontext()
        with windows:
            output = run_qwen_vision(self.encoder, pixel_values, self.plan)
        return (output.merged[None], *(feature[None] for feature in output.deepstack))


class LuvcQwen2VisionTransformer(Qwen2VisionTransformerPretrainedModel):
    """Modifications:

    - OIM merge steps run after the blocks in ``luvc_config.oim_layers``, alternating W and H;
    - rotary ids and ``cu_seqlens`` are recomputed for the merged grid (planned on the host);
    - each grid is planned once (``luvc_plan``, kept in ``luvc_plans``) and the plan shared with the adapter.
    """

    luvc_config: ResolvedLUVCConfig
    luvc_windowed = False
    luvc_oim: torch.nn.ModuleList  # one Scope(merge_units) per block: the merge after that block
    luvc_plans: PlanCache[QwenVisionPlan]

    def luvc_plan(self, grid_thw: torch.Tensor, config: ResolvedLUVCConfig | None = None) -> QwenVisionPlan:
        """The encoder plan of images with patch grid ``grid_thw`` under ``config`` (resolved; default: the
        applied one), planned on first use of that grid and config."""
        return planned_qwen_vision(
            self.luvc_plans, grid_thw, self.config, config or self.luvc_config, self.luvc_windowed
        )

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, luvc_plan=None, **kwargs):
        output = run_qwen_vision(self, hidden_states, luvc_plan or self.luvc_plan(grid_thw))
        return BaseModelOutputWithPooling(last_hidden_state=output.hidden, pooler_output=output.merged)

    def extra_repr(self) -> str:
        return f"luvc_oim_layers={list(self.luvc_config.oim_layers)}, axes={list(self.luvc_config.oim_axes())}"


def mrope_rotary_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``(3, B, S)`` M-RoPE ids from ``(B, S)``, ``(3, B, S)`` or ``(4, B, S)`` (leading text row dropped)."""
    if position_ids.dim() == 2:
        return position_ids[None].expand(3, -1, -1)
    return position_ids[1:] if position_ids.shape[0] == 4 else position_ids


class MropeDecoderMixin(SpuDecoderMixin):
    """``SpuDecoderMixin`` for a Qwen-VL language model: its rotary embedding takes M-RoPE ids
    (``mrope_rotary_ids``)."""

    def luvc_rotary_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        return mrope_rotary_ids(position_ids)


class LuvcQwen2VLTextModel(MropeDecoderMixin, Qwen2VLTextModel):
    """Modifications: see ``SpuDecoderMixin``; position ids are M-RoPE ``(3, B, S)`` (a leading text row is
    dropped, a ``(B, S)`` tensor is broadcast to the three rows)."""


def visual_span_grids(plan: QwenVisionPlan, merge: int, frame_spans: bool) -> list[tuple[int, int, int]]:
    """The LLM token grid ``(slices, rows, cols)`` of every prompt span under ``plan``: one span per image or video,
    or (``frame_spans``) one per temporal slice; the merger's tokens are in raster order."""
    grids = plan.output_grid_thw.tolist()
    if frame_spans:
        return [(1, h // merge, w // merge) for t, h, w in grids for _ in range(t)]
    return [(t, h // merge, w // merge) for t, h, w in grids]


def merged_ranking(received: torch.Tensor, unit: int, plan: QwenVisionPlan) -> torch.Tensor:
    """The ranking of the merger's output rows (VisionZip): ``received (patches,)``, what each patch token receives in
    the last block (in token order), summed over each merge unit and put in the merged rows' (raster) order."""
    ranking = received.reshape(-1, unit).sum(dim=-1)
    return ranking if plan.reverse_index is None else ranking[plan.reverse_index.to(ranking.device)]


class QwenVLModelMixin(LuvcMultimodalMixin):
    """Modifications (the multimodal model's forward, ``LuvcMultimodalMixin``), for Qwen-VL:

    - image or video features from the LUVC encoder under its vision plan (a request holds images or videos);
    - M-RoPE ids from the compressed grid (``rope_grids``); decode positions continue from the original prompt length
      using the request's ``rope_deltas`` kept in ``LuvcCache`` (not on the model).
    """

    luvc_frame_spans = False  # a video's slices are separate prompt spans (Qwen3-VL: timestamps between them)
    visual: HFModule  # the upstream model's encoder, patched to a LUVC encoder class

    def luvc_check_inputs(self, inputs: dict) -> None:
        if inputs.get("mm_encoder_outputs"):
            critical("The LUVC model path takes pixels; mm_encoder_outputs is not supported.")

    def luvc_visual_features(self, pixel_values, inputs: dict, rows: int) -> list[ImageFeatures]:
        """The images' features, then the videos' (``pixel_values_videos``): one encoder run each, as upstream."""
        groups = []
        if pixel_values is not None:
            groups.append(self.luvc_image_features(pixel_values, without_keys(inputs, VIDEO_KEYS), rows))
        if inputs.get("pixel_values_videos") is not None:
            videos = without_keys(inputs, IMAGE_KEYS)
            groups.append(self.luvc_image_features(inputs["pixel_values_videos"], videos, rows))
        return groups

    def luvc_image_features(self, pixel_values: torch.Tensor, inputs: dict, rows: int) -> ImageFeatures:
        """The encoder's merged output under its vision plan, one span per image or video (``luvc_frame_spans``: one
        per temporal slice of a video), with (Qwen3-VL) the DeepStack features and (VisionZip) the ranking."""
        grid_thw, video = qwen_visual_grid(inputs)
        vision_plan = self.visual.luvc_plan(grid_thw)
        with self.luvc_encoder_probe(self.visual.blocks[-1].attn, "received") as record:
            output = self.visual(pixel_values.type(self.visual.dtype), grid_thw, luvc_plan=vision_plan)
        merge = self.visual.spatial_merge_size
        grids = visual_span_grids(vision_plan, merge, video and self.luvc_frame_spans)
        counts = [t * h * w for t, h, w in grids]
        token = self.config.video_token_id if video else None
        deepstack = tuple(getattr(output, "deepstack_features", None) or ())
        ranking = None if record is None else merged_ranking(record.concatenated()[0], merge**2, vision_plan)
        return ImageFeatures(
            output.pooler_output, counts, rope_grids(vision_plan, inputs), deepstack, token, ranking, grids
        )

    def luvc_position_ids(self, input_ids, groups, cache, batch, length, inputs) -> torch.Tensor:
        grids = {key: value for group in groups for key, value in group.rope_grids.items()} if groups else None
        return self._luvc_positions(input_ids, grids, cache, batch, length)

    def _luvc_positions(self, input_ids, grids, cache, batch, length):
        """M-RoPE ids for a prefill with images or videos (``rope_grids``: from the compressed grid), else continued
        positions. Token types are the processor's: 1 at image placeholders, 2 at video placeholders."""
        if grids is not None:
            config = self.config
            token_types = (input_ids == config.image_token_id).int() + 2 * (input_ids == config.video_token_id).int()
            position_ids, deltas = self.get_rope_index(input_ids, token_types, **grids)
            if cache is not None:
                cache.rope_deltas = deltas
            return position_ids
        start = cache.num_positions if cache is not None else 0
        deltas = cache.rope_deltas if cache is not None and cache.rope_deltas is not None else 0
        device = self.get_input_embeddings().weight.device
        positions = (torch.arange(length, device=device) + start).expand(batch, length) + deltas
        return positions[None].expand(3, -1, -1)


class LuvcQwen2VLModel(QwenVLModelMixin, Qwen2VLModel):
    __doc__ = QwenVLModelMixin.__doc__


class LuvcClasses(NamedTuple):
    """The LUVC classes a Qwen-VL family swaps in: its vision encoder, text model and multimodal model (each says
    what the family can do, e.g. ``vision.luvc_windowed``, ``model.luvc_frame_spans``)."""

    vision: type[Any]  # an encoder class with LuvcQwen2VisionTransformer's luvc_windowed and luvc_plan
    text: type[SpuDecoderMixin]
    model: type[QwenVLModelMixin]


class Qwen2VLAdapter(VLMAdapter):
    architecture = "Qwen2VLForConditionalGeneration"
    image_placeholder = "<|image_pad|>"
    video_placeholder = "<|video_pad|>"
    visual_separator = "<|vision_end|><|vision_start|>"
    builtin_template = (
        "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    builtin_chat_template = simple_chat_template(
        "'<|im_start|>' + role + '\\n'",
        "<|im_end|>\n",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|im_start|>assistant\n",
    )
    luvc_classes = LuvcClasses(LuvcQwen2VisionTransformer, LuvcQwen2VLTextModel, LuvcQwen2VLModel)
    gated_vision_mlp = False  # Qwen2.5-VL's vision MLP has three matrices (gate, up, down), Qwen2-VL's two

    @property
    def windowed(self) -> bool:
        """Whether the encoder attends within windows (its LUVC class says so: Qwen2.5-VL)."""
        return self.luvc_classes.vision.luvc_windowed

    position_rows = 3

    @property
    def vision_depth(self) -> int:
        return self.model.config.vision_config.depth

    @property
    def vision_blocks(self):
        return self.model.model.visual.blocks

    def _patch(self, config: ResolvedLUVCConfig) -> None:
        vision_cls, text_cls, model_cls = self.luvc_classes
        inner = self.model.model
        pairs = ((inner.visual, vision_cls), (inner.language_model, text_cls), (inner, model_cls))
        patch_modules(config, inner.language_model, *pairs)
        if not hasattr(inner.visual, "luvc_oim"):
            inner.visual.luvc_oim = scopes(merge_units, self.vision_depth)
        inner.visual.luvc_plans = self.encoder_plans  # shared with the forward

    def preprocess_images(self, images) -> dict:
        return dict(self.image_processor(images=list(images), return_tensors="pt"))

    def preprocess_videos(self, videos: Sequence[Video]) -> dict:
        temporal = self.model.config.vision_config.temporal_patch_size
        pixels, grids = qwen_videos_pixels(videos, self.image_processor, temporal)
        return {"pixel_values_videos": torch.from_numpy(pixels), "video_grid_thw": torch.from_numpy(grids)}

    def processed_frames(self, pixels: dict) -> int:
        grids = pixels.get("video_grid_thw")
        return 0 if grids is None else int(grids[0][0]) * self.model.config.vision_config.temporal_patch_size

    @property
    def encoder_plans(self) -> PlanCache[QwenVisionPlan]:
        """The encoder's plans, kept on the encoder (``luvc_plans``) so its forward and this adapter share them."""
        return plans_on(self.model.model.visual, "luvc_plans")

    def images_key(self, inputs: dict) -> tuple:
        if is_mixed(inputs):
            return tuple(self.images_key(part) for part in modality_parts(inputs))
        grid, video = qwen_visual_grid(inputs)
        return video, tuple(map(tuple, grid.tolist()))

    def vision_trace(self, inputs: dict, config: ResolvedLUVCConfig) -> VisionTrace:
        if is_mixed(inputs):  # two encoder runs, as upstream: the images', then the videos'
            image, video = (self.vision_trace(part, config) for part in modality_parts(inputs))
            return VisionTrace(
                tuple(a + b for a, b in zip(image.block_segments, video.block_segments)),
                image.tokens_per_image + video.tokens_per_image,
                None,
                image.spans_per_image + video.spans_per_image,
                (image.span_grids or ()) + (video.span_grids or ()),
            )
        vision = self.model.config.vision_config
        grid, _ = qwen_visual_grid(inputs)
        plan = planned_qwen_vision(self.encoder_plans, grid, vision, config, self.windowed)
        merge = self.model.config.vision_config.spatial_merge_size
        per_image = (plan.output_grid_thw.prod(-1) // merge**2).tolist()
        spans = ()
        frame_spans = bool(self.luvc_classes.model.luvc_frame_spans and qwen_visual_grid(inputs)[1])
        if frame_spans:
            spans = tuple(plan.output_grid_thw[:, 0].tolist())  # one span per temporal slice
        grids = tuple(visual_span_grids(plan, merge, frame_spans))
        return VisionTrace(plan.block_segments(self.vision_depth), tuple(per_image), plan, spans, grids)

    def vision_graph(self, pixels: dict, plan: RequestPlan) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        grid, video = qwen_visual_grid(pixels)
        if grid.shape[0] != 1:
            critical("A Qwen-VL vision graph takes one image or video per call; pass the pixels of a single one.")
        encoder_plan = plan.vision.encoder
        graph = QwenVisionGraph(self.model.model.visual, encoder_plan)
        return graph, {"pixel_values": pixels["pixel_values_videos" if video else "pixel_values"]}

    def prompt_position_ids(self, inputs: dict, plan: RequestPlan) -> torch.Tensor:
        batch, length = inputs["input_ids"].shape
        grids = {}
        for part in modality_parts(inputs):  # a mixed request: the images' grids and the videos'
            grids.update(rope_grids(self.plan(part, plan.config).vision.encoder, part))
        return self.model.model._luvc_positions(inputs["input_ids"], grids, None, batch, length)

    def vision_spec(self) -> VisionSpec:
        vision = self.model.config.vision_config
        embed = getattr(vision, "embed_dim", None) or vision.hidden_size
        mlp = getattr(vision, "intermediate_size", None) or int(embed * vision.mlp_ratio)
        unit = vision.spatial_merge_size**2
        patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        out = getattr(vision, "out_hidden_size", None) or vision.hidden_size
        return VisionSpec(
            embed=embed,
            mlp=mlp * (3 if self.gated_vision_mlp else 2) // 2,
            patch_flops_per_token=2 * patch * embed,
            projector_flops_per_unit=2 * (unit * embed) ** 2 + 2 * unit * embed * out,
        )
