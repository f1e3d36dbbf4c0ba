"""How the export drives ``torch.export`` and ``torch.onnx.export``: quiet, tracing without the fake-tensor cache or
stack traces, converting without its slowest rewrite rule, with the torchlib registry built once per process, and
with type promotion that runs only the operators it promotes.

Each context manager changes one setting of the torch/onnxscript exporter for its duration and restores it after;
when a release keeps the setting elsewhere, it changes nothing and the export runs as the library would run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import sys
import warnings
from collections.abc import Iterator

# onnxscript's default rewrite rules that torch.onnx's optimizer would run but that never change these graphs and cost
# time that grows with the square of their size (SlicesSplit walks the whole graph for every candidate match: 8 of the
# 9 s the optimizer spends on a 32-block encoder); left out while converting, see ``without_slow_rewrites``
SLOW_REWRITE_RULES = frozenset({"SlicesSplit"})


@contextlib.contextmanager
def without_slow_rewrites() -> Iterator[None]:
    """onnxscript's default rewrite rules without ``SLOW_REWRITE_RULES`` for the duration."""
    import onnxscript.rewriter as rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in rules if getattr(r, "name", None) not in SLOW_REWRITE_RULES)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


@contextlib.contextmanager
def without_fake_tensor_cache() -> Iterator[None]:
    """``torch.export`` without its fake-tensor dispatch cache for the duration.

    With dynamic axes a cache hit rebuilds each output's symbolic sizes and strides from the cache entry, which costs
    more than running the operator's meta function again: tracing a tiny model's five graphs takes 3.7 s without the
    cache and 5.3 s with it, and the graphs are byte-identical (the cache only memoises shape propagation)."""
    try:
        import torch._dynamo.config as dynamo_config
    except ImportError:
        yield
        return
    if not hasattr(dynamo_config, "fake_tensor_cache_enabled"):
        yield
        return
    with dynamo_config.patch(fake_tensor_cache_enabled=False):
        yield


@contextlib.contextmanager
def without_stack_traces() -> Iterator[None]:
    """Tracing that records no Python stack trace per graph node (``torch.fx.config.do_not_emit_stack_traces``), for
    the duration: nothing in an export reads them, and capturing one per node took about 30% of a graph's trace."""
    try:
        import torch.fx.config as fx_config
    except ImportError:
        yield
        return
    if not hasattr(fx_config, "do_not_emit_stack_traces"):
        yield
        return
    before = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = before


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's own progress prints and warnings; errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def torchlib_registry_once() -> Iterator[None]:
    """``torch.onnx.export`` with its torchlib registry built once per process and opset, not once per graph.

    Building it takes about half a second, a third of a tiny graph's conversion (more without
    ``_torchlib_listed_without_parsing``); the result depends only on the opset and the installed libraries. Each
    export gets its own copy of the registry's table, so the custom translations one graph registers never reach
    another."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        yield
        return
    registry_class = getattr(_registration, "ONNXRegistry", None)
    original = getattr(registry_class, "from_torchlib", None)
    if original is None or not isinstance(getattr(registry_class(), "functions", None), dict):
        yield
        return

    def from_torchlib(cls, opset_version=None):
        built = _built_registry(original, opset_version)
        registry = cls()
        registry.__dict__.update(built.__dict__)
        registry.functions = {target: list(metas) for target, metas in built.functions.items()}
        return registry

    registry_class.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        registry_class.from_torchlib = original


@functools.cache
def _built_registry(from_torchlib, opset_version):
    """The registry torch builds for ``opset_version`` (its default when None), kept for the process."""
    with _torchlib_listed_without_parsing():
        return from_torchlib() if opset_version is None else from_torchlib(opset_version=opset_version)


@contextlib.contextmanager
def _torchlib_listed_without_parsing() -> Iterator[None]:
    """onnxscript's list of torchlib functions (``get_torchlib_ops``, which torch.onnx reads to build its registry)
    with each function's domain read from its opset, for the duration.

    onnxscript translates the source of each of the ~500 functions into IR (``function_ir``) only to read that
    domain, which its translator takes from the function's opset: half a second of each process's first export,
    paid again by every graph worker. The registry comes out the same (``tests/export/test_converter_settings.py``).
    Where onnxscript lists its functions in another form, the list is onnxscript's own."""
    try:
        from onnxscript._framework_apis import torch_2_5
        from onnxscript.function_libs.torch_lib import registration
    except ImportError:
        yield
        return
    original = getattr(torch_2_5, "get_torchlib_ops", None)
    meta = getattr(torch_2_5, "_OnnxFunctionMeta", None)
    fields = ["qualified_name", "function", "domain", "name", "is_complex"]  # the form ``listed`` builds
    if original is None or not dataclasses.is_dataclass(meta) or [f.name for f in dataclasses.fields(meta)] != fields:
        yield
        return

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

    with contextlib.suppress(ImportError, AttributeError):  # import the module torch.onnx reads the list from
        from torch.onnx._internal import _lazy_import

        getattr(_lazy_import.onnxscript_apis, "get_torchlib_ops", None)
    modules = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("onnxscript._framework_apis.") and getattr(module, "get_torchlib_ops", None) is original
    ]
    for module in modules:
        module.get_torchlib_ops = listed
    try:
        yield
    finally:
        for module in modules:
            module.get_torchlib_ops = original


@contextlib.contextmanager
def type_promotion_of_promoted_nodes() -> Iterator[None]:
    """torch.onnx's type promotion pass that runs again only the operators it promotes, for the duration.

    The pass (``InsertTypePromotion``) interprets the whole traced program once more with fake tensors to know each
    operator's input types, though the trace already recorded every operator's output (``node.meta["val"]``), and it
    changes only the operators a promotion rule covers (about a third of a tiny graph's conversion). Here every other
    operator's value is the recorded one. Casts keep a promoted operator's output type, so nothing after it changes:
    the graphs are byte-identical (``tests/export/test_converter_settings.py``)."""
    try:
        from torch.onnx._internal.fx.passes import type_promotion
    except ImportError:
        yield
        return
    interpreter = getattr(type_promotion, "_TypePromotionInterpreter", None)
    rule_of = getattr(type_promotion, "get_type_promotion_rule", None)
    if interpreter is None or rule_of is None or "run_node" not in vars(interpreter):
        yield
        return
    run_node = interpreter.run_node

    def run_promoted_nodes(self, node):
        if node.op == "call_function" and "val" in node.meta and rule_of(node, self.type_promotion_table) is None:
            return node.meta["val"]
        return run_node(self, node)

    interpreter.run_node = run_promoted_nodes
    try:
        yield
    finally:
        interpreter.run_node = run_node
