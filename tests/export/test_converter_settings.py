"""The exporter settings: the torchlib registry is built once, and one graph's translations never reach another."""

from __future__ import annotations

import torch
from torch.onnx._internal.exporter import _registration

from luvc.export.converter_settings import torchlib_registry_once
from luvc.export.kv_update import translation_table


def test_the_registry_is_built_once_and_each_export_gets_its_own_table():
    original = _registration.ONNXRegistry.from_torchlib
    with torchlib_registry_once():
        first = _registration.ONNXRegistry.from_torchlib(opset_version=18)
        target, function = next(iter(translation_table("tensor-scatter").items()))
        first.register_op(target, function)
        second = _registration.ONNXRegistry().from_torchlib(opset_version=18)
    plain = original(opset_version=18)
    assert _registration.ONNXRegistry.from_torchlib == original  # restored
    name = target.name()
    assert [meta.is_custom for meta in first.functions[name]][0]
    assert not any(meta.is_custom for meta in second.functions.get(name, ()))
    assert second.functions.keys() == plain.functions.keys()
    assert second.opset_version == plain.opset_version == 18
    shared = next(key for key in plain.functions if key != name)
    assert second.functions[shared][0] is first.functions[shared][0]  # the same build, not a new one
    assert second.functions[shared] is not first.functions[shared]


def test_a_graph_converts_the_same_with_the_registry_built_once():
    class Scale(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.silu(x) * 2

    args = (torch.ones(2, 3),)
    plain = torch.onnx.export(Scale(), args, dynamo=True, optimize=True).model_proto
    with torchlib_registry_once():
        once = [torch.onnx.export(Scale(), args, dynamo=True, optimize=True).model_proto for _ in range(2)]
    assert all(model.graph.SerializeToString() == plain.graph.SerializeToString() for model in once)


def test_tracing_without_the_fake_tensor_cache_gives_the_same_program_and_restores_the_setting():
    import torch._dynamo.config as dynamo_config

    from luvc.export.converter_settings import without_fake_tensor_cache

    class Attention(torch.nn.Module):
        def forward(self, x):
            scores = torch.softmax(x @ x.transpose(1, 2), dim=-1)
            return (scores @ x).reshape(x.shape[0], -1)

    args = (torch.randn(2, 5, 4),)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("length")},)
    before = dynamo_config.fake_tensor_cache_enabled
    plain = torch.export.export(Attention(), args, dynamic_shapes=dims, strict=False)
    with without_fake_tensor_cache():
        assert not dynamo_config.fake_tensor_cache_enabled
        uncached = torch.export.export(Attention(), args, dynamic_shapes=dims, strict=False)
    assert dynamo_config.fake_tensor_cache_enabled == before
    assert str(uncached.graph) == str(plain.graph)
    assert uncached.range_constraints.keys() == plain.range_constraints.keys()


class Mixed(torch.nn.Module):
    """Operators type promotion covers (a float16 tensor plus a float32 one, an integer tensor times a float one)
    between operators it does not (softmax, matmul, reshape)."""

    def forward(self, x, counts):
        half = torch.softmax(x.half(), dim=-1)
        mixed = half + x  # float16 + float32: promoted to float32
        scaled = mixed * counts  # float32 * int64
        return (scaled @ scaled.transpose(0, 1)).reshape(-1)


def test_type_promotion_runs_only_the_promoted_operators_and_converts_the_same():
    from torch.onnx._internal.fx.passes import type_promotion

    from luvc.export.converter_settings import type_promotion_of_promoted_nodes

    args = (torch.randn(3, 4), torch.arange(4))
    program = torch.export.export(Mixed(), args, dynamic_shapes=({0: torch.export.Dim("rows")}, None), strict=False)
    run = []
    interpreter = type_promotion._TypePromotionInterpreter
    call_function = interpreter.call_function

    def counted(self, target, *rest):
        run.append(str(target))
        return call_function(self, target, *rest)

    def convert() -> tuple[bytes, list[str]]:
        run.clear()
        model = torch.onnx.export(program, args, dynamo=True, optimize=True).model_proto
        for node in model.graph.node:
            del node.metadata_props[:]
        return model.graph.SerializeToString(), list(run)

    interpreter.call_function = counted
    try:
        plain, every = convert()
        with type_promotion_of_promoted_nodes():
            promoted, only = convert()
    finally:
        interpreter.call_function = call_function
    assert interpreter.run_node.__name__ == "run_node"  # restored
    assert promoted == plain
    assert any("softmax" in target for target in every) and not any("softmax" in target for target in only)
    assert any("add" in target for target in only) and any("mul" in target for target in only)
    assert len(only) < len(every)


def test_the_registry_built_once_is_the_one_torch_builds_from_onnxscripts_own_list():
    """The once-per-process registry reads each torchlib function's domain from its opset instead of translating its
    source: the same functions under the same targets, with the same domains and signatures, as torch's own build,
    and onnxscript's list is its own again afterwards."""
    from onnxscript._framework_apis import torch_2_5
    from torch.onnx._internal import _lazy_import

    from luvc.export import converter_settings

    listed = _lazy_import.onnxscript_apis.get_torchlib_ops
    with converter_settings._torchlib_listed_without_parsing():
        assert _lazy_import.onnxscript_apis.get_torchlib_ops is not listed  # torch reads the quick list
        quick = _registration.ONNXRegistry.from_torchlib(opset_version=18)
    assert _lazy_import.onnxscript_apis.get_torchlib_ops is listed is torch_2_5.get_torchlib_ops
    plain = _registration.ONNXRegistry.from_torchlib(opset_version=18)

    def described(registry) -> dict:
        return {
            str(target): [(meta.onnx_function, meta.is_complex, meta.is_custom, str(meta.signature)) for meta in metas]
            for target, metas in registry.functions.items()
        }

    assert described(quick) == described(plain)
    assert len(plain.functions) > 300
    assert {meta.domain for meta in torch_2_5.get_torchlib_ops()[:20]} == {"pkg.onnxscript.torch_lib"}
