"""INT4 weight-only exports: block-wise weights (GPTQ by default, or round to nearest) behind a blocked
DequantizeLinear in the LLM graphs only, stored once for every graph, run by ONNX Runtime within the INT4 parity bounds
and built by TensorRT-RTX."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from luvc.calibration.weight_only import gptq_blocks, quantize_blocks
from luvc.engines.manifest import EngineManifest
from luvc.export.manifest import ExportManifest
from luvc.parity import TOLERANCES, check_parity

BLOCK = 16  # the tiny models are 32 wide: two blocks per column


def _dequantize_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == "DequantizeLinear"]


def _weight_matmuls(model: onnx.ModelProto) -> dict[str, str]:
    """Product node name (MatMul, or the LM head's Gemm) -> the initializer it multiplies by."""
    weights = {tensor.name for tensor in model.graph.initializer}
    return {
        node.name: node.input[1]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights
    }


@pytest.fixture(scope="module")
def int4_exports(exports, tmp_path_factory):
    from luvc.calibration import calibrate_export

    made = {}

    def get(family: str, method: str | None = None):
        if (family, method) not in made:
            out = tmp_path_factory.mktemp("int4") / f"{family}-{method}"
            made[family, method] = calibrate_export(
                exports(family), out, precision="int4", method=method, block_size=BLOCK, show_progress=False
            )
        return made[family, method]

    return get


def test_round_to_nearest_blocks_keep_every_weight_within_half_a_step():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((40, 6)).astype(np.float32)  # 40 rows: two full blocks of 16 and a part of 8
    weights[16:32, 2] = 0.0  # an all-zero block
    values, scales = quantize_blocks(weights, 16)
    assert values.shape == (40, 6) and scales.shape == (3, 6)
    assert (scales > 0).all()  # TensorRT's parser refuses a scale that is not positive
    levels = values.astype(np.int8)
    assert levels.min() >= -7 and levels.max() <= 7
    for block in range(3):
        rows = slice(16 * block, 16 * block + 16)
        amax = np.abs(weights[rows]).max(axis=0)
        np.testing.assert_allclose(scales[block], np.where(amax > 0, amax / 7, 1.0), rtol=1e-6)
        error = np.abs(weights[rows] - levels[rows] * scales[block])
        assert (error <= scales[block] / 2 + 1e-6).all()
        assert (np.abs(levels[rows]).max(axis=0)[amax > 0] == 7).all()  # each block's largest weight is +-7


def _dequantized(values: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    return values.astype(np.float32) * np.repeat(scales, block, axis=0)[: values.shape[0]]


def test_gptq_moves_a_layers_output_less_than_round_to_nearest():
    rng = np.random.default_rng(1)
    channels, outputs, tokens = 256, 48, 4000
    mixing = np.eye(channels) + 0.3 * rng.standard_normal((channels, channels))  # correlated input channels
    inputs = rng.standard_normal((tokens, channels)) @ mixing
    inputs[:, rng.random(channels) < 0.05] *= 6.0  # and a few outlier channels, as LLM activations have
    weights = rng.standard_normal((channels, outputs)).astype(np.float32)
    exact = inputs @ weights

    def output_error(values, scales):
        return np.linalg.norm(inputs @ _dequantized(values, scales, 128) - exact) / np.linalg.norm(exact)

    rtn_values, rtn_scales = quantize_blocks(weights, 128)
    in_order = gptq_blocks(weights, inputs.T @ inputs, 128, act_order=False)
    values, scales = gptq_blocks(weights, inputs.T @ inputs, 128)
    assert values.dtype == rtn_values.dtype and scales.shape == rtn_scales.shape == (2, outputs)
    assert (scales > 0).all() and np.abs(values.astype(np.int8)).max() <= 7  # the same format TensorRT takes
    np.testing.assert_array_equal(scales, rtn_scales)  # static groups: each block's amax / 7, contiguous channels
    assert output_error(*in_order) < 0.8 * output_error(rtn_values, rtn_scales)  # measured 0.078 against 0.117
    assert output_error(values, scales) < 0.9 * output_error(*in_order)  # act-order: the large inputs first (0.059)
    # a channel no input reaches is zeroed, not propagated into
    dead = inputs.T @ inputs
    dead[5, :] = dead[:, 5] = 0.0
    values, _ = gptq_blocks(weights, dead, 128)
    assert not values.astype(np.int8)[5].any()


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-llava"])  # those the other tests calibrate
def test_int4_quantizes_the_llm_weights_only_and_stays_close_to_fp32(family, exports, int4_exports):
    folder, source = int4_exports(family), exports(family)
    manifest = ExportManifest.load(folder)
    assert manifest.precision == "int4" and manifest.quantization.block_size == BLOCK
    assert manifest.quantization.method == "gptq"  # the default
    agreement = manifest.quantization.agreement_with_fp32
    assert agreement["top1_agreement"] >= 0.75 and agreement["logits_cosine_min"] >= 0.98, agreement
    for name, graph in manifest.graphs.items():
        model = onnx.load(str(folder / graph.file), load_external_data=False)
        original = onnx.load(str(source / graph.file), load_external_data=False)
        if graph.kind not in ("prefill", "decode", "text"):  # vision and embed are the fp32 graphs
            assert not _dequantize_nodes(model), name
            continue
        dequantized = {out: node for node in _dequantize_nodes(model) for out in node.output}
        kept_float = manifest.quantization.excluded_nodes[name]
        assert not any("/lm_head/" in node for node in kept_float), name
        for node_name, weight in _weight_matmuls(original).items():
            node = next(node for node in model.graph.node if node.name == node_name)
            if node_name in kept_float:
                assert node.input[1] == weight, node_name
                continue
            dequantize = dequantized[node.input[1]]
            assert node.op_type == "MatMul", node_name  # the LM head's Gemm too
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in dequantize.attribute}
            values = next(t for t in model.graph.initializer if t.name == dequantize.input[0])
            if "/lm_head/" in node_name:  # INT8, one scale per output column (a decode step reads all of it)
                assert attributes == {"axis": 1} and values.data_type == onnx.TensorProto.INT8, node_name
            else:
                assert attributes == {"axis": 0, "block_size": BLOCK}, node_name
                assert values.data_type == onnx.TensorProto.INT4, node_name
            assert len(dequantize.input) == 2  # no zero point: symmetric, as TensorRT's INT4 GEMMs take it
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_int4_weights_are_stored_once_for_every_graph(exports, int4_exports, method):
    folder = int4_exports("tiny-llava", method)  # its export keeps the weights in weights.data
    manifest = ExportManifest.load(folder)
    places = {}
    for name in ("prefill_224x224", "decode", "prefill_text"):
        model = onnx.load(str(folder / manifest.graphs[name].file), load_external_data=False)
        int4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
        assert len(int4) == 4 * 7  # q, k, v, o, gate, up, down of each of the 4 layers
        # the MLP weights (1 KiB packed) leave the graph; the 32 x 32 attention ones stay inline, as any small tensor
        external = [t for t in int4 if t.data_location == onnx.TensorProto.EXTERNAL]
        assert len(external) >= 4 * 3
        places[name] = set()
        for tensor in external:
            entry = {e.key: e.value for e in tensor.external_data}
            assert entry["location"] == "weights.data"
            assert int(entry["length"]) == (int(np.prod(tensor.dims)) + 1) // 2  # packed: two weights a byte
            places[name].add((int(entry["offset"]), int(entry["length"])))
    assert places["prefill_224x224"] == places["decode"] == places["prefill_text"]
    if method != "rtn":
        return
    # and the values are the weights of the fp32 export, rounded to nearest block by block
    prefill = onnx.load(str(folder / "prefill_224x224.onnx"))
    original = onnx.load(str(exports("tiny-llava") / "prefill_224x224.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    initializers = {t.name: t for t in prefill.graph.initializer}
    producers = {out: node for node in prefill.graph.node for out in node.output}
    checked = 0
    for node_name, weight in _weight_matmuls(original).items():
        node = next(node for node in prefill.graph.node if node.name == node_name)
        if node.input[1] == weight or "/lm_head/" in node_name:  # the LM head: INT8, tests/calibration/test_int8w.py
            continue
        values, scales = (numpy_helper.to_array(initializers[i]) for i in producers[node.input[1]].input)
        dequantized = _dequantized(values, scales, BLOCK)
        assert np.abs(dequantized - weights[weight]).max() <= np.abs(scales).max() / 2 + 1e-6, node_name
        checked += 1
    assert checked == 4 * 7


def test_int4_export_passes_parity_under_the_int4_tolerances(int4_exports):
    results = check_parity(int4_exports("tiny-qwen2-vl"), show_progress=False)
    assert results.tolerances == TOLERANCES["int4"]
    assert results, str(results)
    assert not results.judge(TOLERANCES["fp32"])  # and the quantization is visible: fp32 bounds fail
    embeds = [c for c in results.backends[0].checks if c.name == "vision.image_embeds" and c.metric == "cosine"]
    assert embeds[0].value > 0.99999  # the vision encoder is not quantized


def test_tensorrt_rtx_builds_the_int4_export(int4_exports, tmp_path):
    from luvc.cli.main import main

    engines = tmp_path / "engines"
    assert main(["build", str(int4_exports("tiny-llava")), "--target", "ada", "--out", str(engines)]) == 0
    assert EngineManifest.load(engines).precision == "int4"
    assert len(list(engines.glob("*.engine"))) == len(ExportManifest.load(int4_exports("tiny-llava")).graphs)


def test_int4_from_an_fp16_export_keeps_the_rest_in_fp16_and_passes_parity(exports, int4_exports, tmp_path):
    """On a Jetson the INT4 export must be smaller than the fp16 one: made from the fp32 export, everything it does not
    quantize (embedding, LM head, vision encoder) would stay float32."""
    from luvc.calibration import calibrate_export
    from luvc.engines.memory import plan_memory

    folder = calibrate_export(
        exports("tiny-qwen2-vl", "fp16"), tmp_path / "int4", precision="int4", block_size=BLOCK, show_progress=False
    )
    manifest = ExportManifest.load(folder)
    assert (manifest.precision, manifest.float_precision) == ("int4", "fp16")
    prefill = onnx.load(str(folder / manifest.graphs["prefill_224x224"].file), load_external_data=False)
    floats = {t.data_type for t in prefill.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT16, 1)}
    assert onnx.TensorProto.FLOAT16 in floats
    scales = [t for t in prefill.graph.initializer if t.name.endswith("_int4_scales")]
    assert scales and all(t.data_type == onnx.TensorProto.FLOAT16 for t in scales)

    results = check_parity(folder, show_progress=False)
    assert results, str(results)
    assert results.tolerances.embed_cosine == TOLERANCES["fp16"].embed_cosine  # the fp16 encoder's bound
    assert results.tolerances.tensor_relative == TOLERANCES["int4"].tensor_relative
    # and on the device it is smaller than INT4 made from fp32, and than the fp16 export itself
    weights = {
        name: plan_memory(path, "orin-8gb").weight_bytes
        for name, path in (
            ("int4 from fp16", folder),
            ("int4 from fp32", int4_exports("tiny-qwen2-vl")),
            ("fp16", exports("tiny-qwen2-vl", "fp16")),
        )
    }
    assert weights["int4 from fp16"] < weights["fp16"] < weights["int4 from fp32"], weights


def test_a_block_size_wider_than_the_model_is_refused_before_work_and_the_default_fits_any_model(exports, tmp_path):
    from luvc.calibration.calibrator import CalibratedExportFromExport
    from luvc.errors import LuvcError

    export = exports("tiny-qwen2-vl")  # hidden size 32: narrower than the default block of 128
    chosen = CalibratedExportFromExport(export, tmp_path / "out", precision="int4", block_size=64).loader()
    with pytest.raises(LuvcError, match="--block-size 64 is more than the 32 input channels of this model's products"):
        chosen._source()
    default = CalibratedExportFromExport(export, tmp_path / "out", precision="int4").loader()
    assert default._source().geometry.hidden_size == 32
    assert not (tmp_path / "out").exists()
