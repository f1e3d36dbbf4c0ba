"""The ONNX Runtime pipeline against PyTorch LUVC: preprocessing, greedy tokens, streaming, KV bytes, sampling."""

import numpy as np
import pytest
import torch

from luvc.generation import greedy_generate
from luvc.images import synthetic_image
from luvc.models import TINY_MODELS, load_model
from luvc.runtime.kv_cache import KVCache
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.sampling import SamplingConfig

PROMPT = "What is in this picture?"


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_greedy_text_equals_pytorch_luvc(family, exports):
    adapter = load_model(family)
    adapter.apply_luvc()
    images = [synthetic_image(224, 224, seed) for seed in (7, 8)]
    inputs = adapter.prepare_inputs(images, PROMPT)
    eos = adapter.tokenizer.eos_token_id
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 16, eos_token_id=eos).numpy()
    pipeline = Pipeline(exports(family))
    pixels, size = pipeline.preprocess(images)
    np.testing.assert_array_equal(pixels, adapter.preprocess_images(images)["pixel_values"].numpy())
    generation = pipeline.generate(images, PROMPT, max_new_tokens=16)
    np.testing.assert_array_equal(generation.tokens, expected)
    assert generation.texts == [adapter.tokenizer.decode(row, skip_special_tokens=True) for row in expected]


def test_stream_yields_the_generated_text(exports):
    pipeline = Pipeline(exports("tiny-qwen2.5-vl"))
    image = synthetic_image(224, 224, 4)
    pieces = list(pipeline.stream(image, PROMPT, max_new_tokens=16))
    assert len(pieces) > 1
    assert "".join(pieces) == pipeline.generate(image, PROMPT, max_new_tokens=16).texts[0]


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-llava"])
def test_reported_kv_bytes_equal_the_cost_model(family, exports):
    adapter = load_model(family)
    adapter.apply_luvc()
    image = synthetic_image(224, 224, 2)
    inputs = adapter.prepare_inputs([image], PROMPT)
    generation = Pipeline(exports(family)).generate(image, PROMPT, max_new_tokens=2)
    assert generation.timings.kv_cache_bytes == adapter.cost(inputs, kv_bytes_per_element=4).kv_cache_bytes
    assert generation.timings.kv_cache_bytes < adapter.cost(inputs, kv_bytes_per_element=4).kv_cache_bytes_baseline


def test_kv_cache_is_preallocated_and_ping_pongs():
    cache = KVCache(batch=1, kv_heads=2, head_dim=4, max_lengths=[6, 3], dtype=np.float32)
    buffers = [id(buffer) for layer in cache.buffers for kind in layer for buffer in kind]
    presents = {
        f"present.{layer}.{kind}": np.full((1, 2, length, 4), layer, np.float32)
        for layer, length in ((0, 4), (1, 1))
        for kind in ("key", "value")
    }
    cache.load(presents)
    for step in range(2):
        targets = cache.present_targets()
        past = cache.past()
        for name, target in targets.items():
            layer = int(name.split(".")[1])
            assert target.shape[2] == cache.lengths[layer] + 1 and target.flags["C_CONTIGUOUS"]
            assert any(np.shares_memory(target, buffer) for buffer in cache.buffers[layer][0 if "key" in name else 1])
            target[:, :, :-1] = past[name.replace("present", "past_key_values")]
            target[:, :, -1] = 10 + step
        cache.advance()
    assert cache.lengths == [6, 3]
    assert [id(buffer) for layer in cache.buffers for kind in layer for buffer in kind] == buffers
    np.testing.assert_array_equal(cache.past()["past_key_values.1.value"][0, 0, :, 0], [1, 10, 11])
    assert cache.nbytes() == 2 * (6 + 3) * 2 * 4 * 4


def test_sampling_is_seeded_and_top_k_one_is_greedy(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    image = synthetic_image(224, 224, 6)
    greedy = pipeline.generate(image, PROMPT, max_new_tokens=8).tokens
    assert np.array_equal(pipeline.generate(image, PROMPT, 8, SamplingConfig(1.0, top_k=1, seed=1)).tokens, greedy)
    sampled = [pipeline.generate(image, PROMPT, 8, SamplingConfig(1.5, top_p=0.95, seed=5)).tokens for _ in range(2)]
    assert np.array_equal(*sampled) and not np.array_equal(sampled[0], greedy)
