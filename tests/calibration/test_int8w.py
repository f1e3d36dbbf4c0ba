"""Weight-only INT8 (``--precision int8w``, W8A16): every LLM product's weight, the LM head's included, as int8 with
one scale per output column behind a DequantizeLinear; ONNX Runtime fuses it into MatMulNBits, parity holds it to the
int8w bounds, and TensorRT-RTX builds it."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from luvc.calibration.weight_only import INT4, quantize_channels, quantize_weights
from luvc.engines.manifest import EngineManifest
from luvc.export.inspect import ort_optimized
from luvc.export.manifest import ExportManifest
from luvc.parity import TOLERANCES, check_parity

FAMILIES = ["tiny-qwen2-vl", "tiny-llava"]


def test_round_to_nearest_per_column_keeps_every_weight_within_half_a_step():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((40, 6)).astype(np.float32)
    weights[:, 3] = 0.0  # an all-zero column
    values, scales = quantize_channels(weights)
    assert values.dtype == np.int8 and values.shape == (40, 6) and scales.shape == (6,)
    assert (scales > 0).all()  # TensorRT's parser refuses a scale that is not positive
    amax = np.abs(weights).max(axis=0)
    np.testing.assert_allclose(scales, np.where(amax > 0, amax / 127, 1.0), rtol=1e-6)
    assert values.min() >= -127 and values.max() <= 127
    assert (np.abs(weights - values * scales) <= scales / 2 + 1e-6).all()
    assert (np.abs(values).max(axis=0)[amax > 0] == 127).all()  # each column's largest weight is +-127
    half = weights.astype(np.float16)
    half_values, half_scales = quantize_channels(half)
    assert half_scales.dtype == np.float16 and (half_scales > 0).all()
    assert (
        np.abs(half.astype(np.float32) - half_values * half_scales.astype(np.float32)) <= half_scales / 2 + 1e-3
    ).all()


def _decoder_tail(path: Path, rng) -> tuple[np.ndarray, np.ndarray]:
    """A layer's product (MatMul by a (K, N) weight) then an LM head Gemm by a tied (vocab, K) table with transB, as
    the exports write them; saved at ``path``. Returns the two weights."""
    hidden, vocab = 64, 300
    projection = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.1
    table = rng.standard_normal((vocab, hidden)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="/llm/layers.0/mlp/down_proj/MatMul"),
        helper.make_node("Gemm", ["h", "table"], ["logits"], name="/llm/lm_head/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, hidden])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [2, vocab])],
        [numpy_helper.from_array(projection, "w"), numpy_helper.from_array(table, "table")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return projection, table


def test_the_lm_head_gemm_becomes_an_int8_product_that_onnx_runtime_fuses(tmp_path):
    rng = np.random.default_rng(2)
    projection, table = _decoder_tail(tmp_path / "float.onnx", rng)
    quantized = quantize_weights(onnx.load(str(tmp_path / "float.onnx")), 32, [], layers=INT4)
    # the LM head: a MatMul by the transposed table as int8, one scale per vocabulary entry, under the Gemm's name
    head = next(node for node in quantized.graph.node if node.name == "/llm/lm_head/Gemm")
    assert head.op_type == "MatMul"
    producers = {out: node for node in quantized.graph.node for out in node.output}
    dequantize = producers[head.input[1]]
    initializers = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    values, scales = (initializers[name] for name in dequantize.input)
    assert values.dtype == np.int8 and values.shape == (64, 300) and scales.shape == (300,)
    assert {a.name: helper.get_attribute_value(a) for a in dequantize.attribute} == {"axis": 1}
    assert "table" not in initializers  # the float table is no longer read by this graph
    path = tmp_path / "int8.onnx"
    onnx.save(quantized, path)

    x = rng.standard_normal((2, 64)).astype(np.float32)
    exact = (x @ projection) @ table.T
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cosine = float((got * exact).sum() / np.linalg.norm(got) / np.linalg.norm(exact))
    assert cosine > 0.99  # the layer INT4 in blocks (about 0.993 a projection, tolerances.py), the head INT8
    assert {"MatMulNBits"} <= {node.op_type for node in ort_optimized(path).graph.node}  # fused at load


@pytest.fixture(scope="module")
def int8w_exports(exports, tmp_path_factory):
    from luvc.calibration import calibrate_export

    made = {}

    def get(family: str, precision: str = "fp32"):
        if (family, precision) not in made:
            out = tmp_path_factory.mktemp("int8w") / f"{family}-{precision}"
            made[family, precision] = calibrate_export(
                exports(family, precision), out, precision="int8w", show_progress=False
            )
        return made[family, precision]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_int8w_quantizes_every_llm_product_and_the_lm_head_per_column(family, exports, int8w_exports):
    folder, source = int8w_exports(family), exports(family)
    manifest = ExportManifest.load(folder)
    assert (manifest.precision, manifest.quantization.method) == ("int8w", "rtn")
    agreement = manifest.quantization.agreement_with_fp32
    assert agreement["top1_agreement"] == 1.0 and agreement["logits_cosine_min"] >= 0.999, agreement
    for name, graph in manifest.graphs.items():
        model = onnx.load(str(folder / graph.file), load_external_data=False)
        dequantize = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
        if graph.kind not in ("prefill", "decode", "text"):
            assert not dequantize, name
            continue
        original = onnx.load(str(source / graph.file), load_external_data=False)
        weights = {t.name for t in original.graph.initializer}
        products = [
            node.name for node in original.graph.node if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights
        ]
        assert any("/lm_head/" in product for product in products), name
        initializers = {t.name: t for t in model.graph.initializer}
        by_output = {node.output[0]: node for node in dequantize}
        nodes = {node.name: node for node in model.graph.node}
        for product in products:
            node = nodes[product]
            if product in manifest.quantization.excluded_nodes[name]:
                continue
            assert node.op_type == "MatMul" and node.input[1] in by_output, product
            values = initializers[by_output[node.input[1]].input[0]]
            assert values.data_type == onnx.TensorProto.INT8, product
            assert {a.name: helper.get_attribute_value(a) for a in by_output[node.input[1]].attribute} == {"axis": 1}
        quantized = [product for product in products if product not in manifest.quantization.excluded_nodes[name]]
        assert len(quantized) >= 4 * 7 + 1, name  # the 4 layers' 7 products and the LM head


def test_int8w_passes_parity_under_its_bounds_and_not_fp32s(int8w_exports):
    results = check_parity(int8w_exports("tiny-qwen2-vl"), show_progress=False)
    assert results.tolerances == TOLERANCES["int8w"]
    assert results, str(results)
    assert not results.judge(TOLERANCES["fp32"])  # the quantization is visible
    embeds = [c for c in results.backends[0].checks if c.name == "vision.image_embeds" and c.metric == "cosine"]
    assert embeds[0].value > 0.99999  # the vision encoder is not quantized


def test_int8w_from_an_fp16_export_keeps_fp16_scales_and_passes_parity(int8w_exports):
    folder = int8w_exports("tiny-qwen2-vl", "fp16")
    manifest = ExportManifest.load(folder)
    assert (manifest.precision, manifest.float_precision) == ("int8w", "fp16")
    decode = onnx.load(str(folder / manifest.graphs["decode"].file), load_external_data=False)
    scales = [t for t in decode.graph.initializer if t.name.endswith("_int8_scales")]
    assert scales and all(t.data_type == onnx.TensorProto.FLOAT16 for t in scales)
    results = check_parity(folder, show_progress=False)
    assert results, str(results)


def test_tensorrt_rtx_builds_the_int8w_export(int8w_exports, tmp_path):
    from luvc.cli.main import main

    engines = tmp_path / "engines"
    assert main(["build", str(int8w_exports("tiny-llava")), "--target", "ada", "--out", str(engines)]) == 0
    assert EngineManifest.load(engines).precision == "int8w"
    assert len(list(engines.glob("*.engine"))) == len(ExportManifest.load(int8w_exports("tiny-llava")).graphs)


def test_the_runtime_converts_each_int8w_weight_once_and_a_damaged_conversion_never_changes_an_answer(
    int8w_exports, tmp_path, monkeypatch, capsys
):
    """Issue 78: ONNX Runtime converted every weight-only product to MatMulNBits in each LLM session of every start
    (9.5 s of an int8w start at 2B widths); the runtime now gives it the converted weights, made once and kept in the
    start-up cache, whose entries are checked like the float32 conversions (issue 77)."""
    from luvc import cache
    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import Pipeline

    folder = int8w_exports("tiny-llava")  # its source export keeps every weight in weights.data
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    cache.cache_root.cache_clear()
    cache._say_once.cache_clear()
    try:
        prepared = Pipeline(folder).prepare([synthetic_image(224, 224, 5)], ["What is in this picture?"])
        tokens, logits, _ = Pipeline(folder).greedy(prepared, 4)
        kept = sorted((tmp_path / "cache" / "matmul_nbits").rglob("*.u8"))
        int8_weights = {
            (t.name if t.data_location != onnx.TensorProto.EXTERNAL else tuple(e.value for e in t.external_data))
            for graph in ExportManifest.load(folder).graphs.values()
            for t in onnx.load(str(folder / graph.file), load_external_data=False).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and t.data_location == onnx.TensorProto.EXTERNAL
        }
        assert len(kept) == len(int8_weights) > 0  # each stored weight once, however many graphs read it

        second = Pipeline(folder)
        np.testing.assert_array_equal(second.greedy(prepared, 4)[1], logits)
        generator = np.random.default_rng(0)
        for path in kept:
            path.write_bytes(generator.bytes(path.stat().st_size))
        capsys.readouterr()
        damaged_tokens, damaged_logits, _ = Pipeline(folder).greedy(prepared, 4)
        np.testing.assert_array_equal(damaged_tokens, tokens)
        np.testing.assert_array_equal(damaged_logits, logits)
        assert sum("damaged entries" in line for line in capsys.readouterr().err.splitlines()) == 1
        monkeypatch.setenv(cache.ENV, "off")
        cache.cache_root.cache_clear()
        np.testing.assert_array_equal(Pipeline(folder).greedy(prepared, 4)[1], logits)  # converted in memory
    finally:
        cache.cache_root.cache_clear()
        cache._say_once.cache_clear()


def test_openvino_runs_an_int8w_exports_llm_graphs_on_integer_kernels_and_its_vision_in_bf16(int8w_exports):
    """On a CPU with bf16 kernels, an int8w export's LLM graphs compile under OpenVINO's f32 hint (their products
    quantize their activations and run on integer kernels: the int8w decode of Qwen2-VL-2B's widths at 22 against 15
    tokens/s under bf16), its float vision graph under bf16; parity on OpenVINO still passes."""
    pytest.importorskip("openvino")
    from luvc.runtime.openvino_graph import choose_precision, new_core
    from luvc.runtime.pipeline import Pipeline

    if choose_precision(new_core()).precision != "bf16":
        pytest.skip("this CPU has no AMX or AVX-512 BF16: OpenVINO computes f32 whatever the graph")
    folder = int8w_exports("tiny-qwen2-vl")
    pipeline = Pipeline(folder, backend="openvino")
    bucket = next(iter(pipeline.manifest.buckets.values()))
    pipeline.load(bucket)
    hints = {
        pipeline.manifest.graphs[name].kind: session.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        for name, session in pipeline.sessions.opened().items()
    }
    assert hints == {"embed": "bf16", "vision": "bf16", "prefill": "f32", "decode": "f32"}, hints
    prefill = bucket.prefill
    described = pipeline.backend_description()  # run's table and serve's banner
    assert described.startswith("openvino bf16 (")
    assert described.endswith(f"; decode, {prefill}: weight-only products on integer kernels"), described
    results = check_parity(folder, show_progress=False, openvino=True)
    assert results, str(results)
