"""One trace from a module to the program ``torch.onnx.export`` translates, instead of two.

``torch.onnx.export`` of an ``ExportedProgram`` first decomposes it into the ATen operators torchlib implements, and
``ExportedProgram.run_decompositions`` does that by tracing the whole program again (functionalised, with fake
tensors and symbolic shapes) after ``torch.export``'s own trace: nearly half of a tiny graph's tracing and
conversion. ``trace_decomposed`` traces the module once, straight to that decomposed form: ``torch.export``'s
ATen-level trace (``pre_dispatch=False``) with the decomposition table ``torch.onnx`` would apply for the same
registry, and marks the program so that ``converting_decomposed`` lets ``torch.onnx.export`` skip its own pass. The
ONNX graphs are the same operators on the same tensors: byte-identical for most graphs, otherwise renamed values
(``tests/export/test_decomposed_trace.py``).

The one-trace path rests on torch internals (``torch.export._trace``, ``torch.onnx._internal``). Where a release
lacks one, or where it cannot trace a module that ``torch.export`` can, the export takes torch's own two traces (the
reason is logged at debug level on ``luvc.export.decomposed_trace``). torch.onnx decomposes with
``backed_size_oblivious`` on; the one trace keeps ``torch.export``'s default, under which every graph checked came out
the same (with it on, tracing failed on guards over the length of the ``attention_window`` input).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from luvc.export.torch_internals import DECOMPOSE, ONE_TRACE, internal, missing, module_of, replaced

LOG = logging.getLogger(__name__)
_decomposed_programs: weakref.WeakSet = weakref.WeakSet()  # traced here: torch.onnx's decomposition would redo it


@dataclasses.dataclass(frozen=True)
class _TorchInternals:
    """The torch functions the one-trace path calls, found once per process."""

    export: Callable  # torch.export._trace._export
    trace_module: Any  # torch.export._trace, whose _export_to_aten_ir ``_export`` looks up when it runs
    split_table: Callable  # (table) -> (composite-implicit decompositions, Python decompositions)
    override_composite: Callable  # context manager: composite-implicit ops decomposed as the table says
    fx_passes: Any  # torch.onnx's fx passes module, whose decompose_with_registry torch.onnx.export calls
    implemented: Callable  # (registry) -> the ATen overloads the registry translates
    onnx_table: Callable  # (implemented overloads) -> torch.onnx's decomposition table
    registry_class: type


@functools.cache
def _internals() -> _TorchInternals | None:
    """The internals (``luvc.export.torch_internals``), or None where this torch names or shapes them otherwise."""
    if missing(ONE_TRACE + (DECOMPOSE,)):
        return None
    return _TorchInternals(
        export=internal(ONE_TRACE[0]),
        trace_module=module_of(ONE_TRACE[1]),
        split_table=internal(ONE_TRACE[2]),
        override_composite=internal(ONE_TRACE[3]),
        fx_passes=module_of(DECOMPOSE),
        implemented=internal(ONE_TRACE[4]),
        onnx_table=internal(ONE_TRACE[5]),
        registry_class=internal(ONE_TRACE[6]),
    )


def one_trace_available() -> bool:
    """Whether this process's torch has what the one trace needs (``luvc.export.torch_internals``)."""
    return _internals() is not None


def onnx_registry(opset: int, translations: dict) -> Any:
    """The registry ``torch.onnx.export(..., opset_version=opset, custom_translation_table=translations)`` builds
    (torch.onnx registers torchlib at its own opset when asked for an older one); only where the one trace is
    available."""
    internals = _internals()
    if internals is None:
        raise RuntimeError("onnx_registry needs the torch internals of the one trace (one_trace_available())")
    registry = internals.registry_class().from_torchlib(opset_version=max(opset, internal(ONE_TRACE[7])))
    for target, function in translations.items():
        registry.register_op(target, function, is_complex=False)
    return registry


def trace_decomposed(
    module: torch.nn.Module, args: tuple, dynamic_shapes: Any, opset: int, translations: dict
) -> torch.export.ExportedProgram:
    """``module`` traced once into the program that ``torch.onnx.export(opset_version=opset,
    custom_translation_table=translations)`` would translate after decomposing ``torch.export.export``'s program;
    that program itself where the one trace is not available or fails."""
    internals = _internals()
    if internals is not None:
        try:
            program = _one_trace(internals, module, args, dynamic_shapes, onnx_registry(opset, translations))
        except Exception as error:  # torch internals: where they cannot trace it, torch.export's own path decides
            LOG.debug("one trace failed (%s: %s); tracing with torch.export", type(error).__name__, error)
        else:
            _decomposed_programs.add(program)
            return program
    return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)


def _one_trace(
    internals: _TorchInternals, module: torch.nn.Module, args: tuple, dynamic_shapes: Any, registry: Any
) -> torch.export.ExportedProgram:
    table = internals.onnx_table(set(internals.implemented(registry)))
    composite, python_table = internals.split_table(table)
    trace_module = internals.trace_module
    to_aten = functools.partial(trace_module._export_to_aten_ir, decomp_table=python_table)
    with replaced(trace_module, "_export_to_aten_ir", to_aten), internals.override_composite(composite):
        return internals.export(module, args, dynamic_shapes=dynamic_shapes, strict=False, pre_dispatch=False)


def is_decomposed(program: torch.export.ExportedProgram) -> bool:
    """Whether ``trace_decomposed`` traced ``program`` in one pass (torch.onnx's decomposition is then skipped)."""
    return program in _decomposed_programs


@contextlib.contextmanager
def converting_decomposed() -> Iterator[None]:
    """``torch.onnx.export`` that translates a program from ``trace_decomposed`` as it is, for the duration; any other
    program is decomposed as torch.onnx does it."""
    internals = _internals()
    if internals is None:
        yield
        return
    passes = internals.fx_passes
    decompose = passes.decompose_with_registry

    def decompose_unless_traced(exported_program, registry):
        return exported_program if is_decomposed(exported_program) else decompose(exported_program, registry)

    with replaced(passes, "decompose_with_registry", decompose_unless_traced):
        yield
