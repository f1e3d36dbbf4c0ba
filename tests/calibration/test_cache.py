"""The TensorRT calibration cache: text format round trip and clear errors."""

import struct

import numpy as np
import pytest

from luvc.calibration import format_calibration_cache, read_calibration_cache, write_calibration_cache
from luvc.errors import LuvcError


def test_cache_round_trips_float32_scales(tmp_path):
    scales = {"/llm/layers.0/input_layernorm/Mul_1/output_0": 0.0123, "inputs_embeds": 1 / 127, "x: y": 3.5e-5}
    path = write_calibration_cache(tmp_path / "graph.cache", scales, version=100300)
    header, read = read_calibration_cache(path)
    assert header == "TRT-100300-EntropyCalibration2"
    assert read == {name: float(np.float32(value)) for name, value in scales.items()}


def test_cache_lines_are_big_endian_float32_hex():
    text = format_calibration_cache({"input": 1 / 127})
    line = text.splitlines()[1]
    assert line == f"input: {struct.pack('>f', 1 / 127).hex()}" == "input: 3c010204"


def test_bad_caches_are_named(tmp_path):
    with pytest.raises(LuvcError, match="does not exist"):
        read_calibration_cache(tmp_path / "missing.cache")
    (tmp_path / "bad.cache").write_text("TRT-100300-EntropyCalibration2\ninput: zz\n")
    with pytest.raises(LuvcError, match="bad.cache:2"):
        read_calibration_cache(tmp_path / "bad.cache")
    (tmp_path / "other.cache").write_text("not a cache\n")
    with pytest.raises(LuvcError, match="header"):
        read_calibration_cache(tmp_path / "other.cache")
