"""The range collection that replaces ``quantize_static``'s own calibration: the same Q/DQ graph as ONNX Runtime
calibrating by itself, on a real export's prefill and decode graphs, with the export's weights mapped once."""

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from luvc.calibration.calibrator import collect_feeds
from luvc.calibration.quantize import (
    METHODS,
    QUANTIZED_OPS,
    activation_ranges,
    check_onnxruntime,
    excluded_nodes,
    quantize_graph,
)
from luvc.calibration.ranges import activations_to_calibrate, collect_ranges
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


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
@pytest.mark.parametrize("kind", ["prefill", "decode"])
def test_collected_ranges_quantize_as_onnx_runtime_calibrating_by_itself(method, kind, export_feeds, tmp_path):
    folder, manifest, feeds = export_feeds
    name = next(name for name, graph in manifest.graphs.items() if graph.kind == kind)
    source = folder / manifest.graphs[name].file
    excluded = list(excluded_nodes(onnx.load(str(source), load_external_data=False)))
    tensors = activations_to_calibrate(onnx.load(str(source), load_external_data=False), excluded)
    weights = MappedWeights(folder)
    try:
        collect_ranges(source, feeds[name], method, tensors, tmp_path / "ranges.json", weights)
    finally:
        weights.close()
    ours = quantize_graph(source, tmp_path / "ours.onnx", tmp_path / "ranges.json", "int8", method, excluded)
    quantize_static(  # ONNX Runtime's own calibrator: the graph and its weights loaded, every product's tensors
        str(source),
        str(tmp_path / "theirs.onnx"),
        ListReader(feeds[name]),
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
            "CalibStridedMinMax": 1,
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        },
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
