"""Backends: a missing backend, a missing or truncated engine, and TensorRT against ONNX Runtime."""

import sys

import pytest

from luvc.engines.builder import build_engines
from luvc.engines.targets import target_for_capability
from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.runtime.pipeline import GenerationOptions, Pipeline


def test_backend_not_installed(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the package were absent
    with pytest.raises(LuvcError, match=r"ONNX Runtime is not installed; run `.* -m pip install onnxruntime`"):
        Pipeline(exports("tiny-llava")).sessions["embed"]
    from luvc.engines.trt_module import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(LuvcError, match="No TensorRT Python module .* pip install tensorrt-rtx"):
        import_tensorrt()


def test_trt_backend_needs_its_engine_folder(exports):
    with pytest.raises(LuvcError, match="pass --engines ENGINE_DIR"):
        Pipeline(exports("tiny-llava"), backend="trt")


@pytest.mark.gpu
def test_trt_backend_matches_ort(exports, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the TensorRT backend runs engines, which needs an NVIDIA GPU; none here")
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    capability = torch.cuda.get_device_capability()
    target = target_for_capability(capability)  # engines for the GPU at hand
    if target is None:
        pytest.skip(f"no target preset covers this GPU (SM {capability[0]}.{capability[1]})")
    engines = build_engines(
        exports("tiny-llava"), target.name, tmp_path / "engines", show_progress=False, hardware_compatible=False
    )
    image = synthetic_image(224, 224, 3)
    expected = Pipeline(exports("tiny-llava")).generate(image, "hi", GenerationOptions(8)).tokens
    got = (
        Pipeline(exports("tiny-llava"), backend="trt", engines_dir=engines)
        .generate(image, "hi", GenerationOptions(8))
        .tokens
    )
    assert (got == expected).all()


def test_a_truncated_engine_is_named_before_anything_runs(exports, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    engines = build_engines(exports("tiny-llava"), "ampere", tmp_path / "engines", show_progress=False)
    decode = engines / "decode.engine"  # not the first engine the pipeline would open
    decode.write_bytes(decode.read_bytes()[:-100])
    with pytest.raises(LuvcError, match=r"decode.engine is truncated or padded: .* rebuild it"):
        Pipeline(exports("tiny-llava"), backend="trt", engines_dir=engines)


def test_shared_weight_engines_without_a_gpu_stop_with_one_line(exports, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without a GPU")
    engines = build_engines(exports("tiny-llava"), "ampere", tmp_path / "engines", show_progress=False)
    pipeline = Pipeline(exports("tiny-llava"), backend="trt", engines_dir=engines)  # weights are engine inputs
    with pytest.raises(LuvcError, match="[Rr]unning a TensorRT engine needs an NVIDIA GPU with CUDA; use --backend"):
        pipeline.generate(synthetic_image(224, 224, 3), "hi", GenerationOptions(2))


def test_engines_from_another_model_are_refused(exports, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    engines = build_engines(exports("tiny-llava"), "ampere", tmp_path / "llava-engines", show_progress=False)
    with pytest.raises(LuvcError, match="built from another export"):
        Pipeline(exports("tiny-qwen2-vl"), backend="trt", engines_dir=engines)
