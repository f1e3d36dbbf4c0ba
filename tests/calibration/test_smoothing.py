"""SmoothQuant folded into the weights: which products it can smooth, that the smoothed graphs compute what the source
graphs do, and that ``calibrate --smooth`` quantizes the smoothed weights."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from luvc.calibration.feeds import collect_feeds
from luvc.calibration.quantize import excluded_nodes
from luvc.calibration.smoothing import _Graph, _scale_sites, smooth_export, smoothing_groups, smoothing_scales
from luvc.cli.main import main
from luvc.export.manifest import ExportManifest
from luvc.runtime.exposed import session_with_outputs
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.weights import MappedWeights
from luvc.samples import synthetic_samples


def test_the_scale_splits_the_maxima_by_alpha():
    # sqrt(4 / 1) = 2, sqrt(1 / 4) = 0.5; a channel never seen (0), with no weight, or overflowed keeps 1
    activations, weights = np.array([4.0, 1.0, 0.0, 3.0, np.inf]), np.array([1.0, 4.0, 2.0, 0.0, 1.0])
    assert smoothing_scales(activations, weights, 0.5).tolist() == [2.0, 0.5, 1.0, 1.0, 1.0]
    # alpha 0.75: 16**0.75 / 1 = 8
    assert smoothing_scales(np.array([16.0]), np.array([1.0]), 0.75).tolist() == pytest.approx([8.0])


def _graph() -> onnx.ModelProto:
    """A decoder layer's smoothable shapes and one that is not: RMSNorm-like scales before Q/K and gate/up (one
    initializer for both, as the exporter stores equal tensors once), a gated MLP with an up bias, a LayerNorm
    before a biased ``Gemm`` with ``transB``, a product after Q's projection, and a scaled input another node reads."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["n"], name="norm1"),
        helper.make_node("MatMul", ["n", "Wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["n", "Wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["q", "Wo"], ["o"], name="o_proj"),
        helper.make_node("Mul", ["x", "gamma"], ["n2"], name="norm2"),
        helper.make_node("MatMul", ["n2", "Wg"], ["g"], name="gate_proj"),
        helper.make_node("MatMul", ["n2", "Wu"], ["u0"], name="up_proj"),
        helper.make_node("Add", ["u0", "bu"], ["u"], name="up_bias"),
        helper.make_node("Sigmoid", ["g"], ["sg"], name="act_sigmoid"),
        helper.make_node("Mul", ["g", "sg"], ["a"], name="act"),
        helper.make_node("Mul", ["a", "u"], ["h"], name="gated"),
        helper.make_node("MatMul", ["h", "Wd"], ["d"], name="down_proj"),
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["l"], name="norm3", axis=-1),
        helper.make_node("Gemm", ["l", "Wv", "bv"], ["v"], name="fc", transB=1),
        helper.make_node("Mul", ["x", "gamma3"], ["r"], name="norm4"),
        helper.make_node("MatMul", ["r", "We"], ["e"], name="e_proj"),
        helper.make_node("Relu", ["r"], ["side"], name="side_reader"),
    ]
    initializers = [
        weight("gamma", 8),
        weight("Wq", 8, 6),
        weight("Wk", 8, 6),
        weight("Wo", 6, 8),
        weight("Wg", 8, 16),
        weight("Wu", 8, 16),
        weight("bu", 16),
        weight("Wd", 16, 8),
        weight("ln_scale", 8),
        weight("ln_bias", 8),
        weight("Wv", 5, 8),
        weight("bv", 5),
        weight("gamma3", 8),
        weight("We", 8, 4),
    ]
    outputs = [("k", 6), ("o", 8), ("d", 8), ("v", 5), ("e", 4), ("side", 8)]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, width]) for name, width in outputs],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_every_foldable_input_is_found_and_the_smoothed_graph_computes_the_same(tmp_path):
    model = _graph()
    groups = {group.products: group for group in smoothing_groups(model)}
    # the input read by another node too (norm4's, by the Relu) is not smoothed
    assert set(groups) == {("k_proj", "q_proj"), ("gate_proj", "up_proj"), ("down_proj",), ("fc",), ("o_proj",)}
    assert [(site.node, site.index) for site in groups[("down_proj",)].folded] == [("up_proj", 1), ("up_bias", 1)]
    assert [(site.node, site.index) for site in groups[("fc",)].folded] == [("norm3", 1), ("norm3", 2)]
    assert [(site.node, site.axis) for site in groups[("fc",)].weights] == [("fc", 1)]  # W stored (N, K)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    before = _run(model, x)
    rng = np.random.default_rng(2)
    scales = {group.key: np.exp(rng.uniform(-2, 2, group.channels)) for group in groups.values()}
    _scale_sites(model, _Graph(model), list(groups.values()), scales, tmp_path, None)
    after = _run(model, x)
    for expected, found in zip(before, after):
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-4)
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    # the shared norm scale got a copy per reader, each divided by its own group's scale
    readers = {node.name: node.input[1] for node in model.graph.node if node.name in ("norm1", "norm2")}
    assert len(set(readers.values())) == 2 and "gamma" in readers.values()
    # a weight the scales did change: Wd's rows multiplied by the down projection's scale
    np.testing.assert_allclose(
        initializers["Wd"],
        numpy_helper.to_array(_graph().graph.initializer[7]) * scales["down_proj"][:, None].astype(np.float32),
        rtol=1e-5,
    )
    assert np.array_equal(initializers["We"], numpy_helper.to_array(_graph().graph.initializer[13]))


@pytest.mark.slow  # runs every graph of an export twice
def test_the_smoothed_export_computes_what_the_source_does(exports, tmp_path):
    source = exports("tiny-llava")  # weights in weights.data: the smoothed graphs copy the unchanged ones
    manifest = ExportManifest.load(source)
    pipeline = Pipeline(source)
    feeds, _ = collect_feeds(pipeline, synthetic_samples([(224, 224)], seed=3)[:2], 2, lambda _: None)
    pipeline.release()
    graphs = [name for name, graph in manifest.graphs.items() if graph.kind != "embed"]
    smoothed = smooth_export(
        source,
        manifest,
        graphs,
        feeds,
        lambda model: list(excluded_nodes(model, "int8")),
        0.5,
        tmp_path,
        lambda _: None,
    )
    assert any("/llm/" in product for product in smoothed.products)
    assert any("/vision/" in product for product in smoothed.products)
    for name in graphs:
        outputs = [output.name for output in manifest.graphs[name].outputs]
        results = []
        for folder in (source, tmp_path):
            weights = MappedWeights(folder)
            with session_with_outputs(folder / manifest.graphs[name].file, outputs, weights=weights) as run:
                results.append(run(feeds[name][0]))
            weights.close()
        for output in outputs:
            np.testing.assert_allclose(results[1][output], results[0][output], rtol=2e-3, atol=2e-3, err_msg=name)
    # prefill and decode read one smoothed copy of each weight they share
    locations = []
    for name in ("prefill_224x224", "decode"):
        model = onnx.load(str(tmp_path / manifest.graphs[name].file), load_external_data=False)
        nodes = {node.name: node for node in model.graph.node}
        tensors = {tensor.name: tensor for tensor in model.graph.initializer}
        down = tensors[nodes["/llm/layers.0/mlp/down_proj/MatMul"].input[1]]
        locations.append({entry.key: entry.value for entry in down.external_data})
    assert locations[0] == locations[1] and locations[0]["location"] == "weights.data"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [manifest.graphs[name].file for name in graphs] + ["weights.data"]
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--smooth", "1.5"], "--smooth 1.5: a migration strength in (0, 1)"),
        (["--smooth", "0.5", "--precision", "int4"], "int4 quantizes no activation"),
    ],
)
def test_a_strength_outside_the_range_or_a_weight_only_precision_is_refused(tmp_path, capsys, arguments, message):
    # refused as the options are parsed, before the export is read
    assert main(["calibrate", str(tmp_path / "export"), "--out", str(tmp_path / "out"), *arguments]) == 2
    captured = capsys.readouterr()
    assert message in captured.err + captured.out and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # calibrates an export of its own
def test_calibrate_smooth_quantizes_the_smoothed_weights_and_records_it(exports, calibrated, tmp_path, capsys):
    out = tmp_path / "int8-smooth"
    argv = ["calibrate", str(exports("tiny-qwen2.5-vl")), "--precision", "int8", "--smooth", "0.5", "--out", str(out)]
    assert main(argv) == 0
    assert "smoothed (SmoothQuant, alpha 0.5): " in capsys.readouterr().out
    quantization = ExportManifest.load(out).quantization
    assert quantization.smoothing_alpha == 0.5
    down = "/llm/layers.0/mlp/down_proj/MatMul"
    assert down in quantization.smoothed_products
    assert any(product.startswith("/vision/") for product in quantization.smoothed_products)
    assert quantization.agreement_with_fp32["logits_cosine_min"] >= 0.99
    assert quantization.agreement_with_fp32["decode_logits_cosine_min"] >= 0.99
    assert "SmoothQuant with alpha 0.5" in (out / "report.md").read_text()
    # the quantized down projection reads other weight scales than the plain calibration's: its rows were scaled

    def weight_scales(folder):
        manifest = ExportManifest.load(folder)
        model = onnx.load(str(folder / manifest.graphs["decode"].file))
        nodes = {node.name: node for node in model.graph.node}
        producers = {output: node for node in model.graph.node for output in node.output}
        dequantize = producers[nodes[down].input[1]]
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        return numpy_helper.to_array(initializers[dequantize.input[1]])

    plain = weight_scales(calibrated("tiny-qwen2.5-vl"))
    assert plain.shape == weight_scales(out).shape
    assert not np.allclose(plain, weight_scales(out), rtol=1e-3)
