"""LUVC for Qwen3-VL: the Qwen-VL machinery plus learned position embeddings and DeepStack.

- The encoder (patch 16) adds its learned position table resampled to each image's grid; the resampling taps are
  planned on the host with the rest of the vision plan (``position_taps``), since they depend on the grid.
- DeepStack: features taken after some encoder blocks (``deepstack_visual_indexes``) go through every OIM step
  from their block on, like the main path (``run_qwen_vision``), and are added to the hidden states of the first
  decoder layers at the visual tokens those layers kept after SPU (``add_visual_plane``).
- M-RoPE is interleaved (inside upstream's rotary embedding) over the compressed grid; decode positions as Qwen2-VL.
"""

from __future__ import annotations

from PIL import Image
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    BaseModelOutputWithDeepstackFeatures,
    Qwen3VLModel,
    Qwen3VLTextModel,
    Qwen3VLVisionModel,
)

from luvc.compress.cost import VisionSpec
from luvc.models.qwen2_vl import (
    LuvcClasses,
    LuvcQwen2VisionTransformer,
    MropeDecoderMixin,
    Qwen2VLAdapter,
    QwenVLModelMixin,
    run_qwen_vision,
)
from luvc.prompt import video_text
from luvc.videos import Video, slice_timestamps


class LuvcQwen3VisionModel(Qwen3VLVisionModel):
    """Modifications: as ``LuvcQwen2VisionTransformer`` (OIM between blocks, rotary ids of the merged grid), plus
    the position-table taps in the plan and the DeepStack features merged by the later OIM steps."""

    luvc_windowed = False
    luvc_plan = LuvcQwen2VisionTransformer.luvc_plan
    extra_repr = LuvcQwen2VisionTransformer.extra_repr

    def forward(self, hidden_states, grid_thw, luvc_plan=None, **kwargs):
        output = run_qwen_vision(self, hidden_states, luvc_plan or self.luvc_plan(grid_thw))
        return BaseModelOutputWithDeepstackFeatures(
            last_hidden_state=output.hidden, pooler_output=output.merged, deepstack_features=list(output.deepstack)
        )


class LuvcQwen3VLTextModel(MropeDecoderMixin, Qwen3VLTextModel):
    """Modifications: see ``SpuDecoderMixin`` (DeepStack planes included); M-RoPE position ids as in Qwen2-VL, the
    interleaving is upstream's rotary embedding's."""


class LuvcQwen3VLModel(QwenVLModelMixin, Qwen3VLModel):
    __doc__ = QwenVLModelMixin.__doc__

    luvc_frame_spans = True


class Qwen3VLAdapter(Qwen2VLAdapter):
    architecture = "Qwen3VLForConditionalGeneration"
    # each temporal slice of a video is a block of its own after its timestamp (Qwen3-VL's processor)
    video_frame_template = "<{seconds} seconds><|vision_start|>{frame}<|vision_end|>"

    def visual_text(self, visual: Image.Image | Video, tokens: int, spans: int = 1) -> str:
        if not isinstance(visual, Video):
            return super().visual_text(visual, tokens, spans)
        temporal = self.model.config.vision_config.temporal_patch_size
        seconds = slice_timestamps(visual, temporal, spans)
        return video_text(self.video_placeholder, tokens, self.video_frame_template, seconds)

    luvc_classes = LuvcClasses(LuvcQwen3VisionModel, LuvcQwen3VLTextModel, LuvcQwen3VLModel)

    @property
    def deepstack_planes(self) -> int:
        return len(self.model.config.vision_config.deepstack_visual_indexes or ())

    def vision_spec(self) -> VisionSpec:
        vision = self.model.config.vision_config
        spec = super().vision_spec()
        unit = vision.spatial_merge_size**2
        merger = 2 * (unit * vision.hidden_size) ** 2 + 2 * unit * vision.hidden_size * vision.out_hidden_size
        return VisionSpec(  # the DeepStack mergers run once per feature, like the main merger
            embed=spec.embed,
            mlp=spec.mlp,
            patch_flops_per_token=spec.patch_flops_per_token,
            projector_flops_per_unit=spec.projector_flops_per_unit + self.deepstack_planes * merger,
        )
