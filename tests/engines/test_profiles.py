from luvc.engines.profiles import dimension_ranges, input_profile
from luvc.export.manifest import ExportManifest
from tests.conftest import QWEN_BUCKETS


def test_profiles_follow_buckets_budgets_and_limits(exports):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"))
    limits = manifest.profile
    for height, width in QWEN_BUCKETS:
        bucket = manifest.buckets[f"{height}x{width}"]
        prompt = bucket.visual_start + bucket.tokens_per_image
        low, opt, high = dimension_ranges(manifest, bucket.prefill)["sequence_length"]
        # from no text before the visual tokens to the template's prefix + the profile's text
        assert (low, high) == (bucket.tokens_per_image + bucket.min_text_tokens, prompt + limits.max_text_tokens)
        assert low <= opt <= high
        shapes = input_profile(manifest, bucket.prefill)
        assert shapes["position_ids"] == ([3, 1, low], [3, 1, opt], [3, limits.max_batch, high])
    decode = input_profile(manifest, "decode")  # fixed KV capacities: the batch and the attention window vary
    capacity = manifest.kv_cache.capacity
    assert decode["past_key_values.0.key"] == ([1, 2, capacity[0], 8], [1, 2, capacity[0], 8], [4, 2, capacity[0], 8])
    assert set(dimension_ranges(manifest, "decode")) == {"batch", "images", "attention_window"}
    assert decode["attention_window"] == ([1], [min(max(capacity), 512)], [max(capacity)])
    # per row: its length and its visual shift; per layer and row: the write index
    assert shapes["prompt_lengths"] == ([1], [1], [limits.max_batch]) == shapes["visual_shift"]
    assert decode["kv_write_index"] == ([len(capacity), 1], [len(capacity), 1], [len(capacity), limits.max_batch])
    text = dimension_ranges(manifest, manifest.text_prefill)["sequence_length"]  # prompts without visuals
    assert text[0] == 2 and text[2] == min(capacity) - limits.max_new_tokens == manifest.longest_text_prompt
    vision = input_profile(manifest, "vision_224x224")
    assert all(low == high for low, _, high in vision.values())  # Qwen vision graphs are static per bucket
