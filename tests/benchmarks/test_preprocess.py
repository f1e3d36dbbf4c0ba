"""``benchmarks/preprocess.py``: the processors it times are each family's published sizes, and the images it
fits are what the runtime's device path takes (so its check of equal values and its ratio can run)."""

import pytest

from luvc.models import TINY_MODELS
from luvc.runtime.pixels import BytePixelMaker
from tests.benchmarks import benchmark_module


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_every_family_is_timed_on_its_published_size_through_the_device_path(family):
    benchmark = benchmark_module("preprocess")
    processor = benchmark.published_processor(family)
    image = benchmark.fitted(processor, 896)
    expected = {"tiny-llava": (336, 336)}.get(family, (896, 896))  # InternVL3: a 2 x 2 canvas of 448-pixel tiles
    assert (image.height, image.width) == expected
    pixels = BytePixelMaker(processor)([image])
    assert pixels is not None and pixels.size == expected
