"""TopK above TensorRT's limit is rewritten with the same selection."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from luvc.export.lint import lint_graph
from luvc.export.passes import run_passes, split_large_topk
from tests.export.passes.graphs import run_graph, small_model, value


def test_topk_above_the_tensorrt_limit_is_rewritten_with_the_same_selection():
    n, k = 6000, 5000
    nodes = [
        helper.make_node("TopK", ["s", "k"], ["v", "i"], name="/llm/layers.2/spu/TopK", sorted=0),
        helper.make_node("TopK", ["i", "k"], ["kept", "order"], name="/llm/layers.2/spu/TopK_1", largest=0),
    ]
    model = small_model(
        nodes,
        [value("s", [2, n])],
        [value("kept", [2, k], TensorProto.INT64)],
        [helper.make_tensor("k", TensorProto.INT64, [1], [k])],
    )
    assert [issue.rule for issue in lint_graph(model)] == ["topk", "topk"]
    fused, _ = run_passes(model, [split_large_topk])
    assert lint_graph(fused) == []
    assert [node.op_type for node in fused.graph.node].count("TopK") == 1  # n - k = 1000 dropped; the re-sort goes
    scores = np.random.default_rng(2).random((2, n)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(fused, {"s": scores})[0], run_graph(model, {"s": scores})[0])
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)  # the builder owns the network: keep it alive while parsing
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(fused.SerializeToString()), [parser.get_error(i).desc() for i in range(parser.num_errors)]
