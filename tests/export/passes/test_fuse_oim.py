"""The OIM merge fusion: regular merges become one reshape-mean, irregular ones stay."""

import numpy as np
import onnx_graphsurgeon as gs

from luvc.export.passes import fuse_oim_merge, run_passes
from luvc.export.passes.fuse_oim import match_oim_merge
from tests.export.passes.graphs import oim_model, run_graph


def test_regular_oim_merge_becomes_reshape_mean_and_is_bit_identical():
    x = np.random.default_rng(1).normal(size=(8, 4, 3)).astype(np.float32)
    for index_a, index_b in (([0, 2, 4, 6], [1, 3, 5, 7]), ([0, 1, 4, 5], [2, 3, 6, 7])):  # along W, along H (W=2)
        model = oim_model(index_a, index_b, [0.5] * 4)
        graph = gs.import_onnx(model)
        assert match_oim_merge(next(n for n in graph.nodes if n.op == "Add")) is not None
        fused, _ = run_passes(model, [fuse_oim_merge])
        assert [node.op_type for node in fused.graph.node] == ["Reshape", "ReduceMean", "Reshape"]
        np.testing.assert_array_equal(run_graph(fused, {"x": x})[0], run_graph(model, {"x": x})[0])


def test_irregular_oim_merge_keeps_the_gather_form():
    model = oim_model([0, 2, 4, 6], [1, 3, 5, 6], [0.5, 0.5, 0.5, 1.0], units=7)  # odd trailing unit carried
    fused, stats = run_passes(model, [fuse_oim_merge])
    assert stats[0].delta == 0
