"""Fitting images and clips to an export's buckets: which bucket, what the pixels become, and what is refused.

Expected buckets are worked out by hand from the tiny models' processors (Qwen2-VL: multiples of 28 within 56x56 ..
448x448 pixels; InternVL: 112-px tiles, 1 to 6 of them; LLaVA: a 224 centre crop)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from luvc.errors import LuvcError
from luvc.models import load_model
from luvc.runtime.fit import BucketFitter, Fit, fit_visual, nearest_size
from luvc.videos import synthetic_video

QWEN_BUCKETS = ((224, 224), (168, 252))  # (H, W), as the Qwen2-VL test export has them


@pytest.fixture(scope="module")
def processors():
    return {name: load_model(name).image_processor for name in ("tiny-qwen2-vl", "tiny-internvl", "tiny-llava")}


# (W, H) of the image as PIL gives it -> the bucket it lands in, and whether its pixels change
QWEN_CASES = [
    ((640, 480), "168x252", True),  # 4:3 -> the 3:2 bucket (the processor would make 364x504)
    ((480, 640), "224x224", True),  # 3:4 is nearer 1:1 than 3:2
    ((1920, 1080), "168x252", True),
    ((300, 300), "224x224", True),  # the processor would make 308x308
    ((252, 168), "168x252", False),  # the processor keeps it: a bucket already
    ((224, 224), "224x224", False),
    ((5000, 2000), "168x252", True),
    ((100, 700), "224x224", True),
]


@pytest.mark.parametrize(("size", "bucket", "changed"), QWEN_CASES, ids=[f"{w}x{h}" for (w, h), _, _ in QWEN_CASES])
def test_nearest_resizes_to_the_bucket_nearest_the_aspect_ratio(processors, size, bucket, changed):
    image = Image.new("RGB", size, (200, 40, 40))
    fitted, fit = fit_visual(image, QWEN_BUCKETS, processors["tiny-qwen2-vl"], "nearest")
    assert fit.bucket == bucket and fit.changed == changed
    height, width = map(int, bucket.split("x"))
    assert fitted.size == (width, height)
    if changed:  # the processor's own interpolation, bicubic, on the whole image: no crop
        expected = image.resize((width, height), Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(np.asarray(fitted), np.asarray(expected))
    else:
        assert fitted is image


def test_pad_keeps_the_aspect_ratio_of_a_drawn_circle(processors):
    image = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(image).ellipse((170, 90, 470, 390), fill="black")  # a circle of 300 px
    fitted, fit = fit_visual(image, QWEN_BUCKETS, processors["tiny-qwen2-vl"], "pad")
    assert fit.bucket == "168x252" and fitted.size == (252, 168)
    assert fit.change == "image 480x640 scaled to 168x224 and padded to 168x252"
    dark = np.argwhere(np.asarray(fitted.convert("L")) < 60)  # the circle (the bars are mid-grey)
    extent_h, extent_w = dark.max(axis=0) - dark.min(axis=0) + 1
    assert abs(extent_w - extent_h) <= 1  # still a circle: scaled, not stretched (nearest would make it 1.125:1)
    mean = tuple(round(255 * m) for m in processors["tiny-qwen2-vl"].image_mean)
    assert fitted.getpixel((0, 0)) == mean and fitted.getpixel((251, 84)) == mean  # the bars: the processor's mean
    stretched, _ = fit_visual(image, QWEN_BUCKETS, processors["tiny-qwen2-vl"], "nearest")
    dark = np.argwhere(np.asarray(stretched.convert("L")) < 60)
    extent_h, extent_w = dark.max(axis=0) - dark.min(axis=0) + 1
    assert extent_w / extent_h > 1.1


def test_exact_changes_nothing_and_leaves_the_refusal_to_the_bucket_lookup(processors):
    image = Image.new("RGB", (640, 480))
    assert fit_visual(image, QWEN_BUCKETS, processors["tiny-qwen2-vl"], "exact") == (image, None)
    with pytest.raises(LuvcError, match=r"Fit policy 'stretch' is not one of \['nearest', 'pad', 'exact'\]"):
        fit_visual(image, QWEN_BUCKETS, processors["tiny-qwen2-vl"], "stretch")


def test_internvl_picks_the_exported_tile_canvas_nearest_the_aspect(processors):
    canvases = ((112, 112), (224, 336))  # one tile; 2 x 3 tiles
    processor = processors["tiny-internvl"]
    own = Image.new("RGB", (1280, 800))  # its own grid is 2 x 3 tiles (3:2 is nearest 16:10): exported, left as it is
    assert fit_visual(own, canvases, processor, "nearest") == (own, Fit("224x336"))
    wide, fit = fit_visual(Image.new("RGB", (1280, 600)), canvases, processor, "nearest")  # its own: 1 x 2 tiles
    assert fit == Fit("224x336", "image 600x1280 resized to 224x336") and wide.size == (336, 224)
    square, fit = fit_visual(Image.new("RGB", (500, 480)), canvases, processor, "nearest")
    assert fit.bucket == "112x112" and square.size == (112, 112)
    # the processor itself cuts an image of the canvas's size into that canvas (no second guess)
    from luvc.processing import tile_canvas

    assert tile_canvas((224, 336), processor) == (224, 336) and tile_canvas((112, 112), processor) == (112, 112)


def test_llava_images_are_left_to_the_processors_crop_unless_padded(processors):
    processor = processors["tiny-llava"]
    image = Image.new("RGB", (640, 480))
    assert fit_visual(image, ((224, 224),), processor, "nearest") == (image, Fit("224x224"))
    padded, fit = fit_visual(image, ((224, 224),), processor, "pad")  # LLaVA-1.5's own pad-to-square
    assert padded.size == (224, 224) and fit.change == "image 480x640 scaled to 168x224 and padded to 224x224"


def test_clips_are_resampled_to_the_bucket_frame_count_and_resized(processors):
    processor = processors["tiny-qwen2-vl"]
    buckets = ((224, 224), (8, 112, 168))
    long_clip = synthetic_video(13, 96, 128)  # 13 sampled frames (the processor would pad them to 14), 3:4
    fitted, fit = fit_visual(long_clip, buckets, processor, "nearest", temporal_patch=2)
    assert fit.bucket == "8x112x168"
    assert fit.change == "13 frames resampled to 8; frames 96x128 resized to 112x168"
    assert fitted.frame_indices == (0, 2, 3, 5, 7, 9, 10, 12)  # spread evenly over the clip
    assert {frame.size for frame in fitted.frames} == {(168, 112)}
    short_clip = synthetic_video(5, 112, 168)
    fitted, fit = fit_visual(short_clip, buckets, processor, "nearest", temporal_patch=2)
    assert fit.change == "5 frames resampled to 8" and fitted.frame_indices == (0, 1, 1, 2, 2, 3, 3, 4)
    exact_count = synthetic_video(7, 112, 168)  # the processor pads 7 to 8: nothing to resample
    fitted, fit = fit_visual(exact_count, buckets, processor, "nearest", temporal_patch=2)
    assert fit == Fit("8x112x168") and fitted is exact_count


def test_an_image_and_a_clip_fit_a_mixed_bucket(processors):
    buckets = ((224, 224), (8, 112, 168), ((224, 224), (8, 112, 168)))
    pair = (Image.new("RGB", (300, 280)), synthetic_video(4, 112, 168))
    (image, clip), fit = fit_visual(pair, buckets, processors["tiny-qwen2-vl"], "nearest", temporal_patch=2)
    assert fit.bucket == "224x224+8x112x168" and image.size == (224, 224) and len(clip.frames) == 8


def test_a_kind_without_a_bucket_is_named(processors):
    processor = processors["tiny-qwen2-vl"]
    with pytest.raises(LuvcError, match=r"This export has no video bucket \(buckets: \['224x224'\]\)"):
        fit_visual(synthetic_video(8, 112, 168), ((224, 224),), processor, "nearest", temporal_patch=2)
    with pytest.raises(LuvcError, match="This export has no image bucket"):
        fit_visual(Image.new("RGB", (64, 64)), ((8, 112, 168),), processor, "nearest")
    with pytest.raises(LuvcError, match="has no bucket for an image and a video"):
        fit_visual((Image.new("RGB", (64, 64)), synthetic_video(8, 112, 168)), ((224, 224),), processor, "nearest")


def test_nearest_size_weighs_portrait_and_landscape_alike():
    assert nearest_size((100, 200), [(200, 100), (100, 100)]) == (100, 100)  # 1:2 is as far from 2:1 as 2:1 from 1:1
    assert nearest_size((100, 100), [(56, 56), (224, 224), (112, 224)]) == (56, 56)  # then the nearest area


def test_a_fitter_reads_its_export(processors):
    fitter = BucketFitter(QWEN_BUCKETS, processors["tiny-qwen2-vl"], "pad")
    image, fit = fitter(Image.new("RGB", (480, 640)))
    assert fit.bucket == "224x224" and image.size == (224, 224)
    with pytest.raises(LuvcError, match="is not one of"):
        BucketFitter(QWEN_BUCKETS, processors["tiny-qwen2-vl"], "crop")
