"""Engines built by TensorRT-RTX without a GPU, shared by the engine tests."""

import pytest

from luvc.engines.builder import build_engines

trt_rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")


@pytest.fixture(scope="module")
def engines(exports, tmp_path_factory):
    export = exports("tiny-qwen2-vl")
    out = tmp_path_factory.mktemp("engines") / "ampere"
    return export, build_engines(export, "ampere", out, module="tensorrt_rtx", show_progress=False)
