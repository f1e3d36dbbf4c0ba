"""The cleanup passes: identities and inverse pairs go, lossy pairs stay."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from luvc.export.passes import cancel_inverse_pairs, constant_shapes, remove_identity, run_passes
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


def _attention_like_reshapes():
    """x (batch, seq - 2, 8), as a cut leaves it: split into heads by a shape computed at run time (what torch.onnx
    writes for a derived length), an Expand to a computed shape, and a Reshape to the shape it has."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "two"], ["batch_seq"], name="batch_seq"),
        helper.make_node("Concat", ["batch_seq", "heads"], ["split_shape"], name="split_shape", axis=0),
        helper.make_node("Reshape", ["x", "split_shape"], ["split"], name="split", allowzero=1),
        helper.make_node("Unsqueeze", ["split", "axis2"], ["one_more"], name="one_more"),
        helper.make_node("Shape", ["one_more"], ["wide"], name="wide_shape"),
        helper.make_node("Mul", ["wide", "repeat"], ["expand_shape"], name="expand_shape"),
        helper.make_node("Expand", ["one_more", "expand_shape"], ["repeated"], name="repeat"),
        helper.make_node("Shape", ["repeated"], ["same"], name="same_shape"),
        helper.make_node("Reshape", ["repeated", "same"], ["reshaped"], name="noop", allowzero=1),
        helper.make_node("Relu", ["reshaped"], ["y"], name="relu"),
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("two", TensorProto.INT64, [1], [2]),
        helper.make_tensor("heads", TensorProto.INT64, [2], [2, 4]),
        helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("repeat", TensorProto.INT64, [5], [1, 1, 3, 1, 1]),
    ]
    model = small_model(
        nodes, [value("x", ["batch", "seq - 2", 8])], [value("y", ["batch", "seq - 2", 3, 2, 4])], inits
    )
    shapes = {
        "split": ["batch", "seq - 2", 2, 4],
        "one_more": ["batch", "seq - 2", 1, 2, 4],
        "repeated": ["batch", "seq - 2", 3, 2, 4],
        "reshaped": ["batch", "seq - 2", 3, 2, 4],
    }
    model.graph.value_info.extend(value(name, shape) for name, shape in shapes.items())  # as torch.onnx records
    return model


def test_computed_shapes_become_constants_and_the_arithmetic_goes():
    model = _attention_like_reshapes()
    fused, _ = run_passes(model, [constant_shapes])
    ops = [node.op_type for node in fused.graph.node]
    # no Shape, Slice, Concat or Mul left, and the no-op Reshape gone
    assert ops == ["Reshape", "Unsqueeze", "Expand", "Relu"], ops
    rng = np.random.default_rng(0)
    for batch, length in ((1, 5), (3, 9)):  # the constant shapes hold for any size
        x = rng.normal(size=(batch, length, 8)).astype(np.float32)
        np.testing.assert_array_equal(run_graph(fused, {"x": x})[0], run_graph(model, {"x": x})[0])
