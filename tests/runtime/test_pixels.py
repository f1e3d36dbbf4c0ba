"""Pixels made on the device from 8-bit images (luvc.runtime.pixels) are the transformers image processor's, bit for
bit, for every family; images the processor would resize, crop or convert are left to the processor."""

import dataclasses

import numpy as np
import pytest
import torch

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.models import TINY_MODELS
from luvc.models.tiny import build_tiny
from luvc.runtime.pixels import BytePixelMaker, BytePixels, concatenate_pixels, pil_backed
from luvc.runtime.prepare import Preparer

# per family, sizes (H, W) its processor leaves as they are (the fast path), and one it resizes or crops
KEPT_SIZES = {
    "tiny-qwen2-vl": [(224, 224), (112, 224), (224, 336)],
    "tiny-qwen2.5-vl": [(224, 224), (224, 336)],
    "tiny-qwen3-vl": [(224, 224), (448, 448)],
    "tiny-qwen3.5": [(224, 224)],
    "tiny-internvl": [(112, 112), (224, 224), (112, 224), (224, 336)],  # 1, 4, 2 and 6 tiles (+ a thumbnail)
    "tiny-llava": [(224, 224)],
    "tiny-gemma3": [(224, 224)],
}
RESIZED_SIZE = (200, 300)  # no family's processor keeps it


@pytest.fixture(scope="module")
def processors():
    return {name: build_tiny(name)[2] for name in TINY_MODELS}


def test_every_family_has_sizes_here():
    assert set(KEPT_SIZES) == set(TINY_MODELS)


@pytest.mark.parametrize("family", list(KEPT_SIZES))
def test_device_pixels_are_the_processors_bit_for_bit(family, processors):
    processor = processors[family]
    maker = BytePixelMaker(processor)
    for height, width in KEPT_SIZES[family]:
        images = [synthetic_image(height, width, seed) for seed in (3, 4)]
        pixels = maker(images)
        assert pixels is not None, (family, height, width)
        expected = processor(images=images, return_tensors="np")["pixel_values"]
        made = np.asarray(pixels)
        assert made.dtype == np.float32 and made.shape == expected.shape == pixels.shape
        np.testing.assert_array_equal(made, expected)
        assert pixels.size == (height, width)


@pytest.mark.parametrize("family", list(KEPT_SIZES))
def test_what_the_processor_would_resize_or_convert_is_left_to_it(family, processors):
    maker = BytePixelMaker(processors[family])
    assert maker([synthetic_image(*RESIZED_SIZE, 1)]) is None
    kept = KEPT_SIZES[family][0]
    assert maker([synthetic_image(*kept, 1).convert("RGBA")]) is None  # the processor converts to RGB
    assert maker([synthetic_image(*kept, 1), synthetic_image(kept[0] + 56, kept[1], 2)]) is None  # sizes differ
    assert maker([]) is None


def test_a_processor_of_another_backend_makes_its_own_pixels(processors):
    class TorchvisionProcessor:  # what a family without a PIL form loads as (torchvision does not run here)
        image_mean, image_std, rescale_factor, patch_size, merge_size = [0.5] * 3, [0.5] * 3, 1 / 255, 14, 2

    assert all(pil_backed(processor) for processor in processors.values())
    assert not pil_backed(TorchvisionProcessor())
    assert BytePixelMaker(TorchvisionProcessor())([synthetic_image(224, 224, 1)]) is None


def test_the_host_sends_the_device_bytes_not_floats(processors):
    maker = BytePixelMaker(processors["tiny-qwen2-vl"])
    pixels = maker([synthetic_image(224, 224, 5)])
    sent = []

    def to_device(array):
        sent.append((array.dtype, array.nbytes))
        return torch.from_numpy(np.ascontiguousarray(array))

    values = pixels.on(to_device)
    assert values.dtype == torch.float32 and tuple(values.shape) == pixels.shape == (256, 1176)
    assert sent[0] == (np.dtype(np.uint8), 224 * 224 * 3)  # the image; then the divisor, means and deviations
    assert sent[1:] == [(np.dtype(np.float32), 4), (np.dtype(np.float32), 3 * 4), (np.dtype(np.float32), 3 * 4)]
    assert sum(nbytes for _, nbytes in sent) < values.numel()  # float32's quarter (an eighth: Qwen's 2 frames)


def test_a_rescale_no_division_makes_exactly_takes_the_table(processors):
    # 1/127.5 and a mean of 1: dividing by round(127.5) is not the processor's arithmetic, so the recipe says so and
    # looks each byte up in the processor's own table
    tiny = processors["tiny-gemma3"]
    processor = type(tiny).from_dict({**tiny.to_dict(), "rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0]})
    maker = BytePixelMaker(processor)
    assert not maker.recipe.arithmetic and all(BytePixelMaker(p).recipe.arithmetic for p in processors.values())
    images = [synthetic_image(224, 224, 9)]
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(np.asarray(maker(images)), expected)


def test_batches_join_as_the_processor_joins_them(processors):
    processor = processors["tiny-internvl"]
    maker = BytePixelMaker(processor)
    images = [synthetic_image(224, 336, seed) for seed in (6, 7)]
    joined = concatenate_pixels([maker(images[:1]), maker(images[1:])])
    assert isinstance(joined, BytePixels)
    np.testing.assert_array_equal(np.asarray(joined), processor(images=images, return_tensors="np")["pixel_values"])
    arrays = [np.zeros((1, 2), np.float32), np.ones((2, 2), np.float32)]
    np.testing.assert_array_equal(concatenate_pixels(arrays), np.concatenate(arrays))


def test_an_unknown_preprocessing_is_refused(tmp_path):
    with pytest.raises(LuvcError, match="preprocessing='gpu' is not one of device, processor"):
        Preparer(tmp_path, None, "nearest", "gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-internvl"])
def test_on_a_gpu_the_values_are_the_processors(family, processors):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA; none here")
    processor = processors[family]
    images = [synthetic_image(224, 224, seed) for seed in (3, 4)]
    pixels = BytePixelMaker(processor)(images)
    made = pixels.on(lambda array: torch.from_numpy(np.ascontiguousarray(array)).to("cuda:0"))
    assert made.device.type == "cuda"
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(made.cpu().numpy(), expected)


def test_an_export_without_recorded_rules_prepares_with_its_processor_alike(copied_export):
    from luvc.export.manifest import ExportManifest

    folder = copied_export("tiny-internvl")  # tiles and a thumbnail: the most the rules decide
    manifest = ExportManifest.load(folder)
    assert manifest.image_rules is not None and manifest.image_rules.processor_type == "GotOcr2ImageProcessorPil"
    images = [synthetic_image(224, 336, 8)]  # fitted to a bucket, then cut into tiles
    with_rules = Preparer(folder, manifest, "nearest")
    expected = with_rules(images, ["What is this?"])
    assert with_rules._processor is None  # never loaded
    written_before = dataclasses.replace(manifest, image_rules=None)  # an export written before the rules
    written_before.save(folder)
    without = Preparer(folder, ExportManifest.load(folder), "nearest")
    got = without(images, ["What is this?"])
    assert without._processor is not None
    assert got.bucket == expected.bucket and got.fits == expected.fits
    for made, reference in zip(got.pixels, expected.pixels, strict=True):
        np.testing.assert_array_equal(np.asarray(made), np.asarray(reference))
