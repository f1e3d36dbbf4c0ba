"""The image processor's rules as the runtime reads them without ``transformers``' image processors (luvc.processing,
luvc.pixel_recipe): the two size rules equal ``transformers``' own functions, and every family's recorded
``ImageRules`` fit and make pixels as its processor does."""

import dataclasses
import itertools
import json

import numpy as np
import pytest
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as transformers_smart_resize

from luvc.images import synthetic_image
from luvc.models import TINY_MODELS
from luvc.models.tiny import build_tiny
from luvc.pixel_recipe import PixelRecipe, recorded_rules
from luvc.processing import (
    ImageRules,
    fill_colour,
    optimal_tile_grid,
    processed_size,
    resample_of,
    smart_resize,
    tile_canvas,
)
from luvc.runtime.pixels import BytePixelMaker

SIDES = (1, 13, 27, 28, 29, 56, 100, 223, 224, 225, 333, 448, 640, 897, 1023, 1920, 4000)
SIZES = [(h, w) for h, w in itertools.product(SIDES, SIDES) if max(h, w) / min(h, w) <= 200]


@pytest.mark.parametrize(("factor", "min_pixels", "max_pixels"), [(28, 3136, 200704), (32, 4096, 262144), (28, 56, 56)])
def test_smart_resize_is_transformers(factor, min_pixels, max_pixels):
    for height, width in SIZES:
        expected = transformers_smart_resize(height, width, factor, min_pixels, max_pixels)
        assert smart_resize(height, width, factor, min_pixels, max_pixels) == tuple(expected), (height, width)


def test_smart_resize_refuses_what_transformers_refuses():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        smart_resize(1, 201, 28, 3136, 200704)


@pytest.mark.parametrize(
    ("tile", "min_tiles", "max_tiles"), [((448, 448), 1, 12), ((112, 112), 1, 6), ((384, 384), 2, 9)]
)
def test_optimal_tile_grid_is_transformers(tile, min_tiles, max_tiles):
    get_optimal_tiled_canvas.cache_clear()
    for size in SIZES:
        assert optimal_tile_grid(size, tile, min_tiles, max_tiles) == tuple(
            get_optimal_tiled_canvas(size, tile, min_tiles, max_tiles)
        ), size


@pytest.fixture(scope="module")
def processors():
    return {name: build_tiny(name)[2] for name in TINY_MODELS}


def _saved_and_loaded(processor, folder):
    """The processor as an export saves it and the runtime loads it (its PIL form)."""
    from luvc.processing import load_image_processor

    processor.save_pretrained(folder)
    return load_image_processor(folder)


@pytest.mark.parametrize("family", TINY_MODELS)
def test_every_familys_rules_fit_and_make_pixels_as_its_processor(family, processors, tmp_path):
    processor = _saved_and_loaded(processors[family], tmp_path)
    rules = recorded_rules(processor)
    assert rules is not None, family  # every family here runs without its processor
    rules = ImageRules.from_dict(json.loads(json.dumps(dataclasses.asdict(rules))))  # as a manifest holds them
    for size in SIZES:
        assert processed_size(rules, size) == processed_size(processor, size), (family, size)
        if getattr(processor, "crop_to_patches", None) is not None:
            assert tile_canvas(size, rules) == tile_canvas(size, processor), (family, size)
    assert resample_of(rules) == resample_of(processor) and fill_colour(rules) == fill_colour(processor)
    made, table = PixelRecipe.of(rules).table, PixelRecipe.of(processor).table
    assert isinstance(made, np.ndarray) and made.dtype == table.dtype == np.float32
    np.testing.assert_array_equal(made, table)
    from_rules, from_processor = BytePixelMaker(rules), BytePixelMaker(processor)
    for size in [(224, 224), (112, 224), (224, 336), (448, 448), (200, 300)]:
        images = [synthetic_image(*size, seed) for seed in (5, 6)]
        expected = from_processor(images)
        made = from_rules(images)
        assert (made is None) == (expected is None), (family, size)
        if expected is not None:
            np.testing.assert_array_equal(np.asarray(made), np.asarray(expected))
            assert made.size == expected.size


def test_a_processor_of_another_backend_records_no_rules():
    class TorchvisionProcessor:  # what a family without a PIL form loads as (torchvision does not run here)
        image_mean, image_std, rescale_factor, patch_size, merge_size = [0.5] * 3, [0.5] * 3, 1 / 255, 14, 2

    assert recorded_rules(TorchvisionProcessor()) is None


def test_a_processor_whose_values_the_arithmetic_does_not_make_records_no_rules(processors):
    tiny = processors["tiny-gemma3"]  # 1/127.5 and a mean of 1: the recipe looks each byte up in the processor's table
    processor = type(tiny).from_dict({**tiny.to_dict(), "rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0]})
    assert recorded_rules(processor) is None and recorded_rules(tiny) is not None


def test_rules_with_an_attribute_this_release_does_not_read_are_refused():
    with pytest.raises(KeyError, match="image_rules.attributes: do_magic"):
        ImageRules.from_dict({"processor_type": "X", "attributes": {"do_magic": True}})
