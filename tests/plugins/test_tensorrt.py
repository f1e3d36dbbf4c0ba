"""The plugin library inside TensorRT-RTX's plugin registry (the TensorRT Python module installed here), and the
build and run checks around it."""

import numpy as np
import onnx
import pytest

from luvc.engines.plugin_library import PluginLibrary
from luvc.engines.trt_module import import_tensorrt
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
