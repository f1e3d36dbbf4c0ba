"""Local checkpoint folders and the errors users meet first."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from luvc import LUVCConfig, LuvcError, apply_luvc, load_model


@torch.no_grad()
def test_checkpoint_folder_round_trip(adapter, image, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    adapter.image_processor.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(adapter)
    for each in (adapter, loaded):
        each.apply_luvc()
    inputs = adapter.prepare_inputs([image], "hi")
    torch.testing.assert_close(loaded.prepare_inputs([image], "hi")["pixel_values"], inputs["pixel_values"])
    torch.testing.assert_close(loaded.model(**inputs).logits, adapter.model(**inputs).logits)


def test_unknown_name_is_not_a_folder():
    with pytest.raises(LuvcError, match="neither a built-in model"):
        load_model("qwen-does-not-exist")


def test_folder_without_config(tmp_path):
    with pytest.raises(LuvcError, match="no config.json"):
        load_model(tmp_path)


def test_text_only_model_names_the_supported_families(tmp_path):
    LlamaForCausalLM(
        LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    with pytest.raises(LuvcError, match="Qwen2VLForConditionalGeneration.*LlavaForConditionalGeneration|supported"):
        load_model(tmp_path)


def test_folder_without_weights(tmp_path, adapter):
    (tmp_path / "config.json").write_text(json.dumps(adapter.model.config.to_dict()))
    with pytest.raises(LuvcError, match="no weight files"):
        load_model(tmp_path)


def test_apply_luvc_on_a_plain_transformers_model(adapter, image):
    model = apply_luvc(adapter.model, LUVCConfig(spu_start=1))
    assert model is adapter.model
    assert "spu_start=1" in repr(model)


def test_budget_schedule_that_does_not_fit_the_image(adapter, image):
    adapter.apply_luvc(LUVCConfig(budgets=(5000, 0)))
    with pytest.raises(LuvcError, match="more than the .* visual tokens"):
        adapter.model(**adapter.prepare_inputs([image], "hi"))


def test_prompt_with_uncompressed_placeholder_count_is_rejected(adapter, image):
    inputs = adapter.prepare_inputs([image], "hi")  # placeholders for LUVC off (the adapter's initial state)
    adapter.apply_luvc()
    with pytest.raises(LuvcError, match="placeholder"):
        adapter.model(**inputs)


def test_llava_rejects_oim_after_the_feature_layer(_pristine):
    llava = _pristine["tiny-llava"]
    with pytest.raises(LuvcError, match="image features"):
        type(llava)(llava.model, llava.tokenizer, llava.image_processor).apply_luvc(LUVCConfig(oim_layers=(1,)))


def test_llava_rejects_a_wrong_image_size(_pristine, image):
    import copy

    llava = _pristine["tiny-llava"]
    adapter = type(llava)(copy.deepcopy(llava.model), llava.tokenizer, llava.image_processor)
    adapter.apply_luvc()
    pixels = adapter.prepare_inputs([image], "hi")
    pixels["pixel_values"] = torch.nn.functional.interpolate(pixels["pixel_values"], size=(112, 112))
    with pytest.raises(LuvcError, match="112x112 pixels but this vision tower takes 224x224"):
        adapter.model(**pixels)


def test_mismatched_batch_prompts_are_rejected(adapter, image):
    with pytest.raises(LuvcError, match="different lengths"):
        adapter.prepare_inputs([image, image], ["short", "a much longer prompt"])


def test_vision_spec_counts_the_gated_mlp_of_qwen2_5_vl():
    """The cost model's MLP width: Qwen2.5-VL's vision MLP has three matrices (gate, up, down), Qwen2-VL's two."""
    qwen2 = load_model("tiny-qwen2-vl")
    vision = qwen2.model.config.vision_config
    assert qwen2.vision_spec().mlp == int(vision.embed_dim * vision.mlp_ratio)
    qwen25 = load_model("tiny-qwen2.5-vl")
    assert qwen25.vision_spec().mlp == qwen25.model.config.vision_config.intermediate_size * 3 // 2
    assert (qwen2.windowed, qwen25.windowed) == (False, True)
