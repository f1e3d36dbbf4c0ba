"""The shared weights layout: engines built from an export with two image buckets, a video bucket and decode hold no
copy of the LLM, each weight is recorded once for all of them, and the runtime binds one buffer per weight."""

import json

import numpy as np
import onnx
import pytest
import torch

from luvc.calibration.weight_only import quantize_weights
from luvc.cli.main import main
from luvc.engines.builder import build_engines
from luvc.engines.manifest import EngineManifest
from luvc.engines.memory import graph_weight_placement, model_weight_bytes, plan_memory
from luvc.engines.weight_inputs import (
    SHAREABLE_USES,
    engine_graph,
    external_initializers,
    shareable_weights,
    with_float_lm_head,
    with_weight_inputs,
)
from luvc.export.exporter import export_model
from luvc.export.graph_metadata import FloatLmHead
from luvc.export.manifest import ExportManifest
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.tiny import save_random_qwen2_vl
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.videos import synthetic_video

pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")

# wide enough that the weights outweigh what an engine holds besides them (hidden 256, a 131072-token vocabulary)
WIDTHS = dict(
    vocab_size=131072, hidden_size=256, intermediate_size=1024, heads=4, kv_heads=2, vision_width=128, vision_heads=4
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(checkpoint, export, engines) of an fp16 Qwen2-VL of ``WIDTHS``: buckets 224x224, 336x336 and 4x224x224."""
    folder = tmp_path_factory.mktemp("shared-weights")
    checkpoint = folder / "checkpoint"
    save_random_qwen2_vl(checkpoint, 4, 2, torch.float16, (224, 336), **WIDTHS)
    profile = ExportProfile(
        image_sizes=((224, 224), (336, 336)), video_sizes=((4, 224, 224),), precision="fp16", external_data="always"
    )
    export = export_model(load_model(str(checkpoint)), folder / "export", profile, show_progress=False)
    engines = build_engines(export, "ampere", folder / "engines", module="tensorrt_rtx", show_progress=False)
    return checkpoint, export, engines


def _llm_bytes(checkpoint) -> int:
    """fp16 bytes of the checkpoint's language model (decoder and the tied embedding / LM head)."""
    model = load_model(str(checkpoint)).model
    return sum(p.numel() * 2 for name, p in model.named_parameters() if "visual" not in name)


@pytest.mark.slow
def test_the_engines_hold_no_copy_of_the_llm(built):
    checkpoint, export, engines = built
    manifest = EngineManifest.load(engines)
    assert manifest.weights_layout == "shared"
    llm = _llm_bytes(checkpoint)
    engine_bytes = sum(entry.bytes for entry in manifest.engines.values())
    # the embedded layout holds the LLM in each of three prefill engines and in decode: at least 4 x llm
    assert engine_bytes < llm
    distinct = {(w.location, w.offset, w.length) for entry in manifest.engines.values() for w in entry.weights}
    shared = sum(length for *_, length in distinct)
    assert 0.98 * llm < shared < (export / "weights.data").stat().st_size  # the LLM once, beside the vision encoder
    for name in ("prefill_224x224", "prefill_336x336", "prefill_4x224x224", "decode"):
        assert manifest.engines[name].weights  # every LLM engine takes them as inputs
        assert not {w.name for w in manifest.engines[name].weights} & {i.name for i in manifest.engines[name].inputs}
    plan = plan_memory(export, "orin-8gb", engines)
    assert plan.weights.shared == shared and plan.weights.embedded_layout > 4 * llm


@pytest.mark.slow
def test_the_embedded_layout_is_still_there(built, tmp_path, capsys):
    _, export, _ = built
    out = tmp_path / "embedded"
    args = ["build", str(export), "--target", "ampere", "--out", str(out), "--tensorrt-module", "tensorrt_rtx"]
    assert main([*args, "--weights", "embedded"]) == 0
    assert "each engine holds its own weights" in capsys.readouterr().out
    data = json.loads((out / "manifest.json").read_text())
    assert data["weights_layout"] == "embedded" and all(not e["weights"] for e in data["engines"].values())
    assert data["engines"]["decode"]["bytes"] > (export / "weights.data").stat().st_size / 2  # the LLM inside


@pytest.mark.slow
def test_requests_on_other_buckets_reuse_the_weights_and_the_cache(built):
    """ONNX Runtime on the CPU, through the pipeline's one ``MappedWeights``: a request on a second bucket and on a
    video opens new graphs but reads no weight again (the 76 MB of weights.data) and allocates no cache."""
    _, export, _ = built
    pipeline = Pipeline(export)
    pipeline.generate(synthetic_image(224, 224, 1), "Describe.", GenerationOptions(2))
    weights = pipeline.sessions.weights
    arrays = dict(weights._arrays)
    cache = pipeline.sessions.kv_cache(1)
    pointers = [tensor.data_ptr() for pair in cache.buffers for tensor in pair]
    pipeline.generate(synthetic_image(336, 336, 2), "Describe.", GenerationOptions(2))
    pipeline.generate(synthetic_video(4, 224, 224, 3), "Describe.", GenerationOptions(2))
    assert {"prefill_224x224", "prefill_336x336", "prefill_4x224x224"} <= set(pipeline.sessions.opened())
    # the new buckets' own constants (their SPU low-pass bases, their vision graphs' folded rotary tables), never a
    # second copy of a weight the first request read
    added = [array for key, array in weights._arrays.items() if key not in arrays]
    assert added
    assert not any(new.shape == old.shape and np.array_equal(new, old) for new in added for old in arrays.values())
    assert all(weights._arrays[key] is array for key, array in arrays.items())
    assert [tensor.data_ptr() for pair in pipeline.sessions.kv_cache(1).buffers for tensor in pair] == pointers
    prefills = [s for n, s in pipeline.sessions.opened().items() if n.startswith("prefill")]
    common = set.intersection(*({v.data_ptr() for v in s.opened.shared_values} for s in prefills))
    largest = max(weights._values, key=lambda key: key[0].length)  # the tied embedding / LM head, 64 MiB
    assert largest[0].length == WIDTHS["vocab_size"] * WIDTHS["hidden_size"] * 2
    assert weights._values[largest].data_ptr() in common  # one value in every prefill session


def test_only_products_and_lookups_become_inputs(tmp_path):
    """A weight multiplied by becomes an input; one also read by another op (or by a Conv) stays inside."""
    helper = onnx.helper
    weights = {name: np.ones((4, 4), np.float32) for name in ("matmul", "both", "conv")}
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "matmul"], ["a"]),
            helper.make_node("MatMul", ["a", "both"], ["b"]),
            helper.make_node("Add", ["b", "both"], ["c"]),
            helper.make_node("Gather", ["matmul", "ids"], ["d"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 4]),
            helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("c", "d")],
        [onnx.numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph)
    onnx.save_model(model, str(tmp_path / "g.onnx"), save_as_external_data=True, size_threshold=0)
    loaded = onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)
    moved = shareable_weights(loaded)
    assert [tensor.name for tensor in moved] == ["matmul"]  # "conv" has no use at all: not an input either
    rewritten = with_weight_inputs(loaded, moved)
    assert [i.name for i in rewritten.graph.input] == ["x", "ids", "matmul"]
    assert sorted(t.name for t in rewritten.graph.initializer) == ["both", "conv"]
    assert ("Conv", 1) not in SHAREABLE_USES


def _gpu_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA; none here")


@pytest.mark.gpu
@pytest.mark.slow
def test_tensorrt_binds_one_buffer_per_weight_and_one_activation_buffer(request):
    _gpu_or_skip()  # before the engines are built
    _, export, engines = request.getfixturevalue("built")
    manifest = EngineManifest.load(engines)
    capability = torch.cuda.get_device_capability()
    if not manifest.supports(capability):
        pytest.skip(f"the engines are for {manifest.target['name']}, this GPU is SM {capability}")
    image = synthetic_image(224, 224, 4)
    expected = Pipeline(export).generate(image, "Describe.", GenerationOptions(4)).tokens
    pipeline = Pipeline(export, backend="trt", engines_dir=engines)
    np.testing.assert_array_equal(pipeline.generate(image, "Describe.", GenerationOptions(4)).tokens, expected)
    pipeline.generate(synthetic_image(336, 336, 2), "Describe.", GenerationOptions(2))
    distinct = {(w.location, w.offset, w.length) for entry in manifest.engines.values() for w in entry.weights}
    opened = pipeline.sessions.opened()
    used = {(w.location, w.offset, w.length) for name in opened for w in manifest.engines[name].weights}
    assert pipeline.sessions.weights.device_bytes == sum(length for *_, length in used)
    assert used <= distinct
    assert pipeline.sessions.activations.bytes > 0  # one buffer, as large as the largest need


@pytest.mark.gpu
@pytest.mark.slow
def test_onnx_runtime_cuda_holds_each_weight_once(request):
    _gpu_or_skip()
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider); the CPU package is installed")
    checkpoint, export, _ = request.getfixturevalue("built")
    image = synthetic_image(224, 224, 4)
    expected = Pipeline(export).generate(image, "Describe.", GenerationOptions(4)).tokens
    pipeline = Pipeline(export, device="cuda:0")
    np.testing.assert_array_equal(pipeline.generate(image, "Describe.", GenerationOptions(4)).tokens, expected)
    prefill, decode = pipeline.sessions.opened()["prefill_224x224"], pipeline.sessions.opened()["decode"]
    common = {v.data_ptr() for v in prefill.opened.shared_values} & {v.data_ptr() for v in decode.opened.shared_values}
    assert len(common) >= 4 * 7 + 1  # every projection of the four layers and the LM head, on the GPU once
    assert pipeline.sessions.weights.device_bytes < 1.05 * _llm_bytes(checkpoint) + (1 << 20) * 8


def _tied_head(vocab: int = 48, hidden: int = 8) -> tuple[onnx.ModelProto, np.ndarray]:
    """An LM head as the exporter writes a tied one, ``Gemm(x, table, transB=1)``, and its ``(vocab, hidden)`` table."""
    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "embed_tokens.weight"], ["logits"], "/lm_head/Gemm", transB=1)],
        "head",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, hidden])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [2, vocab])],
        [onnx.numpy_helper.from_array(table, "embed_tokens.weight")],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), table


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": x})[0]


def test_an_int8_lm_head_multiplies_by_its_float_table_again_outside_decode():
    """Weight-only quantization records which float table the INT8 head came from; the engines that compute the head
    once per request read that table (on the device for the embedding engine anyway) instead of holding the INT8 copy,
    and compute ``x @ table.T`` as exported; decode keeps the INT8 head."""
    model, table = _tied_head()
    quantized = quantize_weights(model, 16, [])
    head = FloatLmHead.of(quantized)
    assert head is not None and head.table == "embed_tokens.weight"
    assert [n.op_type for n in quantized.graph.node] == ["DequantizeLinear", "MatMul"]
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    exact = x @ table.T
    assert np.abs(_logits(quantized, x) - exact).max() > 1e-4  # the INT8 head's rounding shows

    tables = {"embed_tokens.weight": onnx.numpy_helper.from_array(table, "embed_tokens.weight")}
    prefill = engine_graph(quantized, "prefill", tables)
    assert [(n.op_type, list(n.input)) for n in prefill.graph.node] == [("Gemm", ["x", "embed_tokens.weight"])]
    assert [t.name for t in prefill.graph.initializer] == ["embed_tokens.weight"]  # the INT8 weight and scales gone
    np.testing.assert_allclose(_logits(prefill, x), exact, rtol=1e-5, atol=1e-5)
    assert engine_graph(quantized, "decode", tables) is quantized
    assert with_float_lm_head(quantized, {}) is quantized  # an export without the float table keeps its INT8 head
    plain, _ = _tied_head()  # quantize_weights rewrote ``model`` in place
    assert FloatLmHead.of(plain) is None and with_float_lm_head(plain, tables) is plain


@pytest.mark.slow
def test_int4_engines_hold_the_int8_lm_head_in_decode_only(built, tmp_path):
    """An INT4 export of the wide-vocabulary model: the prefill engines read the tied table the embedding engine reads
    (one device buffer) and hold no INT8 head; decode holds it; the plan counts what the engines hold."""
    from luvc.calibration import calibrate_export

    _, export, _ = built
    folder = calibrate_export(export, tmp_path / "int4", precision="int4", method="rtn", show_progress=False)
    manifest = ExportManifest.load(folder)
    engines = EngineManifest.load(build_engines(folder, "ampere", tmp_path / "engines", show_progress=False))
    models = {name: onnx.load(str(folder / g.file), load_external_data=False) for name, g in manifest.graphs.items()}
    head = FloatLmHead.of(models["decode"])
    assert head is not None and head.table in {w.name for w in engines.engines["embed"].weights}
    dequantize = next(n for n in models["decode"].graph.node if n.output[0] == head.dequantized)
    head_bytes = model_weight_bytes(
        onnx.helper.make_model(
            onnx.helper.make_graph(
                [], "head", [], [], [t for t in models["decode"].graph.initializer if t.name in dequantize.input]
            )
        )
    )
    assert head_bytes >= 131072 * 256  # one INT8 byte per weight, and the scales
    placement = graph_weight_placement(folder, manifest)
    tables = external_initializers(models.values())
    for name, graph in manifest.graphs.items():
        if graph.kind not in ("prefill", "text", "decode"):
            continue
        weights = {w.name for w in engines.engines[name].weights}
        model = models[name]
        unchanged = model_weight_bytes(model) - sum(t.length for t in shareable_weights(model))
        if graph.kind == "decode":
            assert head.table not in weights and placement.per_engine[name] == unchanged
        else:
            assert head.table in weights and placement.per_engine[name] == unchanged - head_bytes
            assert engines.engines[name].bytes < head_bytes  # no INT8 head inside
            assert engine_graph(model, graph.kind, tables) is not model
