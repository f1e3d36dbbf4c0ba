"""Localisation on a hand-built two-layer graph: which tensors leave each layer, pruning to them, running them on
ONNX Runtime, and the error of each layer against a reference computed with NumPy."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from luvc.parity.localize import layer_candidates, layer_errors
from luvc.runtime.exposed import only_outputs, run_with_outputs

WIDTH = 4


def _graph(tmp_path, scale: float = 1.0):
    """x -> layer 0 (MatMul W0, Add x; an SPU node inside it) -> layer 1 (MatMul W1, Relu) -> lm_head MatMul; saved."""
    rng = np.random.default_rng(0)
    w0, w1, head = (rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) for _ in range(3))
    w1 = w1 * np.float32(scale)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["l0_mm"], name="/llm/layers.0/mlp/MatMul"),
        helper.make_node("Add", ["l0_mm", "x"], ["l0_out"], name="/llm/layers.0/Add"),
        helper.make_node("Identity", ["l0_out"], ["l0_spu"], name="/llm/layers.0/spu/Identity"),
        helper.make_node("MatMul", ["l0_spu", "w1"], ["l1_mm"], name="/llm/layers.1/mlp/MatMul"),
        helper.make_node("Relu", ["l1_mm"], ["l1_out"], name="/llm/layers.1/Relu"),
        helper.make_node("MatMul", ["l1_out", "head"], ["logits"], name="/llm/lm_head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, WIDTH])],
        [numpy_helper.from_array(w, name) for w, name in ((w0, "w0"), (w1, "w1"), (head, "head"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"graph_{scale}.onnx"
    onnx.save(model, str(path))
    return path, w0, w1


def test_a_layers_candidates_are_the_tensors_its_nodes_send_outside_it(tmp_path):
    path, *_ = _graph(tmp_path)
    candidates = layer_candidates(onnx.load(str(path)), ["llm.layers.0", "llm.layers.1", "vision.blocks.0"])
    # layer 0's output reaches its SPU unit, which is not the layer itself; l0_mm stays inside
    assert candidates == {"llm.layers.0": ["l0_out"], "llm.layers.1": ["l1_out"]}


def test_only_outputs_drops_the_nodes_and_weights_the_outputs_do_not_need(tmp_path):
    path, *_ = _graph(tmp_path)
    model = only_outputs(onnx.load(str(path)), ["l0_out"])
    assert [node.name for node in model.graph.node] == ["/llm/layers.0/mlp/MatMul", "/llm/layers.0/Add"]
    assert [tensor.name for tensor in model.graph.initializer] == ["w0"]
    assert [output.name for output in model.graph.output] == ["l0_out"]
    assert [value.name for value in model.graph.input] == ["x"]  # the same feeds still apply


def test_layer_errors_name_the_first_layer_that_diverges(tmp_path):
    x = np.arange(WIDTH, dtype=np.float32)[None] / WIDTH
    path, w0, w1 = _graph(tmp_path)
    reference = {"llm.layers.0": x @ w0 + x, "llm.layers.1": np.maximum((x @ w0 + x) @ w1, 0)}
    candidates = layer_candidates(onnx.load(str(path)), list(reference))
    values = run_with_outputs(path, ["l0_out", "l1_out"], {"x": x})
    errors = {error.name: error for error in layer_errors(reference, candidates, values)}
    assert errors["llm.layers.0"].relative_error < 1e-6 and errors["llm.layers.1"].relative_error < 1e-6

    perturbed, *_ = _graph(tmp_path, scale=1.5)  # layer 1's weight changed: layer 0 agrees, layer 1 does not
    values = run_with_outputs(perturbed, ["l0_out", "l1_out"], {"x": x})
    errors = {error.name: error for error in layer_errors(reference, candidates, values)}
    assert errors["llm.layers.0"].relative_error < 1e-6
    assert errors["llm.layers.1"].relative_error == pytest.approx(0.5, rel=1e-5)  # Relu(1.5 v) = 1.5 Relu(v)


def test_a_candidate_of_another_shape_is_not_compared():
    reference = {"llm.layers.0": np.ones((1, WIDTH), np.float32)}
    values = {"a": np.ones((2, WIDTH), np.float32)}
    assert layer_errors(reference, {"llm.layers.0": ["a"]}, values) == []
