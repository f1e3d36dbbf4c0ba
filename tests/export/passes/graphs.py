"""Small hand-built ONNX graphs for the pass tests, run in ONNX Runtime."""

import onnxruntime as ort
from onnx import TensorProto, helper


def small_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def run_graph(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def value(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def oim_model(index_a, index_b, weights, units=8):
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
    return small_model(nodes, [value("x", [units, 4, 3])], [value("y", [len(index_a), 4, 3])], inits)
