"""LUVC for Qwen2.5-VL: the Qwen2-VL machinery plus window attention.

The encoder stores tokens in window order; each OIM step is planned in raster order and re-expressed on window
order (``_in_token_order``), and the windows are recomputed for the merged grid. The window size stays in merge
units, so a window covers more of the image after a merge.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLModel,
    Qwen2_5_VLTextModel,
)

from luvc.models.plan import RequestPlan
from luvc.models.qwen2_vl import (
    LuvcClasses,
    LuvcQwen2VisionTransformer,
    MropeDecoderMixin,
    Qwen2VLAdapter,
    QwenVLModelMixin,
)
from luvc.videos import VideoTimes, seconds_per_slice


class LuvcQwen2_5_VisionTransformer(Qwen2_5_VisionTransformerPretrainedModel):
    """Modifications: as ``LuvcQwen2VisionTransformer``, plus window indices recomputed after every merge."""

    luvc_windowed = True
    luvc_plan = LuvcQwen2VisionTransformer.luvc_plan
    forward = LuvcQwen2VisionTransformer.forward
    extra_repr = LuvcQwen2VisionTransformer.extra_repr


class LuvcQwen2_5_VLTextModel(MropeDecoderMixin, Qwen2_5_VLTextModel):
    """Modifications: see ``SpuDecoderMixin``; M-RoPE position ids as in Qwen2-VL."""


class LuvcQwen2_5_VLModel(QwenVLModelMixin, Qwen2_5_VLModel):
    __doc__ = QwenVLModelMixin.__doc__


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    architecture = "Qwen2_5_VLForConditionalGeneration"
    luvc_classes = LuvcClasses(LuvcQwen2_5_VisionTransformer, LuvcQwen2_5_VLTextModel, LuvcQwen2_5_VLModel)
    gated_vision_mlp = True

    def preprocess_videos(self, videos) -> dict:
        """As Qwen2-VL's, plus ``second_per_grid_ts`` (``seconds_per_slice``), which the time axis of M-RoPE counts
        in."""
        inputs = super().preprocess_videos(videos)
        temporal = self.model.config.vision_config.temporal_patch_size
        seconds = [seconds_per_slice(video, temporal) for video in videos]
        inputs["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
        return inputs

    def video_times(self, plan: RequestPlan) -> VideoTimes:
        """The time row of a video's M-RoPE ids depends on its frame rate: the runtime recomputes it
        (``video_time_positions``) from the slice of each visual token and the scale (tokens per second, doubled by
        each temporal merge)."""
        encoder = plan.vision.encoder
        t, h, w = encoder.output_grid_thw[0].tolist()
        merge = self.model.config.vision_config.spatial_merge_size
        slices = np.repeat(np.arange(t, dtype=np.int64), h * w // merge**2)
        scale = self.model.config.vision_config.tokens_per_second * 2**encoder.temporal_merges
        return VideoTimes(None, slices, float(scale))
