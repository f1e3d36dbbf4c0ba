"""Passes on small hand-built graphs: each pattern on its own, checked in ONNX Runtime."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from luvc.export.lint import lint_graph
from luvc.export.passes import (
    cancel_inverse_pairs,
    collapse_to_plugins,
    fuse_oim_merge,
    remove_identity,
    run_passes,
    split_large_topk,
)
from luvc.export.passes.fuse_oim import match_oim_merge


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _value(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_identity_and_inverse_pairs_disappear():
    nodes = [
        helper.make_node("Identity", ["x"], ["a"], name="id"),
        helper.make_node("Transpose", ["a"], ["b"], name="t1", perm=[0, 2, 1]),
        helper.make_node("Transpose", ["b"], ["c"], name="t2", perm=[0, 2, 1]),
        helper.make_node("Cast", ["c"], ["d"], name="up", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["e"], name="down", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["e"], ["f"], name="lossy", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["f"], ["y"], name="back", to=TensorProto.FLOAT),
    ]
    model = onnx.shape_inference.infer_shapes(_model(nodes, [_value("x", [2, 3, 4])], [_value("y", [2, 3, 4])]))
    fused, stats = run_passes(model, [remove_identity, cancel_inverse_pairs])
    assert [node.op_type for node in fused.graph.node] == ["Cast", "Cast"]  # the fp32 -> fp16 -> fp32 pair stays
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(fused, {"x": x})[0], _run(model, {"x": x})[0])
    assert [s.delta for s in stats] == [-1, -4]


def _oim_model(index_a, index_b, weights, units=8):
    """x (units, 4, 3) -> the exporter's OIM merge pattern."""
    inits = [
        helper.make_tensor("a", TensorProto.INT64, [len(index_a)], index_a),
        helper.make_tensor("b", TensorProto.INT64, [len(index_b)], index_b),
        helper.make_tensor("w", TensorProto.FLOAT, [len(index_a), 1, 1], weights),
    ]
    nodes = [
        helper.make_node("Gather", ["x", "a"], ["ga"], name="/vision/blocks.0/oim/Gather", axis=0),
        helper.make_node("Gather", ["x", "b"], ["gb"], name="/vision/blocks.0/oim/Gather_1", axis=0),
        helper.make_node("Mul", ["ga", "w"], ["ma"], name="/vision/blocks.0/oim/Mul"),
        helper.make_node("Mul", ["gb", "w"], ["mb"], name="/vision/blocks.0/oim/Mul_1"),
        helper.make_node("Add", ["ma", "mb"], ["y"], name="/vision/blocks.0/oim/Add"),
    ]
    return _model(nodes, [_value("x", [units, 4, 3])], [_value("y", [len(index_a), 4, 3])], inits)


def test_regular_oim_merge_becomes_reshape_mean_and_is_bit_identical():
    x = np.random.default_rng(1).normal(size=(8, 4, 3)).astype(np.float32)
    for index_a, index_b in (([0, 2, 4, 6], [1, 3, 5, 7]), ([0, 1, 4, 5], [2, 3, 6, 7])):  # along W, along H (W=2)
        model = _oim_model(index_a, index_b, [0.5] * 4)
        graph = gs.import_onnx(model)
        assert match_oim_merge(next(n for n in graph.nodes if n.op == "Add")) is not None
        fused, _ = run_passes(model, [fuse_oim_merge])
        assert [node.op_type for node in fused.graph.node] == ["Reshape", "ReduceMean", "Reshape"]
        np.testing.assert_array_equal(_run(fused, {"x": x})[0], _run(model, {"x": x})[0])


def test_irregular_oim_merge_keeps_the_gather_form():
    model = _oim_model([0, 2, 4, 6], [1, 3, 5, 6], [0.5, 0.5, 0.5, 1.0], units=7)  # odd trailing unit carried
    fused, stats = run_passes(model, [fuse_oim_merge])
    assert stats[0].delta == 0


def test_topk_above_the_tensorrt_limit_is_rewritten_with_the_same_selection():
    n, k = 6000, 5000
    nodes = [
        helper.make_node("TopK", ["s", "k"], ["v", "i"], name="/llm/layers.2/spu/TopK", sorted=0),
        helper.make_node("TopK", ["i", "k"], ["kept", "order"], name="/llm/layers.2/spu/TopK_1", largest=0),
    ]
    model = _model(
        nodes,
        [_value("s", [2, n])],
        [_value("kept", [2, k], TensorProto.INT64)],
        [helper.make_tensor("k", TensorProto.INT64, [1], [k])],
    )
    assert [issue.rule for issue in lint_graph(model)] == ["topk", "topk"]
    fused, _ = run_passes(model, [split_large_topk])
    assert lint_graph(fused) == []
    assert [node.op_type for node in fused.graph.node].count("TopK") == 1  # n - k = 1000 dropped; the re-sort goes
    scores = np.random.default_rng(2).random((2, n)).astype(np.float32)
    np.testing.assert_array_equal(_run(fused, {"s": scores})[0], _run(model, {"s": scores})[0])
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)  # the builder owns the network: keep it alive while parsing
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(fused.SerializeToString()), [parser.get_error(i).desc() for i in range(parser.num_errors)]


def test_plugin_form_collapses_each_prefix_into_one_node():
    model = _oim_model([0, 2, 4, 6], [1, 3, 5, 7], [0.5] * 4)
    fused, _ = run_passes(model, [collapse_to_plugins])
    (node,) = fused.graph.node
    assert (node.op_type, node.domain, node.name) == ("OrthoMerge", "luvc", "/vision/blocks.0/oim/OrthoMerge")
    assert list(node.input) == ["x"] and list(node.output) == ["y"]
    assert {attribute.name for attribute in node.attribute} == {"a", "b", "w"}
