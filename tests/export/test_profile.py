"""Image-size and video buckets: a second size inside the profile runs, a size outside it gets a clear error."""

import numpy as np
import pytest

from luvc.errors import LuvcError
from luvc.export.bucket_plan import plan_bucket
from luvc.export.buckets import BucketSet, parse_image_option, parse_video_size
from luvc.export.profile import ExportProfile
from luvc.models import load_model
from luvc.runtime.pipeline import Pipeline
from tests.conftest import QWEN_BUCKETS
from tests.export.conftest import relative_error


def test_second_bucket_matches_pytorch(exports, references):
    height, width = QWEN_BUCKETS[1]
    reference = references("tiny-qwen2-vl", height, width)
    graphs = Pipeline(exports("tiny-qwen2-vl"))
    assert sorted(graphs.manifest.buckets) == sorted(f"{h}x{w}" for h, w in QWEN_BUCKETS)
    tokens, step_logits, _ = graphs.greedy(
        graphs.preparer.from_arrays(
            reference.inputs["input_ids"].numpy(), reference.inputs["pixel_values"].numpy(), (height, width)
        ),
        16,
    )
    np.testing.assert_array_equal(tokens, reference.tokens)
    assert relative_error(step_logits, reference.step_logits) <= 1e-4


def test_size_outside_profile_is_refused(exports, references):
    graphs = Pipeline(exports("tiny-qwen2-vl"), fit="exact")
    with pytest.raises(LuvcError, match=r"448x448 is outside this export's profile.*--image-size 448x448"):
        graphs.manifest.bucket_for((448, 448))


def test_bucket_must_be_a_processed_size():
    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    with pytest.raises(LuvcError, match="use --image-size 224x224"):
        plan_bucket(adapter, (230, 230))


def test_a_processor_that_keeps_no_nearby_size_is_named_instead_of_a_wrong_size():
    from transformers import Qwen2VLImageProcessorPil

    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    # a pinned pixel count: non-square sizes alternate between 168x252 and 196x280, neither is kept
    adapter.image_processor = Qwen2VLImageProcessorPil(min_pixels=224 * 224, max_pixels=224 * 224)
    with pytest.raises(LuvcError, match="into 196x280 pixels.*no nearby size is kept as it is; set the processor's"):
        plan_bucket(adapter, (168, 252))
    assert plan_bucket(adapter, (224, 224)).image_size == (224, 224)


def test_video_buckets_are_processed_frame_counts_and_sizes():
    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    bucket = plan_bucket(adapter, (112, 168), frames=8)
    assert (bucket.name, bucket.frames, bucket.tokens_per_image) == ("8x112x168", 8, 48)  # 4 slices of 4x6 units
    assert bucket.uncompressed_tokens_per_image == 96
    with pytest.raises(LuvcError, match="A 5-frame video becomes 6 frames .* use --video-size 6x112x168"):
        plan_bucket(adapter, (112, 168), frames=5)
    with pytest.raises(LuvcError, match="use --video-size 8x224x224"):
        plan_bucket(adapter, (230, 230), frames=8)
    assert ExportProfile(video_sizes=((8, 112, 168),)).resolve(adapter).image_sizes == ()  # videos only
    families = r"Qwen-VL families only \(Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5\)"
    with pytest.raises(LuvcError, match=families + ". Leave out --video-size"):
        ExportProfile(video_sizes=((8, 224, 224),)).resolve(load_model("tiny-llava"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("8x224", "is not FRAMESxHxW"), ("0x224x224", "between 1 and 768"), ("8x10x224", "between 28 and 8192")],
)
def test_bad_video_sizes_are_named(text, message):
    with pytest.raises(LuvcError, match=message):
        parse_video_size(text)


def test_llava_bucket_is_the_vision_tower_size():
    adapter = load_model("tiny-llava")
    adapter.apply_luvc()
    assert ExportProfile().resolve(adapter).image_sizes == ((224, 224),)
    with pytest.raises(LuvcError, match="cannot be a bucket"):
        plan_bucket(adapter, (336, 336))


# worked out by hand: each aspect at 448 x 448 pixels, rounded by Qwen2-VL's processor to multiples of 28 (its limit
# is 448 x 448 pixels); the camera modes scaled under that limit, likewise
BUCKET_SETS = [
    ("tiny-qwen2-vl", "aspects", [(448, 448), (392, 504), (504, 392), (336, 588), (588, 336)]),
    ("tiny-qwen2-vl", "cameras", [(364, 504), (504, 364), (336, 588), (588, 336)]),
    ("tiny-internvl", "aspects", [(112, 112), (224, 336), (336, 224), (112, 224), (224, 112)]),  # tile canvases
    ("tiny-llava", "cameras", [(224, 224)]),  # its processor makes every image 224 x 224
]


@pytest.mark.parametrize(("family", "name", "sizes"), BUCKET_SETS, ids=[f"{f}-{n}" for f, n, _ in BUCKET_SETS])
def test_a_named_bucket_set_becomes_the_sizes_the_processor_keeps(family, name, sizes):
    adapter = load_model(family)
    resolved = ExportProfile(image_sizes=(parse_image_option(name),)).resolve(adapter).image_sizes
    assert list(resolved) == sizes
    processor = adapter.image_processor
    from luvc.processing import processed_size

    assert all(processed_size(processor, size) == size for size in resolved)  # buckets are sizes it keeps


def test_the_resolved_profile_holds_int_sizes_and_a_size_of_the_wrong_rank_is_named():
    """What a library caller passes (lists, numpy ints) comes out as (H, W) and (frames, H, W) tuples of ints, which
    the manifest records; a size with the wrong number of axes is one line, not an unpacking error."""
    adapter = load_model("tiny-qwen2-vl")
    resolved = ExportProfile(image_sizes=([np.int64(224), 224],), video_sizes=([8, 112, np.int32(168)],)).resolve(
        adapter
    )
    assert resolved.image_sizes == ((224, 224),) and resolved.video_sizes == ((8, 112, 168),)
    assert all(type(side) is int for size in (*resolved.image_sizes, *resolved.video_sizes) for side in size)
    with pytest.raises(LuvcError, match=r"Image size \(224, 224, 3\) is not \(height, width\); give --image-size HxW"):
        ExportProfile(image_sizes=((224, 224, 3),)).resolve(adapter)
    with pytest.raises(LuvcError, match=r"Video size \(112, 168\) is not \(frames, height, width\)"):
        ExportProfile(video_sizes=((112, 168),)).resolve(adapter)


def test_sets_and_sizes_mix_without_repeats():
    adapter = load_model("tiny-qwen2-vl")
    profile = ExportProfile(image_sizes=((224, 224), BucketSet("aspects"), (448, 448), BucketSet("aspects")))
    assert profile.resolve(adapter).image_sizes[:3] == ((224, 224), (448, 448), (392, 504))
    assert len(profile.resolve(adapter).image_sizes) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aspects:10", r"the side must be a number of pixels in \[28, 8192\]"),
        ("aspects:big", "the side must be a number of pixels"),
        ("cameras:448", "the cameras set has no size; use --image-size cameras"),
        ("photos", r"is not HxW, e.g. 448x448, or a named set \(aspects, cameras\)"),
    ],
)
def test_bad_set_names_are_named(text, message):
    with pytest.raises(LuvcError, match=message):
        parse_image_option(text)
