"""How the export drives ``torch.export`` and ``torch.onnx.export``: quiet, tracing without the fake-tensor cache or
stack traces, in one trace (``luvc.export.decomposed_trace``), converting without its slowest rewrite rule, with the
torchlib registry built once per process, and with type promotion that runs only the operators it promotes.

``SETTINGS`` lists them, each with the private names it needs (``luvc.export.torch_internals``) and what it buys;
``export_settings(stage)`` enters those of a stage (``graph``: around one graph's export, ``trace``, ``convert``) in
one stack. A setting whose names this torch or onnxscript lacks is left out, and ``report_settings`` says so in one
line per setting with what it costs, once per process; the manifest records which applied (``settings_applied``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

from luvc.errors import warn
from luvc.export.decomposed_trace import converting_decomposed, one_trace_available, onnx_registry
from luvc.export.torch_internals import (
    DECOMPOSE,
    DEFAULT_REGISTRY,
    FAKE_TENSOR_CACHE,
    FROM_TORCHLIB,
    FUNCTION_META,
    LAZY_APIS,
    ONE_TRACE,
    PROMOTION_RULE,
    REGISTRY,
    REWRITE_RULES,
    STACK_TRACES,
    TORCHLIB_OPS,
    TYPE_PROMOTION,
    current,
    internal,
    missing,
    module_of,
    replaced,
)

# onnxscript's default rewrite rules that torch.onnx's optimizer would run but that never change these graphs and cost
# time that grows with the square of their size (SlicesSplit walks the whole graph for every candidate match: 8 of the
# 9 s the optimizer spends on a 32-block encoder); left out while converting, see ``without_slow_rewrites``
SLOW_REWRITE_RULES = frozenset({"SlicesSplit"})


@contextlib.contextmanager
def without_slow_rewrites() -> Iterator[None]:
    """onnxscript's default rewrite rules without ``SLOW_REWRITE_RULES`` for the duration."""
    fast = tuple(rule for rule in current(REWRITE_RULES) if getattr(rule, "name", None) not in SLOW_REWRITE_RULES)
    with replaced(module_of(REWRITE_RULES), "_DEFAULT_REWRITE_RULES", fast):
        yield


@contextlib.contextmanager
def without_fake_tensor_cache() -> Iterator[None]:
    """``torch.export`` without its fake-tensor dispatch cache for the duration.

    With dynamic axes a cache hit rebuilds each output's symbolic sizes and strides from the cache entry, which costs
    more than running the operator's meta function again: tracing a tiny model's five graphs takes 3.7 s without the
    cache and 5.3 s with it, and the graphs are byte-identical (the cache only memoises shape propagation)."""
    with module_of(FAKE_TENSOR_CACHE).patch(fake_tensor_cache_enabled=False):
        yield


@contextlib.contextmanager
def without_stack_traces() -> Iterator[None]:
    """Tracing that records no Python stack trace per graph node (``torch.fx.config.do_not_emit_stack_traces``), for
    the duration: nothing in an export reads them, and capturing one per node took about 30% of a graph's trace."""
    with replaced(module_of(STACK_TRACES), "do_not_emit_stack_traces", True):
        yield


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's own progress prints and warnings (its loggers, each of which torch may have given a
    level of its own, e.g. "torchvision is not installed. Skipping torchvision::nms" four times an export); errors
    still raise."""
    names = ["torch.onnx", *(name for name in logging.root.manager.loggerDict if name.startswith("torch.onnx."))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def torchlib_registry_once() -> Iterator[None]:
    """``torch.onnx.export`` with its torchlib registry built once per process and opset, not once per graph.

    Building it takes about half a second, a third of a tiny graph's conversion (more without
    ``_torchlib_listed_without_parsing``); the result depends on the opset, the installed libraries and the
    operators torch has registered at the first build (an operator library imported later, such as torch.ao's
    ``quantized_decomposed``, which no exported graph holds, is not added). Each export gets its own copy of the
    registry's table, so the custom translations one graph registers never reach another."""
    registry_class = internal(REGISTRY)
    original = current(FROM_TORCHLIB)

    def from_torchlib(cls, opset_version=None):
        built = _built_registry(original, opset_version)
        registry = cls()
        registry.__dict__.update(built.__dict__)
        registry.functions = {target: list(metas) for target, metas in built.functions.items()}
        return registry

    with replaced(registry_class, "from_torchlib", classmethod(from_torchlib)):
        yield


@functools.cache
def _built_registry(from_torchlib, opset_version):
    """The registry torch builds for ``opset_version`` (its default when None), kept for the process."""
    listing = _torchlib_listed_without_parsing() if not missing(SETTING_NEEDS["torchlib_listed"]) else None
    with listing or contextlib.nullcontext():
        return from_torchlib() if opset_version is None else from_torchlib(opset_version=opset_version)


@contextlib.contextmanager
def _torchlib_listed_without_parsing() -> Iterator[None]:
    """onnxscript's list of torchlib functions (``get_torchlib_ops``, which torch.onnx reads to build its registry)
    with each function's domain read from its opset, for the duration.

    onnxscript translates the source of each of the ~500 functions into IR (``function_ir``) only to read that
    domain, which its translator takes from the function's opset: half a second of each process's first export,
    paid again by every graph worker. The registry comes out the same (``tests/export/test_converter_settings.py``)."""
    original, meta = current(TORCHLIB_OPS), internal(FUNCTION_META)
    registration = module_of(DEFAULT_REGISTRY)

    def listed():
        from onnxscript.function_libs.torch_lib import ops  # noqa: F401 (importing it registers the functions)

        metas = []
        for qualified_name, functions in registration.default_registry.items():
            if qualified_name.startswith("internal::"):  # as onnxscript: its own helpers are not aten operators
                continue
            for is_complex, overloads in ((False, functions.overloads), (True, functions.complex)):
                for function in overloads:
                    metas.append(meta(qualified_name, function, function.opset.domain, function.name, is_complex))
        return metas

    getattr(internal(LAZY_APIS), "get_torchlib_ops", None)  # imports the module torch.onnx reads the list from
    modules = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("onnxscript._framework_apis.") and getattr(module, "get_torchlib_ops", None) is original
    ]
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(replaced(module, "get_torchlib_ops", listed))
        yield


@contextlib.contextmanager
def type_promotion_of_promoted_nodes() -> Iterator[None]:
    """torch.onnx's type promotion pass that runs again only the operators it promotes, for the duration.

    The pass (``InsertTypePromotion``) interprets the whole traced program once more with fake tensors to know each
    operator's input types, though the trace already recorded every operator's output (``node.meta["val"]``), and it
    changes only the operators a promotion rule covers (about a third of a tiny graph's conversion). Here every other
    operator's value is the recorded one. Casts keep a promoted operator's output type, so nothing after it changes:
    the graphs are byte-identical (``tests/export/test_converter_settings.py``)."""
    interpreter, rule_of = internal(TYPE_PROMOTION), internal(PROMOTION_RULE)
    run_node = interpreter.run_node

    def run_promoted_nodes(self, node):
        if node.op == "call_function" and "val" in node.meta and rule_of(node, self.type_promotion_table) is None:
            return node.meta["val"]
        return run_node(self, node)

    with replaced(interpreter, "run_node", run_promoted_nodes):
        yield


@dataclasses.dataclass(frozen=True)
class ExportSetting:
    """One setting of the exporter: when it is entered (``stage``: ``graph``, ``trace``, ``convert``; ``None``: used
    where its code is, not entered by the stack), the private names it needs, what it buys (said when it cannot
    apply), and the context manager that applies it."""

    name: str
    stage: str | None
    needs: tuple[str, ...]
    buys: str
    enter: Callable[[], contextlib.AbstractContextManager] | None = None

    def why_not(self) -> str | None:
        """Why this setting cannot apply here (the names missing, with the releases), or None when it can."""
        absent = missing(self.needs)
        if not absent:
            return None
        return f"{_releases()} {'lack' if len(absent) > 1 else 'lacks'} {', '.join(absent)}"


SETTINGS = (
    ExportSetting("quiet", "graph", (), "the exporter's own prints and warnings off", quiet_exporter),
    ExportSetting(
        "no_stack_traces",
        "graph",
        (STACK_TRACES,),
        "tracing about 30% faster (no stack trace per node)",
        without_stack_traces,
    ),
    ExportSetting(
        "registry_once",
        "graph",
        (REGISTRY, FROM_TORCHLIB),
        "the torchlib registry built once per process, not per graph (about 0.5 s per graph)",
        torchlib_registry_once,
    ),
    ExportSetting(
        "torchlib_listed",
        None,
        (TORCHLIB_OPS, FUNCTION_META, DEFAULT_REGISTRY, LAZY_APIS),
        "the torchlib list without translating ~500 functions' source (about 0.4 s per process and graph worker)",
    ),
    ExportSetting(
        "no_fake_tensor_cache",
        "trace",
        (FAKE_TENSOR_CACHE,),
        "tracing about 1.4x faster (no cache rebuilding symbolic sizes)",
        without_fake_tensor_cache,
    ),
    ExportSetting(
        "one_trace",
        None,
        ONE_TRACE,
        "one trace per graph instead of torch's two (nearly half of tracing and converting a graph)",
    ),
    ExportSetting(
        "converting_decomposed",
        "convert",
        (DECOMPOSE,),
        "torch.onnx's own decomposition skipped for a graph traced once (it would trace it again)",
        converting_decomposed,
    ),
    ExportSetting(
        "no_slow_rewrites",
        "convert",
        (REWRITE_RULES,),
        "converting without onnxscript's SlicesSplit rule (8 of the 9 s the optimizer spends on a 32-block encoder)",
        without_slow_rewrites,
    ),
    ExportSetting(
        "promoted_nodes_only",
        "convert",
        (TYPE_PROMOTION, PROMOTION_RULE),
        "type promotion runs only the operators it promotes (about a third of a graph's conversion)",
        type_promotion_of_promoted_nodes,
    ),
)
SETTING_NEEDS = {setting.name: setting.needs for setting in SETTINGS}


@contextlib.contextmanager
def export_settings(stage: str) -> Iterator[None]:
    """Enter every setting of ``stage`` that applies here, in ``SETTINGS``' order (one stack); the others are left
    out, said once per process (``report_settings``)."""
    report_settings()
    with contextlib.ExitStack() as stack:
        for setting in SETTINGS:
            if setting.stage == stage and setting.enter is not None and setting.why_not() is None:
                stack.enter_context(setting.enter())
        yield


_reported = False


def report_settings() -> None:
    """Say, once per process, each setting that cannot apply here: its name, why, and what the export loses. The
    exporter calls it before forking its graph workers, which inherit that it was said."""
    global _reported
    if _reported:
        return
    _reported = True
    for setting in SETTINGS:
        reason = setting.why_not()
        if reason is not None:
            warn(f"export setting {setting.name} is off ({reason}): exports go without {setting.buys}.")


def prepare_registry(opset: int) -> None:
    """Build the torchlib registry every trace and conversion at ``opset`` starts from, now, once per process
    (``torchlib_registry_once``): processes forked after it inherit it, so graph workers begin their first graph at
    once, and in a process that exports again (``eval --sweep``, the Python API) no later export builds it."""
    if one_trace_available():
        with quiet_exporter(), torchlib_registry_once():
            onnx_registry(opset, {})


def settings_applied() -> dict[str, str]:
    """Each setting's state here, for the manifest: ``applied``, or ``off: <why>``."""
    return {setting.name: "applied" if (why := setting.why_not()) is None else f"off: {why}" for setting in SETTINGS}


@functools.cache
def _releases() -> str:
    """The installed torch and onnxscript releases, as a reason names them."""
    import onnxscript
    import torch

    return f"torch {torch.__version__} / onnxscript {onnxscript.__version__}"
