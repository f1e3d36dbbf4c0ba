"""Qwen2.5-VL under LUVC: its adapter's cost facts."""

from luvc import load_model


def test_vision_spec_counts_the_gated_mlp_of_qwen2_5_vl():
    """The cost model's MLP width: Qwen2.5-VL's vision MLP has three matrices (gate, up, down), Qwen2-VL's two."""
    qwen2 = load_model("tiny-qwen2-vl")
    vision = qwen2.model.config.vision_config
    assert qwen2.vision_spec().mlp == int(vision.embed_dim * vision.mlp_ratio)
    qwen25 = load_model("tiny-qwen2.5-vl")
    assert qwen25.vision_spec().mlp == qwen25.model.config.vision_config.intermediate_size * 3 // 2
    assert (qwen2.windowed, qwen25.windowed) == (False, True)
