"""Every private torch and onnxscript name the exporter reads, calls or replaces, in one table, found once per process.

The exporter's speed rests on these names (``luvc.export.converter_settings`` and ``luvc.export.decomposed_trace``):
a release that renames or reshapes one switches a setting off, and ``converter_settings.report_settings`` says so in
one line per setting, with what it costs. docs/releases.md lists each name, what it buys and the releases checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Internal:
    """A private name: ``path`` (attributes, dotted) in ``module``; how the exporter uses it (``replaced`` for the
    duration of a setting, a config ``flag`` it sets, or ``called``/``read``); ``check``: what else the exporter relies
    on, as a function of the object (the name alone may survive a change of meaning)."""

    module: str
    path: str
    use: str
    check: Callable[[Any], bool] | None = None

    @property
    def name(self) -> str:
        return f"{self.module}.{self.path}"


def _takes(*names: str) -> Callable[[Any], bool]:
    """A check: the callable takes parameters ``names``."""

    def check(function: Any) -> bool:
        return set(names) <= set(inspect.signature(function).parameters)

    return check


def _fields(*names: str) -> Callable[[Any], bool]:
    """A check: a dataclass with exactly these fields, in this order (onnxscript's metas are built by position)."""

    def check(cls: Any) -> bool:
        return dataclasses.is_dataclass(cls) and [field.name for field in dataclasses.fields(cls)] == list(names)

    return check


def _own_method(name: str) -> Callable[[Any], bool]:
    def check(cls: Any) -> bool:
        return name in vars(cls)

    return check


def _registry_of_lists(cls: Any) -> bool:
    """torch.onnx's ``ONNXRegistry`` keeps its functions in a dict of lists (what a copy per export takes)."""
    return isinstance(getattr(cls(), "functions", None), dict)


_REGISTRATION = "torch.onnx._internal.exporter._registration"
_TYPE_PROMOTION = "torch.onnx._internal.fx.passes.type_promotion"
_TORCH_2_5 = "onnxscript._framework_apis.torch_2_5"
INTERNALS = (
    Internal("torch.fx.config", "do_not_emit_stack_traces", "flag"),
    Internal("torch._dynamo.config", "fake_tensor_cache_enabled", "flag"),
    Internal(_REGISTRATION, "ONNXRegistry", "called", _registry_of_lists),
    Internal(_REGISTRATION, "ONNXRegistry.from_torchlib", "replaced"),
    Internal(_TORCH_2_5, "get_torchlib_ops", "replaced"),
    Internal(
        _TORCH_2_5, "_OnnxFunctionMeta", "called", _fields("qualified_name", "function", "domain", "name", "is_complex")
    ),
    Internal("onnxscript.function_libs.torch_lib.registration", "default_registry", "read"),
    Internal("torch.onnx._internal._lazy_import", "onnxscript_apis", "read"),
    Internal("onnxscript.rewriter", "_DEFAULT_REWRITE_RULES", "replaced"),
    Internal(_TYPE_PROMOTION, "_TypePromotionInterpreter", "replaced", _own_method("run_node")),
    Internal(_TYPE_PROMOTION, "get_type_promotion_rule", "called"),
    Internal("torch.export._trace", "_export", "called", _takes("pre_dispatch", "strict", "dynamic_shapes")),
    Internal("torch.export._trace", "_export_to_aten_ir", "replaced", _takes("decomp_table", "pre_dispatch")),
    Internal("torch.export.exported_program", "_split_decomp_table_to_cia_and_python_decomp", "called"),
    Internal("torch.export.exported_program", "_override_composite_implicit_decomp", "called"),
    Internal(
        "torch.onnx._internal.exporter._fx_passes",
        "decompose_with_registry",
        "replaced",
        _takes("exported_program", "registry"),
    ),
    Internal("torch.onnx._internal.exporter._decomp", "get_onnx_implemented_overloads", "called"),
    Internal("torch.onnx._internal.exporter._decomp", "create_onnx_friendly_decomposition_table", "called"),
    Internal("torch.onnx._internal.exporter._constants", "TORCHLIB_OPSET", "read"),
)
BY_NAME = {internal.name: internal for internal in INTERNALS}

# the names of ``INTERNALS`` the converter settings and the one trace use (luvc.export.converter_settings)
STACK_TRACES = "torch.fx.config.do_not_emit_stack_traces"
FAKE_TENSOR_CACHE = "torch._dynamo.config.fake_tensor_cache_enabled"
REGISTRY = "torch.onnx._internal.exporter._registration.ONNXRegistry"
FROM_TORCHLIB = "torch.onnx._internal.exporter._registration.ONNXRegistry.from_torchlib"
TORCHLIB_OPS = "onnxscript._framework_apis.torch_2_5.get_torchlib_ops"
FUNCTION_META = "onnxscript._framework_apis.torch_2_5._OnnxFunctionMeta"
DEFAULT_REGISTRY = "onnxscript.function_libs.torch_lib.registration.default_registry"
LAZY_APIS = "torch.onnx._internal._lazy_import.onnxscript_apis"
REWRITE_RULES = "onnxscript.rewriter._DEFAULT_REWRITE_RULES"
TYPE_PROMOTION = "torch.onnx._internal.fx.passes.type_promotion._TypePromotionInterpreter"
PROMOTION_RULE = "torch.onnx._internal.fx.passes.type_promotion.get_type_promotion_rule"
ONE_TRACE = (
    "torch.export._trace._export",
    "torch.export._trace._export_to_aten_ir",
    "torch.export.exported_program._split_decomp_table_to_cia_and_python_decomp",
    "torch.export.exported_program._override_composite_implicit_decomp",
    "torch.onnx._internal.exporter._decomp.get_onnx_implemented_overloads",
    "torch.onnx._internal.exporter._decomp.create_onnx_friendly_decomposition_table",
    REGISTRY,
    "torch.onnx._internal.exporter._constants.TORCHLIB_OPSET",
)
DECOMPOSE = "torch.onnx._internal.exporter._fx_passes.decompose_with_registry"


@functools.cache
def found() -> dict[str, Any]:
    """Each internal of ``INTERNALS`` present (and passing its check) in this process, by name: what it is now (a
    replaced one: the library's own, found before any setting replaced it)."""
    present = {}
    for internal in INTERNALS:
        try:
            value: Any = importlib.import_module(internal.module)
            for part in internal.path.split("."):
                value = getattr(value, part)
            if internal.check is not None and not internal.check(value):
                continue
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
        present[internal.name] = value
    return present


def missing(names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` this process's torch and onnxscript do not have (or have in another form)."""
    present = found()
    return [name for name in names if name not in present]


def internal(name: str) -> Any:
    """The object of internal ``name`` as found (which must be present: a setting is entered only when its internals
    are). A setting that replaces one reads it with ``current`` instead, to restore what it replaced."""
    return found()[name]


def current(name: str) -> Any:
    """What internal ``name`` is now (another setting, or a test, may have replaced it since it was found)."""
    value: Any = module_of(name)
    for part in BY_NAME[name].path.split("."):
        value = getattr(value, part)
    return value


def module_of(name: str) -> Any:
    """The module internal ``name`` lives in (to replace an attribute of it)."""
    return importlib.import_module(BY_NAME[name].module)


@contextlib.contextmanager
def replaced(owner: Any, attribute: str, value: Any) -> Iterator[Any]:
    """``owner.attribute`` set to ``value`` for the duration, and what it was (returned) put back after."""
    before = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield before
    finally:
        setattr(owner, attribute, before)
