"""The cleanup passes: identities and inverse pairs go, lossy pairs stay."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from luvc.export.passes import cancel_inverse_pairs, remove_identity, run_passes
from tests.export.passes.graphs import run_graph, small_model, value


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
    model = onnx.shape_inference.infer_shapes(small_model(nodes, [value("x", [2, 3, 4])], [value("y", [2, 3, 4])]))
    fused, stats = run_passes(model, [remove_identity, cancel_inverse_pairs])
    assert [node.op_type for node in fused.graph.node] == ["Cast", "Cast"]  # the fp32 -> fp16 -> fp32 pair stays
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(fused, {"x": x})[0], run_graph(model, {"x": x})[0])
    assert [s.delta for s in stats] == [-1, -4]
