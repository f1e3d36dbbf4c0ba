"""GPTQ's layer-input statistics: ``X^T X`` of each weight product's inputs, read from ONNX Runtime over the feeds
of every graph that holds the layer, the same in one pass or many."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from luvc.calibration.hessians import HessianGraph, input_hessians, plan_passes

WIDTH, HIDDEN = 8, 12


def _graph(path, weights: dict[str, np.ndarray]) -> None:
    """x -> q = x @ Wq, k = x @ Wk (one input, two products) -> relu(q) @ Wo; the node names are the layer's, as in
    every exported graph that holds it."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], "/llm/layers.0/q_proj/MatMul"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], "/llm/layers.0/k_proj/MatMul"),
        helper.make_node("Relu", ["q"], ["r"], "/llm/layers.0/Relu"),
        helper.make_node("MatMul", ["r", "wo"], ["o"], "/llm/layers.0/o_proj/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("k", "o")],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_input_hessians_are_each_products_inputs_over_every_graph(tmp_path):
    rng = np.random.default_rng(0)
    weights = {
        "wq": rng.standard_normal((WIDTH, HIDDEN)).astype(np.float32),
        "wk": rng.standard_normal((WIDTH, 4)).astype(np.float32),
        "wo": rng.standard_normal((HIDDEN, WIDTH)).astype(np.float32),
    }
    _graph(tmp_path / "prefill.onnx", weights)
    _graph(tmp_path / "decode.onnx", weights)
    prefill = [{"x": rng.standard_normal((5, WIDTH)).astype(np.float32)} for _ in range(2)]
    decode = [{"x": rng.standard_normal((1, WIDTH)).astype(np.float32)} for _ in range(3)]
    graphs = [HessianGraph(tmp_path / "prefill.onnx", prefill), HessianGraph(tmp_path / "decode.onnx", decode)]

    rows = np.concatenate([feed["x"] for feed in prefill + decode]).astype(np.float64)
    hidden = np.maximum(rows @ weights["wq"].astype(np.float64), 0.0)
    found = input_hessians(graphs)
    assert set(found) == {"/llm/layers.0/q_proj/MatMul", "/llm/layers.0/k_proj/MatMul", "/llm/layers.0/o_proj/MatMul"}
    np.testing.assert_allclose(found["/llm/layers.0/q_proj/MatMul"], rows.T @ rows, rtol=1e-5)
    assert found["/llm/layers.0/k_proj/MatMul"] is found["/llm/layers.0/q_proj/MatMul"]  # one input, one array
    np.testing.assert_allclose(found["/llm/layers.0/o_proj/MatMul"], hidden.T @ hidden, rtol=1e-4)

    # a budget of one input's H per pass: two passes, the same statistics
    passes = plan_passes(graphs, memory_budget=HIDDEN * HIDDEN * 8)
    assert [sorted(map(len, groups)) for groups in passes] == [[2], [1]]
    split = input_hessians(graphs, memory_budget=HIDDEN * HIDDEN * 8)
    for node, hessian in found.items():
        np.testing.assert_allclose(split[node], hessian, rtol=1e-12)

    # a product left in floating point gets none
    excluded = [HessianGraph(graph.path, graph.feeds, ("/llm/layers.0/o_proj/MatMul",)) for graph in graphs]
    assert "/llm/layers.0/o_proj/MatMul" not in input_hessians(excluded)
