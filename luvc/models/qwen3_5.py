"""LUVC for Qwen3.5: Qwen3-VL's encoder (without DeepStack) before a hybrid language model.

- The encoder is Qwen3-VL's kind (patch 16, a learned position table resampled to each grid, 2x2 merge units): OIM
  runs between its blocks exactly as for Qwen3-VL (``run_qwen_vision``), and M-RoPE positions follow the merged grid.
- The language model is hybrid: three of every four layers are Gated DeltaNet linear attention (a short causal
  convolution, then a recurrent state of fixed size), the fourth full attention with an output gate and partial
  rotary embeddings. SPU prunes before a layer of either kind the same way: a pruned token leaves the sequence, so
  no later layer's convolution, recurrence or attention sees it. Only the attention layers keep keys and values (of
  the tokens each processed); a linear-attention layer keeps its convolution state (the last tokens it processed:
  the prompt's text tail) and its recurrent state, both of fixed size, into decode (``luvc.models.cache``).
- A criterion that ranks by a layer's attention (FastV, PDrop, ToDRE) cannot measure it in a linear-attention layer:
  the decoder refuses it there (``SpuDecoderMixin._check_probes``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Model, Qwen3_5TextModel, Qwen3_5VisionModel

from luvc.compress.cost import LinearAttentionSpec, LlmSpec
from luvc.models.qwen2_vl import (
    LuvcClasses,
    LuvcQwen2VisionTransformer,
    MropeDecoderMixin,
    QwenVLModelMixin,
    run_qwen_vision,
)
from luvc.models.qwen3_vl import Qwen3VLAdapter


class LuvcQwen3_5VisionModel(Qwen3_5VisionModel):
    """Modifications: as ``LuvcQwen2VisionTransformer`` (OIM between blocks, rotary ids of the merged grid), plus the
    position-table taps in the plan (as Qwen3-VL)."""

    luvc_windowed = False
    luvc_plan = LuvcQwen2VisionTransformer.luvc_plan
    extra_repr = LuvcQwen2VisionTransformer.extra_repr

    def forward(self, hidden_states, grid_thw, luvc_plan=None, **kwargs):
        output = run_qwen_vision(self, hidden_states, luvc_plan or self.luvc_plan(grid_thw))
        return BaseModelOutputWithPooling(last_hidden_state=output.hidden, pooler_output=output.merged)


class LuvcQwen3_5TextModel(MropeDecoderMixin, Qwen3_5TextModel):
    """Modifications: see ``SpuDecoderMixin`` (its linear-attention layers take no mask and keep states, not keys and
    values); M-RoPE position ids as in Qwen2-VL, the interleaving is upstream's rotary embedding's."""


class LuvcQwen3_5Model(QwenVLModelMixin, Qwen3_5Model):
    __doc__ = QwenVLModelMixin.__doc__

    luvc_frame_spans = True


class Qwen3_5Adapter(Qwen3VLAdapter):
    """Qwen3.5: Qwen3-VL's prompts, video timestamps and encoder, no DeepStack, a hybrid language model."""

    architecture = "Qwen3_5ForConditionalGeneration"
    luvc_classes = LuvcClasses(LuvcQwen3_5VisionModel, LuvcQwen3_5TextModel, LuvcQwen3_5Model)
    deepstack_planes = 0  # its encoder hands the language model no DeepStack features

    def llm_spec(self) -> LlmSpec:
        """As every family's, with the output gate of its attention's query and its linear-attention layers."""
        text: Any = self.model.config.text_config
        linear = LinearAttentionSpec(
            layers=self.linear_layers,
            key_heads=text.linear_num_key_heads,
            value_heads=text.linear_num_value_heads,
            key_dim=text.linear_key_head_dim,
            value_dim=text.linear_value_head_dim,
            conv_kernel=text.linear_conv_kernel_dim,
        )
        return dataclasses.replace(super().llm_spec(), gated_query=True, linear=linear)
