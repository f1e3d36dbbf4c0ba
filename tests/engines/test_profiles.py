from luvc.engines.profiles import dimension_ranges, input_profile
from luvc.export.manifest import ExportManifest
from tests.conftest import QWEN_BUCKETS


def test_profiles_follow_buckets_budgets_and_limits(exports):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"))
    limits = manifest.profile
    for height, width in QWEN_BUCKETS:
        bucket = manifest.buckets[f"{height}x{width}"]
        prompt = bucket["visual_start"] + bucket["tokens_per_image"]
        low, opt, high = dimension_ranges(manifest, bucket["prefill"])["sequence_length"]
        assert (low, high) == (prompt + bucket["min_text_tokens"], prompt + limits["max_text_tokens"])
        assert low <= opt <= high
        shapes = input_profile(manifest, bucket["prefill"])
        assert shapes["position_ids"] == ([3, 1, low], [3, 1, opt], [3, limits["max_batch"], high])
    decode = dimension_ranges(manifest, "decode")
    first, last = decode["past_sequence_length_0"], decode[f"past_sequence_length_{manifest.prompt['num_layers'] - 1}"]
    assert last[0] < first[0] and last[2] < first[2]  # the last layer caches no visual token
    small = min(manifest.buckets.values(), key=lambda b: b["tokens_per_image"])
    assert last[0] == small["visual_start"] + small["min_text_tokens"]  # zero budget: prefix + text only
    vision = input_profile(manifest, "vision_224x224")
    assert all(low == high for low, _, high in vision.values())  # Qwen vision graphs are static per bucket
