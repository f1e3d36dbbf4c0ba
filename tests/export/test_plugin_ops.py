"""Plugin nodes (``--plugin-nodes``): the custom ops compute what the native path computes, and each exported
``luvc::OrthoMerge`` / ``luvc::SpectrumPrune`` node carries the bucket's plan as its attributes."""

import math

import onnx
import pytest
import torch

from luvc.compress.oim import merge_units
from luvc.compress.spu import lowpass_basis
from luvc.errors import LuvcError
from luvc.export.bucket_plan import plan_bucket
from luvc.export.exporter import export_model
from luvc.export.manifest import ExportManifest
from luvc.export.plugin_ops import SCHEMAS, plugin_units
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.scope import Scope
from luvc.models.spans import spu_prune
from luvc.runtime.pipeline import Pipeline
from tests.conftest import EXPORT_MATRIX


def _scopes(model: torch.nn.Module) -> list[Scope]:
    return [module for module in model.modules() if isinstance(module, Scope)]


def _attributes(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


@pytest.mark.parametrize("family", EXPORT_MATRIX)
def test_plugin_ops_compute_the_native_path_bit_for_bit(family):
    adapter = load_model(family)
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 3)], "Describe the picture.")
    config = adapter.luvc_config
    with torch.no_grad():
        native = adapter.model.model(**inputs)
        with plugin_units(adapter.model, config.spu_variant, config.rho):
            assert not [scope for scope in _scopes(adapter.model) if scope.fn in (merge_units, spu_prune)]
            plugged = adapter.model.model(**inputs)
    assert {scope.fn for scope in _scopes(adapter.model)} == {merge_units, spu_prune}  # restored
    assert torch.equal(native.last_hidden_state, plugged.last_hidden_state)
    assert native.kept_visual_indices.keys() == plugged.kept_visual_indices.keys()
    for layer, kept in native.kept_visual_indices.items():
        assert torch.equal(kept, plugged.kept_visual_indices[layer])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-llava"])
def test_each_unit_is_one_node_carrying_the_bucket_plan(family, tmp_path):
    adapter = load_model(family)
    adapter.apply_luvc()
    out = export_model(adapter, tmp_path / "export", show_progress=False, plugin_nodes=True)
    manifest = ExportManifest.load(out)
    ((name, entry),) = manifest.buckets.items()
    bucket = plan_bucket(adapter, entry.image_size)
    vision = onnx.load(out / manifest.graphs[entry.vision].file, load_external_data=False)
    prefill = onnx.load(out / manifest.graphs[entry.prefill].file, load_external_data=False)

    merges = [node for node in vision.graph.node if node.domain == "luvc"]
    assert [node.name for node in merges] == [
        f"/vision/blocks.{b}/oim/OrthoMerge" for b in adapter.luvc_config.oim_layers
    ]
    for node, block in zip(merges, adapter.luvc_config.oim_layers):
        attributes = _attributes(node)
        step = (
            bucket.plan.vision.encoder.merges[block]
            if bucket.plan.vision.encoder
            else adapter.oim_steps(adapter.luvc_config)[block]
        )
        assert attributes["index_a"] == step.index_a.tolist() and attributes["index_b"] == step.index_b.tolist()
        assert attributes["weight_a"] == pytest.approx(step.weight_a.tolist())
        assert (attributes["plugin_namespace"], attributes["plugin_version"]) == ("luvc", "1")
    assert not [n for n in vision.graph.node if "/oim/" in n.name and n.domain != "luvc"]

    prunes = [node for node in prefill.graph.node if node.domain == "luvc"]
    layers = bucket.budget_plan.prune_layers()
    assert [node.name for node in prunes] == [f"/llm/layers.{layer}/spu/SpectrumPrune" for layer in layers]
    count, start = bucket.tokens_per_image, bucket.visual_start
    for node, layer in zip(prunes, layers):
        attributes = _attributes(node)
        budget = bucket.budget_plan.per_image[layer][0]
        assert attributes["span_starts"] == [start] and attributes["span_counts"] == [count]
        assert attributes["budgets"] == [budget]
        assert attributes["low_frequencies"] == [lowpass_basis(count, adapter.luvc_config.rho).shape[0]]
        assert attributes["low_frequencies"] == [max(1, math.ceil(0.25 * count))]
        assert list(node.output)[3] == f"kept_visual_indices.{layer}" or budget == 0
        count = budget
    assert not [n for n in prefill.graph.node if "/spu/" in n.name and n.domain != "luvc"]
    with pytest.raises(LuvcError, match="holds luvc plugin nodes, which ONNX Runtime cannot run"):
        Pipeline(out)


def test_schemas_name_what_the_plugin_creators_read():
    attributes = {schema.name: set(schema.attributes) - {"plugin_version", "plugin_namespace"} for schema in SCHEMAS}
    assert attributes == {
        "OrthoMerge": {"index_a", "index_b", "weight_a", "weight_b", "axis"},
        "SpectrumPrune": {"span_starts", "span_counts", "budgets", "low_frequencies", "variant", "rho"},
    }
