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
