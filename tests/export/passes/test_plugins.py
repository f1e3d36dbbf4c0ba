"""The plugin form: one luvc node per OIM/SPU prefix."""

from luvc.export.passes import collapse_to_plugins, run_passes
from tests.export.passes.graphs import oim_model


def test_plugin_form_collapses_each_prefix_into_one_node():
    model = oim_model([0, 2, 4, 6], [1, 3, 5, 7], [0.5] * 4)
    fused, _ = run_passes(model, [collapse_to_plugins])
    (node,) = fused.graph.node
    assert (node.op_type, node.domain, node.name) == ("OrthoMerge", "luvc", "/vision/blocks.0/oim/OrthoMerge")
    assert list(node.input) == ["x"] and list(node.output) == ["y"]
    assert {attribute.name for attribute in node.attribute} == {"a", "b", "w"}
