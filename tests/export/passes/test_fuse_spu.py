"""``fuse_spu_gathers`` on a hand-built SPU unit: the expanded gathers become one GatherND each on the shared index,
with the same outputs in ONNX Runtime, and names stay unique when the unit already holds a GatherND (a scorer's)."""

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from luvc.export.passes.fuse_spu import fuse_spu_gathers
from tests.export.passes.graphs import run_graph, small_model, value

UNIT = "/llm/layers.2/spu"


def spu_unit_model():
    """hidden (1, 5, 3) and cos (1, 5, 2) gathered by one (1, 3, 1) index, each through its own Expand; a scorer's
    GatherND (a table lookup) already named ``{UNIT}/GatherND``."""
    inits = [
        helper.make_tensor("hidden_shape", TensorProto.INT64, [3], [1, 3, 3]),
        helper.make_tensor("cos_shape", TensorProto.INT64, [3], [1, 3, 2]),
    ]
    nodes = [
        helper.make_node("GatherND", ["table", "ids"], ["looked_up"], name=f"{UNIT}/GatherND", batch_dims=1),
        helper.make_node("Expand", ["index", "hidden_shape"], ["index_h"], name=f"{UNIT}/Expand"),
        helper.make_node("GatherElements", ["hidden", "index_h"], ["kept_h"], name=f"{UNIT}/GatherElements", axis=1),
        helper.make_node("Expand", ["index", "cos_shape"], ["index_c"], name=f"{UNIT}/Expand_1"),
        helper.make_node("GatherElements", ["cos", "index_c"], ["kept_c"], name=f"{UNIT}/GatherElements_1", axis=1),
    ]
    inputs = [
        value("hidden", [1, 5, 3]),
        value("cos", [1, 5, 2]),
        value("index", [1, 3, 1], TensorProto.INT64),
        value("table", [1, 6, 1]),
        value("ids", [1, 2, 1], TensorProto.INT64),
    ]
    outputs = [value("kept_h", [1, 3, 3]), value("kept_c", [1, 3, 2]), value("looked_up", [1, 2, 1])]
    return small_model(nodes, inputs, outputs, inits)


def test_gathers_read_the_shared_index_with_unique_names():
    model = spu_unit_model()
    feeds = {
        "hidden": np.arange(15, dtype=np.float32).reshape(1, 5, 3),
        "cos": np.arange(10, dtype=np.float32).reshape(1, 5, 2),
        "index": np.array([[[0], [2], [4]]], dtype=np.int64),
        "table": np.arange(6, dtype=np.float32).reshape(1, 6, 1),
        "ids": np.array([[[5], [1]]], dtype=np.int64),
    }
    before = run_graph(model, feeds)
    graph = fuse_spu_gathers(gs.import_onnx(model))
    fused = [node for node in graph.nodes if node.op == "GatherND" and node.inputs[1].name == "index"]
    assert len(fused) == 2 and all(node.attrs == {"batch_dims": 1} for node in fused)
    assert not [node for node in graph.nodes if node.op in ("Expand", "GatherElements")]
    names = [node.name for node in graph.nodes]
    assert len(names) == len(set(names)) and f"{UNIT}/GatherND" in names
    assert sorted(node.name for node in fused) == [f"{UNIT}/GatherND_1", f"{UNIT}/GatherND_2"]
    for a, b in zip(before, run_graph(gs.export_onnx(graph), feeds)):
        np.testing.assert_array_equal(a, b)


def energy_model(exponent: float, square_also_output: bool):
    """``ReduceSum(Pow(x, exponent), axes=[1])`` under the unit; the square is also a graph output when asked."""
    inits = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [exponent]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["squared"], name=f"{UNIT}/Pow"),
        helper.make_node("ReduceSum", ["squared", "axes"], ["energy"], name=f"{UNIT}/ReduceSum", keepdims=0),
    ]
    outputs = [value("energy", [1, 4])] + ([value("squared", [1, 3, 4])] if square_also_output else [])
    return small_model(nodes, [value("x", [1, 3, 4])], outputs, inits)


def test_residual_energy_becomes_one_reduce_sum_square():
    from luvc.export.passes.fuse_spu import fuse_spu_energy

    feeds = {"x": np.linspace(-2, 2, 12, dtype=np.float32).reshape(1, 3, 4)}
    model = energy_model(2.0, square_also_output=False)
    graph = fuse_spu_energy(gs.import_onnx(model))
    assert [node.op for node in graph.nodes] == ["ReduceSumSquare"]
    assert graph.nodes[0].name == f"{UNIT}/ReduceSumSquare" and graph.nodes[0].attrs["keepdims"] == 0
    np.testing.assert_allclose(run_graph(gs.export_onnx(graph), feeds)[0], run_graph(model, feeds)[0], rtol=1e-6)
    # a cube, or a square something else reads, stays as it is
    for exponent, shared in ((3.0, False), (2.0, True)):
        kept = fuse_spu_energy(gs.import_onnx(energy_model(exponent, shared)))
        assert sorted(node.op for node in kept.nodes) == ["Pow", "ReduceSum"]
