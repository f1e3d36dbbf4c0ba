"""The range collection that replaces ``quantize_static``'s own calibration: the same Q/DQ graph as ONNX Runtime's
calibrators make, on a real export's prefill and decode graphs, with the export's weights mapped once; the vectorised
entropy search finds ONNX Runtime's threshold."""

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from luvc.calibration.feeds import collect_feeds
from luvc.calibration.quantize import (
    METHODS,
    QUANTIZED_OPS,
    activation_ranges,
    check_onnxruntime,
    excluded_nodes,
    quantize_graph,
)
from luvc.calibration.ranges import activations_to_calibrate, collect_ranges, histogram_collector
from luvc.errors import LuvcError
from luvc.export.manifest import ExportManifest
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.weights import MappedWeights
from luvc.samples import synthetic_samples
from tests.export.passes.graphs import small_model, value


class ListReader(CalibrationDataReader):
    def __init__(self, feeds):
        self.feeds, self.index, self.end = feeds, 0, len(feeds)

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index, end_index):
        self.index, self.end = start_index, min(end_index, len(self.feeds))

    def get_next(self):
        if self.index >= self.end:
            return None
        self.index += 1
        return self.feeds[self.index - 1]


@pytest.fixture(scope="module")
def export_feeds(exports):
    folder = exports("tiny-qwen2-vl")
    manifest = ExportManifest.load(folder)
    sizes = [bucket.size for bucket in manifest.buckets.values()]
    pipeline = Pipeline(folder)
    try:
        feeds, _ = collect_feeds(pipeline, synthetic_samples(sizes, seed=3)[:2], 3, lambda _: None)
    finally:
        pipeline.release()
    return folder, manifest, feeds


# entropy: ONNX Runtime's own search over 2048 bins takes 25-30 s a graph (about 60 s a test), so it is compared on
# the decode graph only (test_the_vectorised_entropy_search... below checks the search itself in the fast tier)
@pytest.mark.parametrize(
    ("method", "kind"),
    [
        *[(method, kind) for method in ("minmax", "percentile") for kind in ("prefill", "decode")],
        pytest.param("entropy", "decode", marks=pytest.mark.slow),
    ],
)
def test_collected_ranges_quantize_as_onnx_runtime_calibrating_by_itself(method, kind, export_feeds, tmp_path):
    folder, manifest, feeds = export_feeds
    name = next(name for name, graph in manifest.graphs.items() if graph.kind == kind)
    source = folder / manifest.graphs[name].file
    excluded = list(excluded_nodes(onnx.load(str(source), load_external_data=False), "int8"))
    tensors = activations_to_calibrate(onnx.load(str(source), load_external_data=False), excluded)
    weights = MappedWeights(folder)
    try:
        collect_ranges(source, feeds[name], method, tensors, tmp_path / "ranges.json", weights)
    finally:
        weights.close()
    ours = quantize_graph(source, tmp_path / "ours.onnx", tmp_path / "ranges.json", "int8", method, excluded)
    # ONNX Runtime's own calibrator, as quantize_static runs it (the graph and its weights loaded, every product's
    # inputs and outputs added as outputs, one run per collection), with TensorRT's entropy bins where luvc sets them
    settings = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128}}.get(method, {})
    calibrator = create_calibrator(
        source,
        list(QUANTIZED_OPS),
        augmented_model_path=str(tmp_path / "augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, METHODS[method][0]),
        extra_options=settings,
    )
    reader = ListReader(feeds[name])
    for start in range(len(reader)):
        reader.set_range(start, start + 1)
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator.collect_data(reader)
    with contextlib.redirect_stdout(io.StringIO()):
        save_tensors_data(calibrator.compute_data(), tmp_path / "their-ranges.json")
    quantize_static(
        str(source),
        str(tmp_path / "theirs.onnx"),
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        nodes_to_exclude=excluded,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, METHODS[method][0]),
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        },
        calibration_cache_path=tmp_path / "their-ranges.json",
    )
    theirs = onnx.load(str(tmp_path / "theirs.onnx"))
    assert [node.op_type for node in ours.graph.node] == [node.op_type for node in theirs.graph.node]
    ours_ranges, their_ranges = activation_ranges(ours, "int8"), activation_ranges(theirs, "int8")
    assert len(ours_ranges) > 10 and ours_ranges.keys() == their_ranges.keys()
    for tensor, expected in their_ranges.items():
        np.testing.assert_allclose(ours_ranges[tensor]["scale"], expected["scale"], rtol=1e-6, err_msg=tensor)


def test_only_the_activation_inputs_of_quantized_products_are_calibrated():
    model = small_model(
        [
            onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="/llm/layers.0/mlp/up/MatMul"),
            onnx.helper.make_node("Relu", ["h"], ["r"], name="relu"),
            onnx.helper.make_node("MatMul", ["r", "w2"], ["y"], name="/llm/layers.0/mlp/down/MatMul"),
            onnx.helper.make_node("MatMul", ["x", "r"], ["z"], name="scores"),
            onnx.helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones((4, 4), "f"))),
            onnx.helper.make_node("MatMul", ["c", "x"], ["u"], name="constant_times_x"),
        ],
        inputs=[value("x", [4, 4])],
        outputs=[value(name, [4, 4]) for name in ("y", "z", "u")],
        initializers=[onnx.numpy_helper.from_array(np.ones((4, 4), "f"), name) for name in ("w", "w2")],
    )
    assert activations_to_calibrate(model, excluded=["scores"]) == ["r", "x"]
    assert activations_to_calibrate(model, excluded=["scores", "constant_times_x"]) == ["r", "x"]
    assert activations_to_calibrate(model, excluded=["/llm/layers.0/mlp/up/MatMul"]) == ["r", "x"]
    everything = ["scores", "constant_times_x", "/llm/layers.0/mlp/up/MatMul", "/llm/layers.0/mlp/down/MatMul"]
    assert activations_to_calibrate(model, excluded=everything) == []


def test_an_onnx_runtime_without_the_calibration_cache_is_refused_with_the_fix():
    with pytest.raises(LuvcError, match=r"onnxruntime 1\.27 or newer .* found 1\.26\.0; run `pip install"):
        check_onnxruntime("1.26.0")
    check_onnxruntime("1.27.0")
    check_onnxruntime()  # the installed one


@pytest.mark.parametrize("seed", range(4))
def test_the_vectorised_entropy_search_finds_onnx_runtime_threshold(seed):
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(seed)
    samples = [
        rng.standard_normal(50_000) * rng.standard_normal(50_000),  # heavy tails: SiLU(gate) * up
        rng.standard_normal(50_000),
        np.concatenate([rng.standard_normal(50_000), [40.0, -25.0]]),  # two outliers, most bins empty
        np.abs(rng.standard_normal(50_000)),  # one-sided
    ][seed].astype(np.float32)
    for bins in (256,) if seed == 2 else (256, 2048):  # the outliers grow the merged histogram 9-fold
        theirs = HistogramCollector("entropy", False, bins, 128, 99.999, "same")
        ours = histogram_collector("entropy", False, bins, 128, 99.999, "same")
        for collector in (theirs, ours):
            with contextlib.redirect_stdout(io.StringIO()):
                collector.collect({"t": [samples[: len(samples) // 2]]})
                collector.collect({"t": [samples[len(samples) // 2 :]]})  # a second collection merges
        with contextlib.redirect_stdout(io.StringIO()):
            expected, found = theirs.compute_collection_result()["t"], ours.compute_collection_result()["t"]
        assert (found[0], found[1]) == (expected[0], expected[1]), bins
        assert found[1] < np.abs(samples).max()  # it clips: the search has more than one candidate
