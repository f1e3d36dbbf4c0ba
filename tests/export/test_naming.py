"""The node-naming scheme: names built by ``luvc.export.naming`` read back to the same place, module paths map to
it, and the nodes of an exported graph sit where the manifest says its LUVC units are."""

import onnx
import pytest

from luvc.export.naming import (
    NodePlace,
    graph_path,
    layer_name,
    layer_prefix,
    place_of,
    place_of_layer,
    unit_prefix,
)


@pytest.mark.parametrize("stack, index", [("vision", 0), ("vision", 31), ("llm", 7)])
def test_built_names_read_back(stack, index):
    assert place_of(f"{layer_prefix(stack, index)}self_attn/MatMul") == NodePlace(stack, index, None)
    unit = {"vision": "oim", "llm": "spu"}[stack]
    assert place_of(f"{unit_prefix(stack, index)}/TopK") == NodePlace(stack, index, unit)
    assert place_of(f"{unit_prefix(stack, index)}/TopK").unit_prefix == unit_prefix(stack, index)
    assert place_of_layer(layer_name(stack, index)) == NodePlace(stack, index, None)


def test_names_outside_the_layers_have_no_place():
    assert place_of("/llm/lm_head/MatMul") is None
    assert place_of("/vision/merger/mlp.0/Gemm") is None
    assert place_of("/llm/layers.x/spu/TopK") is None
    assert place_of(None) is None
    with pytest.raises(ValueError, match="names no layer"):
        place_of_layer("llm.lm_head")


@pytest.mark.parametrize(
    "module_path, expected",
    [
        ("language_model.luvc_spu.3", "/llm/layers.3/spu"),
        ("language_model.layers.3.self_attn", "/llm/layers.3/self_attn"),
        ("encoder.luvc_oim.1", "/vision/blocks.1/oim"),
        ("encoder.blocks.2.attn.qkv", "/vision/blocks.2/attn/qkv"),
        ("model.vision_tower.vision_model.encoder.layers.5.luvc_oim", "/vision/blocks.5/oim"),
        ("model.vision_tower.vision_model.encoder.layers.5.mlp.fc1", "/vision/blocks.5/mlp/fc1"),
    ],
)
def test_module_paths_map_onto_the_scheme(module_path, expected):
    assert f"/{graph_path(module_path)}" == expected


def test_exported_unit_nodes_sit_at_the_manifest_prefixes(exports):
    from luvc.export.manifest import ExportManifest

    folder = exports("tiny-llava")
    manifest = ExportManifest.load(folder)
    for name, graph in manifest.graphs.items():
        model = onnx.load(str(folder / graph.file), load_external_data=False)
        units = {place.unit_prefix for node in model.graph.node if (place := place_of(node.name)) and place.unit}
        assert sorted(units) == sorted(graph.node_prefixes), name
    assert manifest.graphs["vision_224x224"].node_prefixes == (unit_prefix("vision", 0),)
