"""Host logic of the plugins through the library's C interface: fields as TensorRT's parser gives them, the
checks on them, and the serialization round trip. No GPU needed."""

import re

import pytest

from tests.plugins.harness import INT32, INT64, Fields, PluginLibrary

ORTHO = {
    "index_a": [0, 2, 4],
    "index_b": [1, 3, 4],
    "weight_a": [0.5, 0.5, 1.0],
    "weight_b": [0.5, 0.5, 0.0],
    "axis": 0,
}
PRUNE = {
    "span_starts": [3, 40],
    "span_counts": [32, 20],
    "budgets": [16, 0],  # an image may keep nothing
    "low_frequencies": [8, 5],
    "variant": "spectral-residual",
    "rho": 0.25,
}


@pytest.fixture(scope="module")
def library(plugin_library) -> PluginLibrary:
    return PluginLibrary(plugin_library)


@pytest.mark.parametrize("int_type", [INT32, INT64])
@pytest.mark.parametrize(("plugin", "values"), [("OrthoMerge", ORTHO), ("SpectrumPrune", PRUNE)])
def test_fields_survive_serialization(library, plugin, values, int_type):
    assert library.round_trip(plugin, Fields(values, int_type)) == 1, library.last_error


@pytest.mark.parametrize(
    ("plugin", "change", "message"),
    [
        ("OrthoMerge", {"index_b": [1, 3]}, "must have the same length"),
        ("OrthoMerge", {"index_a": [0, -2, 4]}, "merge indices must be >= 0"),
        ("OrthoMerge", {"axis": None}, "missing field 'axis'"),
        ("SpectrumPrune", {"budgets": [16, 21]}, "budget 21 of image 1 must be between 0 and its 20 tokens"),
        ("SpectrumPrune", {"span_starts": [3, 30]}, "spans must be non-empty, ascending and apart"),
        ("SpectrumPrune", {"variant": "fourier"}, "variant 'fourier' is not spectral-residual or channel-spectrum"),
        ("SpectrumPrune", {"low_frequencies": [33, 5]}, "image 0 keeps 33 DCT rows but has 32 tokens"),
        ("SpectrumPrune", {"rho": 1.5}, r"rho must be in \(0, 1\)"),
        ("SpectrumPrune", {"budgets": [16]}, "need one entry per image"),
    ],
)
def test_bad_fields_are_refused_with_the_reason(library, plugin, change, message):
    values = {**(ORTHO if plugin == "OrthoMerge" else PRUNE), **change}
    values = {name: value for name, value in values.items() if value is not None}
    assert library.round_trip(plugin, Fields(values)) == -1
    assert re.search(message, library.last_error), library.last_error


def test_unknown_plugin_is_named(library):
    assert library.round_trip("TokenMerge", Fields(ORTHO)) == -1
    assert library.last_error == "no plugin called 'TokenMerge'"
