"""Real engines built by TensorRT-RTX without a GPU; manifest checks; engine loading on a GPU machine."""

import dataclasses
from pathlib import Path

import pytest

from luvc.cli.main import main
from luvc.engines.builder import EngineFromOnnx, build_engines
from luvc.engines.manifest import BuiltBy, EngineManifest
from luvc.engines.profiles import input_profile
from luvc.engines.targets import get_target
from luvc.engines.trt_module import import_tensorrt
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import TensorEntry
from luvc.loaders import BaseLoader

trt_rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")


def _static(shape):
    return tuple(dim if isinstance(dim, int) else -1 for dim in shape)


def test_engines_match_the_export_manifest(engines):
    export_dir, engine_dir = engines
    export, manifest = ExportManifest.load(export_dir), EngineManifest.load(engine_dir)
    assert manifest.tensorrt == BuiltBy("tensorrt_rtx", trt_rtx.__version__)
    assert manifest.target["compute_capabilities"] == ["8.0", "8.6"] and manifest.strongly_typed
    assert (
        set(manifest.engines)
        == set(export.graphs)
        == {"embed", "vision_224x224", "vision_168x252", "prefill_224x224", "prefill_168x252", "decode", "prefill_text"}
    )
    for name, graph in export.graphs.items():
        engine = manifest.engines[name]
        assert (engine_dir / engine.file).stat().st_size == engine.bytes > 0
        for kind in ("inputs", "outputs"):
            expected = [(io.name, io.dtype) for io in getattr(graph, kind)]
            assert [(io.name, io.dtype) for io in getattr(engine, kind)] == expected
        for built, exported in zip(engine.inputs, graph.inputs):
            assert built.shape == _static(exported.shape)
        expected_profile = {key: [list(s) for s in shapes] for key, shapes in input_profile(export, name).items()}
        assert engine.profile == expected_profile
        assert engine.source.sha256 == export.files[graph.file]
    assert manifest.export.budgets["224x224"] == list(export.buckets["224x224"].budgets)


def test_fp16_export_builds_strongly_typed_fp16_engines(exports, tmp_path):
    out = build_engines(exports("tiny-llava", "fp16"), "ada", tmp_path / "ada", show_progress=False)
    manifest = EngineManifest.load(out)
    assert manifest.precision == "fp16"
    assert {io.dtype for io in manifest.engines["prefill_224x224"].inputs} == {"float16", "int64"}
    assert manifest.engines["prefill_224x224"].outputs[0] == TensorEntry("logits", "float", (-1, 272))


@dataclasses.dataclass
class _ExportFolder(BaseLoader[Path]):
    """A loader whose result is an export folder made before (in place of OnnxFromCompressedModel's)."""

    folder: Path

    def call_impl(self) -> Path:
        return self.folder


def test_an_export_made_by_a_loader_builds_with_the_default_layout(exports, tmp_path):
    """The builder checks its arguments again once a loader argument has run; its default layout must stay a default
    (an export whose graphs hold their weights then builds embedded engines, as from a folder)."""
    export = exports("tiny-llava", "fp16")
    assert not (export / "weights.data").exists()  # a tiny export keeps its weights in its graphs by default
    out = build_engines(_ExportFolder(export), "ada", tmp_path / "engines", show_progress=False)
    assert EngineManifest.load(out).weights_layout == "embedded"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_compute_float32_products_without_tf32(precision, tmp_path):
    """TensorRT allows TF32 (10 bits of mantissa) for float32 products by default; an fp32 export, and an fp16
    export's float32 norms, softmax and SPU scores, keep their float32."""
    tensorrt = import_tensorrt("tensorrt_rtx")
    trt = tensorrt.module
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    config = builder.create_builder_config()
    assert config.get_flag(trt.BuilderFlag.TF32)
    loader = EngineFromOnnx(tmp_path / "g.onnx", {}, get_target("ada"), tensorrt, precision)
    loader._configure(trt, builder, config, strongly_typed=True)
    assert not config.get_flag(trt.BuilderFlag.TF32)


def test_build_cli_refuses_what_the_target_cannot_run(exports, tmp_path, capsys):
    export = str(exports("tiny-qwen2-vl"))
    assert main(["build", export, "--target", "orin", "--out", str(tmp_path / "orin")]) == 2
    assert "cannot run fp32 engines" in capsys.readouterr().err
    assert (
        main(["build", export, "--target", "hopper", "--out", str(tmp_path / "h"), "--tensorrt-module", "tensorrt_rtx"])
        == 2
    )
    assert "Build hopper engines with full TensorRT" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_build_cli_writes_engines_and_says_tensorrt_rtx_keeps_no_timing_cache(exports, tmp_path, capsys):
    out = tmp_path / "engines"
    argv = [
        "build",
        str(exports("tiny-llava")),
        "--target",
        "ampere",
        "--out",
        str(out),
        "--timing-cache",
        str(tmp_path / "timing.cache"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "Built 5 engines" in printed.out  # embed, vision, prefill, decode and the text prefill
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            ".luvc-files",  # what the build wrote, for --overwrite
            "manifest.json",
            "embed.engine",
            "vision_224x224.engine",
            "prefill_224x224.engine",
            "decode.engine",
            "prefill_text.engine",
        ]
    )
    # TensorRT-RTX (the builder here) compiles kernels on the device and has no timing cache: none is written, no
    # partial file is left, and the user is told so instead of finding an empty cache
    assert "keeps no timing cache" in " ".join(printed.err.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]


@pytest.mark.gpu
def test_engines_deserialize_with_the_recorded_io_and_profiles(engines):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("running a TensorRT engine needs an NVIDIA GPU; none here")
    export_dir, engine_dir = engines
    tensorrt = import_tensorrt("tensorrt_rtx")
    manifest = EngineManifest.load(engine_dir)
    runtime = tensorrt.module.Runtime(tensorrt.module.Logger(tensorrt.module.Logger.ERROR))
    capability = tuple(torch.cuda.get_device_capability())
    for name, entry in manifest.engines.items():
        if not manifest.supports(capability):
            pytest.skip(f"engines are for {manifest.target['name']}, this GPU is SM {capability}")
        engine = runtime.deserialize_cuda_engine(manifest.check_engine(engine_dir, name, tensorrt, capability))
        assert engine is not None
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        assert names == [*(io.name for io in entry.inputs), *(w.name for w in entry.weights)] + [
            io.name for io in entry.outputs
        ]
        for io_name, shapes in entry.profile.items():
            assert [list(s) for s in engine.get_tensor_profile_shape(io_name, 0)] == shapes


@pytest.mark.parametrize("family", ["tiny-qwen3-vl", "tiny-internvl"])
def test_the_newer_families_build_with_their_own_inputs(family, exports, tmp_path):
    export = exports(family)
    engines = EngineManifest.load(build_engines(export, "ampere", tmp_path / "engines", show_progress=False))
    manifest = ExportManifest.load(export)
    (bucket,) = manifest.buckets.values()
    vision, prefill = engines.engines[bucket.vision], engines.engines[bucket.prefill]
    if family == "tiny-qwen3-vl":  # the DeepStack planes leave the vision engine and enter the prefill engine
        planes = {"deepstack.0", "deepstack.1"}
        assert planes <= {entry.name for entry in vision.outputs}
        assert planes <= {entry.name for entry in prefill.inputs}
    else:  # 224x224 is a 2 x 2 tile grid and the thumbnail: the vision engine takes tiles in fives
        low, _, high = vision.profile["pixel_values"]
        assert (low[0], high[0]) == (5, 5 * manifest.profile.max_batch)


def test_a_video_export_builds_its_video_bucket(video_exports, tmp_path):
    # Qwen3-VL: the video bucket's prefill graph takes one span per temporal slice (timestamps between them)
    export = video_exports("tiny-qwen3-vl")
    engines = EngineManifest.load(build_engines(export, "ampere", tmp_path / "engines", show_progress=False))
    bucket = ExportManifest.load(export).buckets["8x128x192"]
    assert len(bucket.visual_spans) == 2 and bucket.frames == 8
    low, _, high = engines.engines[bucket.prefill].profile["inputs_embeds"]
    # the shortest prompt: no text before the visuals, then through the last span and the shortest text
    assert low[1] == bucket.visual_end - bucket.visual_start + bucket.min_text_tokens
    assert {bucket.vision, bucket.prefill} <= set(engines.engines)
    mixed = ExportManifest.load(export).buckets["224x224+8x128x192"]  # its own prefill engine, its parts' vision
    assert mixed.vision == "" and mixed.prefill in engines.engines and len(mixed.visual_spans) == 3
