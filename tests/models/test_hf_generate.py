"""``model.generate()`` on a LUVC-patched model: the same tokens and logits as ``greedy_generate``; with LUVC off,
exactly stock transformers' ``generate()``; options it cannot honour are refused."""

import copy
import json

import pytest
import torch
from transformers import DynamicCache

from luvc import LUVCConfig, LuvcError
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.videos import synthetic_video
from tests.conftest import PYTORCH_VIDEO_FAMILIES, VIDEO_BUCKETS, stock_inputs

IMAGES = [synthetic_image(224, 224, 1), synthetic_image(224, 224, 2)]  # a batch of two same-size images


def hf_generate(model, inputs, max_new_tokens, **options):
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        output_logits=True,
        return_dict_in_generate=True,
        **options,
    )
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits, dim=1)


@torch.no_grad()
def test_generate_equals_greedy_generate(adapter):
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs(IMAGES, "Describe the image.")
    expected, expected_logits = greedy_generate(adapter.model, inputs, 8, return_logits=True)
    tokens, logits = hf_generate(adapter.model, inputs, 8, do_sample=False)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_generate_stops_at_the_stop_token_as_greedy_generate_does(adapter):
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs(IMAGES[:1], "Describe the image.")
    free_run = greedy_generate(adapter.model, inputs, 8)[0]
    stop = int(free_run[3])  # a token the model emits at step 3 (or earlier)
    expected = greedy_generate(adapter.model, inputs, 8, eos_token_id=stop)[0]
    tokens, _ = hf_generate(adapter.model, inputs, 8, do_sample=False, eos_token_id=stop, pad_token_id=stop)
    end = int((expected == stop).nonzero()[0]) + 1
    assert end <= 4 and tokens.shape[1] == end
    torch.testing.assert_close(tokens[0], expected[:end], rtol=0, atol=0)


@pytest.mark.slow  # greedy and sampled generate() against stock; the fast tier keeps one forward's (test_decoder.py)
@torch.no_grad()
def test_with_luvc_off_generate_is_stock_transformers(adapter, stock):
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs(IMAGES, "Describe the image.")
    tokens, logits = hf_generate(adapter.model, inputs, 8, do_sample=False)
    stock_tokens, stock_logits = hf_generate(stock, stock_inputs(adapter, inputs), 8, do_sample=False)
    assert torch.equal(tokens, stock_tokens) and torch.equal(logits, stock_logits)
    torch.manual_seed(0)
    sampled, _ = hf_generate(adapter.model, inputs, 8, do_sample=True, temperature=0.9, top_k=0)
    torch.manual_seed(0)
    stock_sampled, _ = hf_generate(stock, stock_inputs(adapter, inputs), 8, do_sample=True, temperature=0.9, top_k=0)
    assert torch.equal(sampled, stock_sampled)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_beams": 2}, r"num_beams=2\) is not supported on a LUVC model"),
        ({"num_return_sequences": 2, "do_sample": True}, r"num_return_sequences=2\) is not supported"),
        ({"past_key_values": DynamicCache()}, "needs an empty LuvcCache"),
    ],
)
def test_options_luvc_cannot_honour_are_refused(_pristine, options, message):
    pristine = _pristine["tiny-llava"]
    adapter = type(pristine)(copy.deepcopy(pristine.model), pristine.tokenizer, pristine.image_processor)
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs(IMAGES[:1], "hi")
    with pytest.raises(LuvcError, match=message):
        adapter.model.generate(**inputs, max_new_tokens=2, **options)


def test_a_saved_patched_model_keeps_its_architecture(_pristine, tmp_path):
    pristine = _pristine["tiny-qwen2-vl"]
    adapter = type(pristine)(copy.deepcopy(pristine.model), pristine.tokenizer, pristine.image_processor)
    adapter.apply_luvc()
    adapter.model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Qwen2VLForConditionalGeneration"]


@torch.no_grad()
@pytest.mark.parametrize("family", PYTORCH_VIDEO_FAMILIES)
def test_generate_takes_a_video_and_an_image_with_a_video(family):
    adapter = load_model(family)
    adapter.apply_luvc()
    clip = synthetic_video(*VIDEO_BUCKETS[family])
    for visuals in ([clip], [(synthetic_image(224, 224, 1), clip)]):
        inputs = adapter.prepare_inputs(visuals, "What happens?")
        tokens, _ = hf_generate(adapter.model, inputs, 6, do_sample=False)
        assert torch.equal(tokens, greedy_generate(adapter.model, inputs, 6))
