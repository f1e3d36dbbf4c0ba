"""What LUVC asks of ONNX Runtime's host, graph by graph: after ONNX Runtime's own optimisation the vision and prefill
graphs of a LUVC export hold at most 11% more nodes than those of the same model exported with compression off (on a
GPU at batch 1 each node is a launch the host issues, so more of them lose what the smaller matrices save; replayed as
a CUDA graph they cost no launch each)."""

from collections import Counter

import onnx
import pytest

from luvc.export.inspect import ort_optimized, shape_only_nodes
from luvc.export.manifest import ExportManifest

# 1.10 until the shifted gather index was built with Concat instead of two int64 Pads (1.102 on the tiny Qwen2-VL): on
# ONNX Runtime's CUDA EP each Pad ran on the CPU behind two copies, and kept the prefill from being captured
MAX_NODE_RATIO = 1.11
BUCKET = "224x224"


def _optimized(export) -> dict[str, onnx.ModelProto]:
    manifest = ExportManifest.load(export, verify=False)
    return {
        graph.kind: ort_optimized(export / graph.file)
        for graph in manifest.graphs.values()
        if graph.kind in ("vision", "prefill") and graph.bucket == BUCKET
    }


@pytest.mark.slow
def test_luvc_graphs_hold_at_most_eleven_percent_more_nodes(exports, uncompressed_export):
    """On the tiny Qwen2-VL (the other families: ``benchmarks/graph_overhead.py --model``)."""
    luvc, plain = _optimized(exports("tiny-qwen2-vl")), _optimized(uncompressed_export)
    assert set(luvc) == set(plain) == {"vision", "prefill"}
    nodes = {kind: (len(luvc[kind].graph.node), len(plain[kind].graph.node)) for kind in luvc}
    assert all(with_luvc >= without for with_luvc, without in nodes.values())  # LUVC's own nodes are there
    total_luvc, total_plain = (sum(counts) for counts in zip(*nodes.values()))
    assert total_luvc <= MAX_NODE_RATIO * total_plain, nodes


@pytest.mark.slow
def test_the_luvc_decode_graph_is_the_uncompressed_one_and_a_window_per_further_kv_capacity(
    exports, uncompressed_export
):
    # issue 74: a replayed LUVC decode step was slower on an H200 than the uncompressed one. As ONNX Runtime runs them
    # (optimised), the two graphs take the same attention path, operator for operator; LUVC's only adds, for each KV
    # capacity beyond the first (layers pruned to other lengths keep shorter caches), the attention window of that
    # capacity: a Min, a Range and an Unsqueeze
    graphs = {
        name: ort_optimized(folder / "decode.onnx")
        for name, folder in (("luvc", exports("tiny-qwen2-vl")), ("plain", uncompressed_export))
    }
    operators = {name: Counter(node.op_type for node in graph.graph.node) for name, graph in graphs.items()}
    capacities = {
        name: {item.type.tensor_type.shape.dim[2].dim_value for item in graph.graph.input if ".key" in item.name}
        for name, graph in graphs.items()
    }
    assert len(capacities["plain"]) == 1 and len(capacities["luvc"]) == 3  # budgets [32, 32, 16, 0]: three lengths
    further = len(capacities["luvc"]) - len(capacities["plain"])
    assert operators["plain"] - operators["luvc"] == Counter()  # nothing of the uncompressed step is missing
    assert operators["luvc"] - operators["plain"] == Counter({"Min": further, "Range": further, "Unsqueeze": further})
    assert operators["luvc"]["Softmax"] == operators["plain"]["Softmax"] == 4  # one attention a layer, both


def test_shape_only_nodes_are_those_that_feed_shapes_alone():
    helper = onnx.helper
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Concat", ["shape", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["reshaped"]),
        helper.make_node("Shape", ["x"], ["shape_too"]),
        helper.make_node("Cast", ["shape_too"], ["sizes"], to=onnx.TensorProto.FLOAT),  # read as data
        helper.make_node("Add", ["sizes", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("reshaped", onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
        ],
        [helper.make_tensor("tail", onnx.TensorProto.INT64, [1], [1]), helper.make_tensor("one", 1, [1], [1.0])],
    )
    assert shape_only_nodes(helper.make_model(graph)) == {"Shape": 1, "Concat": 1}
