"""One trace to the program torch.onnx translates: the same ONNX as torch.export's trace decomposed again by
torch.onnx, the second decomposition skipped only for programs traced that way, and torch's own path where the one
trace is not available."""

from __future__ import annotations

import hashlib
import logging

import onnx
import pytest
import torch
from torch.export import Dim

from luvc.export import decomposed_trace
from luvc.export.bucket_plan import plan_bucket
from luvc.export.convert import OnnxFromGraphSpec
from luvc.export.converter_settings import without_stack_traces
from luvc.export.decomposed_trace import converting_decomposed, is_decomposed, trace_decomposed
from luvc.export.graphs import prefill_spec
from luvc.export.profile import ExportProfile
from luvc.models import load_model

OPSET = 18


class Block(torch.nn.Module):
    """Ops that torch.onnx decomposes (``chunk`` and ``reshape`` of a dynamic length) and some it translates as they
    are (layer norm, attention, GELU)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(8)
        self.project = torch.nn.Linear(8, 24)

    def forward(self, x):
        query, key, value = self.project(self.norm(x)).chunk(3, dim=-1)
        heads = [t.reshape(x.shape[0], x.shape[1], 2, 4).transpose(1, 2) for t in (query, key, value)]
        attended = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
        return torch.nn.functional.gelu(attended.transpose(1, 2).reshape(x.shape)) + x


ARGS = (torch.randn(2, 5, 8),)
DIMS = ({0: Dim("batch", min=1, max=4), 1: Dim("length", min=2, max=64)},)


def _convert(program) -> bytes:
    """The ONNX graph of ``program``, without debugging metadata."""
    with converting_decomposed():
        model = torch.onnx.export(program, ARGS, dynamo=True, optimize=True, opset_version=OPSET).model_proto
    return _without_debug_metadata(model).graph.SerializeToString()


def _without_debug_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without torch.onnx's and onnxscript's debugging metadata (which FX nodes a node or a folded value
    came from), which names FX nodes and which the export's files do not keep."""
    for item in (*model.graph.node, *model.graph.value_info):
        del item.metadata_props[:]
    return model


def _torch_program():
    return torch.export.export(Block().eval(), ARGS, dynamic_shapes=DIMS, strict=False)


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
def test_one_trace_converts_to_the_onnx_of_torchs_two():
    program = trace_decomposed(Block().eval(), ARGS, DIMS, OPSET, {})
    assert is_decomposed(program)
    assert not is_decomposed(_torch_program())
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.reshape.default" not in targets and "aten.view.default" in targets  # decomposed as torch.onnx would
    assert _convert(program) == _convert(_torch_program())


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
def test_only_programs_traced_once_skip_torch_onnx_decomposition(monkeypatch):
    calls = []
    run_decompositions = torch.export.ExportedProgram.run_decompositions

    def counted(self, *args, **kwargs):
        calls.append(self)
        return run_decompositions(self, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    _convert(trace_decomposed(Block().eval(), ARGS, DIMS, OPSET, {}))
    assert calls == []
    torch_program = _torch_program()
    _convert(torch_program)
    assert calls == [torch_program]
    assert decomposed_trace._internals().fx_passes.decompose_with_registry.__name__ == "decompose_with_registry"


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
def test_without_the_internals_the_trace_is_torch_exports(monkeypatch):
    monkeypatch.setattr(decomposed_trace, "_internals", lambda: None)
    program = trace_decomposed(Block().eval(), ARGS, DIMS, OPSET, {})
    assert not is_decomposed(program)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.reshape.default" in targets  # torch.export's training IR: torch.onnx decomposes it
    assert _convert(program) == _convert(_torch_program())


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
def test_a_module_the_one_trace_cannot_take_falls_back_to_torch_export(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("this torch cannot trace it in one pass")

    monkeypatch.setattr(decomposed_trace, "_one_trace", refuse)
    with caplog.at_level(logging.DEBUG, logger="luvc.export.decomposed_trace"):
        program = trace_decomposed(Block().eval(), ARGS, DIMS, OPSET, {})
    assert "one trace failed (RuntimeError: this torch cannot trace it in one pass)" in caplog.text
    assert not is_decomposed(program)
    assert _convert(program) == _convert(_torch_program())


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
def test_stack_traces_are_off_while_tracing_and_restored_after():
    import torch.fx.config as fx_config

    before = fx_config.do_not_emit_stack_traces
    with without_stack_traces():
        assert fx_config.do_not_emit_stack_traces
        program = trace_decomposed(Block().eval(), ARGS, DIMS, OPSET, {})
    assert fx_config.do_not_emit_stack_traces == before
    traced = trace_decomposed(Block().eval(), ARGS, DIMS, OPSET, {})

    def with_stack_traces(program) -> set[str]:  # but the size reads torch's runtime-assert pass adds with its own
        return {n.name for n in program.graph.nodes if n.meta.get("stack_trace") and "sym_size" not in n.name}

    assert with_stack_traces(program) == set()
    assert {"layer_norm", "linear"} <= with_stack_traces(traced)  # recorded by default


def _canonical(model: onnx.ModelProto) -> list[tuple]:
    """The graph's nodes with values named by where they come from (a graph input, the producing node's position,
    an initializer's bytes), so that two graphs that differ only in value names compare equal."""
    names = {value.name: f"input:{value.name}" for value in model.graph.input}
    for tensor in model.graph.initializer:
        unnamed = onnx.TensorProto()
        unnamed.CopyFrom(tensor)
        unnamed.name = ""
        names[tensor.name] = "initializer:" + hashlib.sha1(unnamed.SerializeToString()).hexdigest()
    for position, node in enumerate(model.graph.node):
        for index, output in enumerate(node.output):
            names[output] = f"node{position}:{index}"
    return [
        (
            node.op_type,
            node.domain,
            tuple(names.get(name, name) for name in node.input),
            tuple(attribute.SerializeToString() for attribute in node.attribute),
        )
        for node in model.graph.node
    ] + [tuple(names[value.name] for value in model.graph.output)]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_a_prefill_graph_is_the_same_with_one_trace(family, monkeypatch):
    """Qwen2-VL's prefill comes out byte for byte (but for debugging metadata); Qwen3-VL's names values otherwise (a
    ``clone`` of torch's training IR is an ``alias`` in one trace): the same operators on the same tensors."""
    adapter = load_model(family)
    adapter.apply_luvc()
    profile = ExportProfile(image_sizes=((224, 224),)).resolve(adapter)

    def export():
        spec = prefill_spec(adapter, plan_bucket(adapter, (224, 224)), profile)
        return OnnxFromGraphSpec(spec, opset=profile.opset, kv_update=profile.kv_update)()

    one = export()
    with monkeypatch.context() as patch:
        patch.setattr(decomposed_trace, "_internals", lambda: None)
        two = export()
    if family == "tiny-qwen2-vl":
        assert _without_debug_metadata(one).SerializeToString() == _without_debug_metadata(two).SerializeToString()
    assert _canonical(one) == _canonical(two)
    assert len(one.graph.node) > 300
