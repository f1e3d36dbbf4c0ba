"""The exporter settings: the torchlib registry is built once, and one graph's translations never reach another."""

from __future__ import annotations

import pytest
import torch
from torch.onnx._internal.exporter import _registration

from luvc.export.converter_settings import SETTINGS, _built_registry, export_settings, torchlib_registry_once
from luvc.export.kv_update import translation_table


def test_the_registry_is_built_once_and_each_export_gets_its_own_table():
    # built now, as the plain one below: a build earlier in this process may predate operators a later import
    # registered (torch.ao's quantized_decomposed), which torch.onnx's build then lists too
    _built_registry.cache_clear()
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


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
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


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
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


def test_every_setting_applies_on_this_torch_and_onnxscript():
    """CI's torch and onnxscript have every private name the settings need (luvc.export.torch_internals): a release
    that renames one turns this red, as well as the setting's own test below."""
    from luvc.export.converter_settings import settings_applied

    assert set(settings_applied().values()) == {"applied"}, settings_applied()


def _probes() -> dict:
    """For each setting, what shows it applied, read from torch and onnxscript themselves while it is entered."""
    import onnxscript.rewriter as rewriter
    import torch._dynamo.config as dynamo_config
    import torch.fx.config as fx_config
    from torch.onnx._internal.exporter import _fx_passes
    from torch.onnx._internal.fx.passes import type_promotion

    from luvc.export import decomposed_trace

    def one_trace() -> bool:
        class Double(torch.nn.Module):
            def forward(self, x):
                return x * 2

        return decomposed_trace.is_decomposed(
            decomposed_trace.trace_decomposed(Double(), (torch.ones(2),), None, 18, {})
        )

    def listed_quickly() -> bool:
        from torch.onnx._internal import _lazy_import

        from luvc.export import converter_settings

        before = _lazy_import.onnxscript_apis.get_torchlib_ops
        with converter_settings._torchlib_listed_without_parsing():
            return _lazy_import.onnxscript_apis.get_torchlib_ops is not before

    return {
        "quiet": lambda: __import__("logging").getLogger("torch.onnx").level == __import__("logging").ERROR,
        "no_stack_traces": lambda: fx_config.do_not_emit_stack_traces,
        "registry_once": lambda: (
            _registration.ONNXRegistry.from_torchlib.__func__.__name__ == "from_torchlib"
            and _registration.ONNXRegistry.from_torchlib.__func__.__module__ == "luvc.export.converter_settings"
        ),
        "torchlib_listed": listed_quickly,
        "no_fake_tensor_cache": lambda: not dynamo_config.fake_tensor_cache_enabled,
        "one_trace": one_trace,
        "converting_decomposed": lambda: (
            _fx_passes.decompose_with_registry.__module__ == "luvc.export.decomposed_trace"
        ),
        "no_slow_rewrites": lambda: (
            "SlicesSplit" not in {getattr(r, "name", None) for r in rewriter._DEFAULT_REWRITE_RULES}
        ),
        "promoted_nodes_only": lambda: (
            type_promotion._TypePromotionInterpreter.run_node.__name__ == "run_promoted_nodes"
        ),
    }


@pytest.mark.parametrize("name", [setting.name for setting in SETTINGS])
def test_each_setting_shows_in_torch_and_onnxscript_while_entered(name):
    """Entered through the stack (its stage), each setting changes what torch or onnxscript do, as read from them."""
    setting = next(setting for setting in SETTINGS if setting.name == name)
    probe = _probes()[name]
    if setting.stage is None:  # used where its code is, not entered by the stack
        assert probe()
        return
    assert not probe()
    with export_settings(setting.stage):
        assert probe()
    assert not probe()  # restored


@pytest.mark.slow  # a whole tiny export (17 s); the torch matrix runs it on every release CI checks
def test_a_setting_whose_internals_are_gone_is_said_once_left_out_and_recorded(monkeypatch, capsys, tmp_path):
    """A release without onnxscript's rewrite-rule list: one line names the setting, why and what it costs; the
    export still runs, without it, and the manifest records it off."""
    import onnxscript.rewriter as rewriter

    from luvc.export import converter_settings, torch_internals
    from luvc.export.exporter import export_model
    from luvc.export.manifest import ExportManifest
    from luvc.export.profile import ExportProfile
    from luvc.models import load_model

    present = dict(torch_internals.found())
    present.pop(converter_settings.REWRITE_RULES)
    monkeypatch.setattr(torch_internals, "found", lambda: present)
    monkeypatch.setattr(converter_settings, "_reported", False)
    rules = rewriter._DEFAULT_REWRITE_RULES
    with converter_settings.export_settings("convert"), converter_settings.export_settings("convert"):
        assert rewriter._DEFAULT_REWRITE_RULES is rules  # left out: onnxscript's own rules
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines == [
        f"warning: export setting no_slow_rewrites is off ({converter_settings._releases()} lacks "
        "onnxscript.rewriter._DEFAULT_REWRITE_RULES): exports go without converting without onnxscript's SlicesSplit "
        "rule (8 of the 9 s the optimizer spends on a 32-block encoder)."
    ]
    out = export_model(
        load_model("tiny-qwen2-vl"),
        tmp_path / "e",
        ExportProfile(image_sizes=((224, 224),)),
        show_progress=False,
        jobs=1,
    )
    versions = ExportManifest.load(out).versions
    assert versions["setting.no_slow_rewrites"].startswith("off: torch ")
    assert versions["setting.one_trace"] == "applied"
