"""The plugin library inside TensorRT-RTX's plugin registry (the TensorRT Python module installed here), and the
build and run checks around it."""

import shutil

import numpy as np
import onnx
import pytest

from luvc.cli.main import main
from luvc.engines.plugin_library import PluginLibrary, plugin_library_for_run
from luvc.engines.trt_module import import_tensorrt
from luvc.errors import LuvcError
from luvc.export.plugin_ops import SCHEMAS
from luvc.models import load_model

trt_module = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")


@pytest.fixture(scope="module")
def registry(plugin_library):
    tensorrt = import_tensorrt("tensorrt_rtx")
    PluginLibrary.of(plugin_library).load(tensorrt)
    return trt_module.get_plugin_registry()


def _field(trt, name: str, value):
    if isinstance(value, bytes):
        return trt.PluginField(name, np.frombuffer(value, dtype=np.int8), trt.PluginFieldType.CHAR)
    array = np.atleast_1d(np.asarray(value))
    if array.dtype.kind == "f":
        return trt.PluginField(name, array.astype(np.float32), trt.PluginFieldType.FLOAT32)
    return trt.PluginField(name, array.astype(np.int32), trt.PluginFieldType.INT32)


def test_creators_read_the_fields_the_export_writes(registry):
    for schema in SCHEMAS:
        creator = registry.get_creator(schema.name, "1", "luvc")
        assert creator is not None, schema.name
        expected = set(schema.attributes) - {"plugin_version", "plugin_namespace"}
        assert {field.name for field in creator.field_names} == expected


@pytest.mark.slow
def test_tensorrt_creates_every_plugin_node_of_an_export(registry, tmp_path):
    from luvc.export.exporter import export_model

    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    out = export_model(adapter, tmp_path / "export", show_progress=False, plugin_nodes=True)
    created = 0
    for graph in sorted(out.glob("*.onnx")):
        for node in onnx.load(graph, load_external_data=False).graph.node:
            if node.domain != "luvc":
                continue
            values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            fields = [_field(trt_module, k, v) for k, v in values.items() if not k.startswith("plugin_")]
            creator = registry.get_creator(node.op_type, "1", "luvc")
            plugin = creator.create_plugin(
                node.name, trt_module.PluginFieldCollection(fields), trt_module.TensorRTPhase.BUILD
            )
            assert plugin is not None, node.name
            created += 1
    assert created == 3  # one OIM step and two SPU layers in the tiny model's graphs


def test_a_bad_node_is_not_created(registry):
    creator = registry.get_creator("SpectrumPrune", "1", "luvc")
    values = {
        "span_starts": [3],
        "span_counts": [8],
        "budgets": [9],
        "low_frequencies": [2],
        "variant": b"spectral-residual",
        "rho": 0.25,
    }
    fields = trt_module.PluginFieldCollection([_field(trt_module, k, v) for k, v in values.items()])
    assert creator.create_plugin("bad", fields, trt_module.TensorRTPhase.BUILD) is None


@pytest.mark.slow
def test_build_refuses_what_tensorrt_rtx_cannot_build(plugin_library, tmp_path, capsys):
    from luvc.export.exporter import export_model

    adapter = load_model("tiny-llava")
    adapter.apply_luvc()
    plugged = export_model(adapter, tmp_path / "plugged", show_progress=False, plugin_nodes=True)
    args = ["build", str(plugged), "--target", "ampere", "--out", str(tmp_path / "engines")]
    assert main([*args, "--plugin-library", str(plugin_library)]) == 2
    assert "has no plugin layers; build it with full TensorRT (--tensorrt-module tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()


def test_run_loads_only_the_library_the_engines_were_built_with(plugin_library, tmp_path):
    recorded = PluginLibrary.of(plugin_library)
    moved = shutil.copy(plugin_library, tmp_path / "moved.so")
    assert plugin_library_for_run(recorded, moved).sha256 == recorded.sha256  # same bytes, new place
    other = tmp_path / "other.so"
    other.write_bytes(plugin_library.read_bytes() + b"\0")
    with pytest.raises(LuvcError, match="is not the one these engines were built with"):
        plugin_library_for_run(recorded, other)
    gone = PluginLibrary(str(tmp_path / "gone.so"), recorded.sha256)
    with pytest.raises(LuvcError, match="which is not there; pass its new place with --plugin-library"):
        plugin_library_for_run(gone, None)
    with pytest.raises(LuvcError, match="built without a plugin library; drop --plugin-library"):
        plugin_library_for_run(None, plugin_library)
