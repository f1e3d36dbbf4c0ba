"""Qwen2.5-VL under LUVC: its adapter's cost facts."""

import torch

from luvc import LUVCConfig, load_model


def test_vision_spec_counts_the_gated_mlp_of_qwen2_5_vl():
    """The cost model's MLP width: Qwen2.5-VL's vision MLP has three matrices (gate, up, down), Qwen2-VL's two."""
    qwen2 = load_model("tiny-qwen2-vl")
    vision = qwen2.model.config.vision_config
    assert qwen2.vision_spec().mlp == int(vision.embed_dim * vision.mlp_ratio)
    qwen25 = load_model("tiny-qwen2.5-vl")
    assert qwen25.vision_spec().mlp == qwen25.model.config.vision_config.intermediate_size * 3 // 2
    assert (qwen2.windowed, qwen25.windowed) == (False, True)


@torch.no_grad()
def test_visionzip_ranks_merged_tokens_by_the_attention_their_patches_receive_in_the_last_block(image):
    """Qwen2.5-VL has no CLS token: each patch's attention received (mean over heads and queries) in the last block,
    summed over the merge unit the merger concatenates, in raster order (the encoder holds tokens in window order).
    Recomputed here from the block's input, outside the attention probe."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    qwen = load_model("tiny-qwen2.5-vl")
    attention = qwen.vision_blocks[-1].attn
    seen = {}
    hook = attention.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.update(args=args, **kwargs), with_kwargs=True
    )
    qwen.apply_luvc(LUVCConfig(spu_variant="visionzip", budgets=(30, 30, 12, 0)))
    inputs = qwen.prepare_inputs([image], "Describe.")
    outputs = qwen.model.model(**inputs)
    hook.remove()
    hidden = seen["args"][0] if seen["args"] else seen["hidden_states"]
    q, k, _ = attention.qkv(hidden).reshape(hidden.shape[0], 3, attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *seen["position_embeddings"])
    received = []
    bounds = seen["cu_seqlens"].tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        logits = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * attention.scaling
        received.append(logits.softmax(-1).mean(dim=0).mean(dim=0))
    plan = qwen.plan(inputs).vision.encoder
    ranking = torch.cat(received).reshape(-1, 4).sum(-1)[plan.reverse_index]
    assert plan.reverse_index is not None  # the windowed encoder's token order is undone
    for layer, kept in outputs.kept_visual_indices.items():
        expected = ranking.topk(kept.shape[1]).indices.sort().values
        assert kept[0].tolist() == expected.tolist(), layer
