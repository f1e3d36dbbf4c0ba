"""The LUVC plugin nodes: one ``luvc::OrthoMerge`` per OIM step and one ``luvc::SpectrumPrune`` per SPU layer.

With ``--plugin-nodes`` the exporter traces each OIM and SPU unit as one custom op whose ONNX translation is one
node in the ``luvc`` domain, with a fixed contract that the TensorRT plugins in ``plugins/`` implement (same field
names, same meaning). The PyTorch implementations below are the reference: they run the model's own functions
(``merge_units``, ``spu_prune``), so a traced plugin graph computes what the native-op graph computes.

``OrthoMerge``: ``y = weight_a * x[index_a] + weight_b * x[index_b]`` along ``axis`` of ``x`` (any rank), with
``index_a, index_b`` (INTS) and ``weight_a, weight_b`` (FLOATS) of length M; ``y`` is ``x`` with M entries on
``axis``. The plugin computes in float32 and stores in ``x``'s type; the reference (like the native graph) computes
in ``x``'s type, so fp16 results may differ by a float16 rounding.

``SpectrumPrune``: inputs ``hidden (B, S, D)``, ``cos (B, S, R)``, ``sin (B, S, R)`` (float32 or float16) and
``visual_ids (B, N)`` (int64: original index of each visual token still in the sequence). Attributes: the visual
spans ``span_starts``, ``span_counts`` (INTS, one per image, ascending, ``sum(span_counts) == N``), ``budgets``
(INTS, tokens each image keeps, ``0 <= budget <= count``), ``variant`` (STRING: ``spectral-residual`` or
``channel-spectrum``), ``rho`` (FLOAT) and ``low_frequencies`` (INTS, one per image: the low frequencies its score
keeps, ``luvc.compress.spu.low_frequency_count``). Each image's tokens get float32 scores (``luvc.compress.spu``), the
``budget`` highest are kept (ties: lower index first) in ascending order, and the hidden states and rotary
tables are gathered with one index. Outputs: ``hidden``, ``cos``, ``sin`` with ``S - sum(count - budget)``
positions, and ``visual_ids (B, sum(budgets))``. Every node also carries ``plugin_version`` and
``plugin_namespace``, which TensorRT's ONNX parser uses to find the creator.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import values
from torch import nn

from luvc.compress.oim import OIMStep, merge_units
from luvc.compress.scorers import spu_scorer
from luvc.compress.spu import low_frequency_count
from luvc.export.naming import PLUGIN_DOMAIN, PLUGIN_OPS, PLUGIN_VERSION
from luvc.models.scope import Scope
from luvc.models.spans import Span, pruned_spans, spu_prune

PLUGIN_SPU_VARIANTS = ("spectral-residual", "channel-spectrum")
_FLOATS = ("tensor(float)", "tensor(float16)")


def _attribute(name: str, kind: OpSchema.AttrType, description: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, kind, description, required=True)


def _plugin_attributes_schema() -> list[OpSchema.Attribute]:
    return [
        _attribute("plugin_version", OpSchema.AttrType.STRING, "plugin creator version (TensorRT's ONNX parser)"),
        _attribute("plugin_namespace", OpSchema.AttrType.STRING, "plugin creator namespace (TensorRT's ONNX parser)"),
    ]


SCHEMAS = (
    OpSchema(
        PLUGIN_OPS["oim"],
        PLUGIN_DOMAIN,
        1,
        "One OIM merge step (luvc.export.plugin_ops).",
        inputs=[OpSchema.FormalParameter("x", "T")],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", _FLOATS, "float32 or float16")],
        attributes=[
            _attribute("index_a", OpSchema.AttrType.INTS, "first unit of each merged unit"),
            _attribute("index_b", OpSchema.AttrType.INTS, "second unit (equal to index_a for a carried unit)"),
            _attribute("weight_a", OpSchema.AttrType.FLOATS, "weight of the first unit"),
            _attribute("weight_b", OpSchema.AttrType.FLOATS, "weight of the second unit"),
            _attribute("axis", OpSchema.AttrType.INT, "the axis of x that indexes merge units"),
            *_plugin_attributes_schema(),
        ],
    ),
    OpSchema(
        PLUGIN_OPS["spu"],
        PLUGIN_DOMAIN,
        1,
        "One SPU pruning step (luvc.export.plugin_ops).",
        inputs=[
            OpSchema.FormalParameter("hidden", "T"),
            OpSchema.FormalParameter("cos", "T"),
            OpSchema.FormalParameter("sin", "T"),
            OpSchema.FormalParameter("visual_ids", "I"),
        ],
        outputs=[
            OpSchema.FormalParameter("hidden_kept", "T"),
            OpSchema.FormalParameter("cos_kept", "T"),
            OpSchema.FormalParameter("sin_kept", "T"),
            OpSchema.FormalParameter("visual_ids_kept", "I"),
        ],
        type_constraints=[("T", _FLOATS, "float32 or float16"), ("I", ("tensor(int64)",), "int64")],
        attributes=[
            _attribute("span_starts", OpSchema.AttrType.INTS, "first sequence index of each image's visual tokens"),
            _attribute("span_counts", OpSchema.AttrType.INTS, "visual tokens of each image"),
            _attribute("budgets", OpSchema.AttrType.INTS, "visual tokens each image keeps"),
            _attribute("variant", OpSchema.AttrType.STRING, "spectral-residual or channel-spectrum"),
            _attribute("rho", OpSchema.AttrType.FLOAT, "low-pass fraction of the scores"),
            _attribute("low_frequencies", OpSchema.AttrType.INTS, "low frequencies each image's score keeps"),
            *_plugin_attributes_schema(),
        ],
    ),
)
for _schema in SCHEMAS:
    if not onnx.defs.has(_schema.name, _schema.domain):
        onnx.defs.register_schema(_schema)
_LUVC = values.Opset(PLUGIN_DOMAIN, 1)


@torch.library.custom_op("luvc::ortho_merge", mutates_args=())
def ortho_merge(
    x: torch.Tensor,
    index_a: Sequence[int],
    index_b: Sequence[int],
    weight_a: Sequence[float],
    weight_b: Sequence[float],
    axis: int,
) -> torch.Tensor:
    """One OIM step on ``x`` along ``axis`` (the reference of the ``OrthoMerge`` plugin)."""
    step = OIMStep(
        axis="W",  # unused by merge_units: the indices say everything
        index_a=torch.tensor(index_a, dtype=torch.long),
        index_b=torch.tensor(index_b, dtype=torch.long),
        weight_a=torch.tensor(weight_a, dtype=torch.float32),
        weight_b=torch.tensor(weight_b, dtype=torch.float32),
        grids=(),
        sizes=torch.empty(0),
    )
    return merge_units(x, step, axis)


@ortho_merge.register_fake
def _(x, index_a, index_b, weight_a, weight_b, axis):
    shape = list(x.shape)
    shape[axis] = len(index_a)
    return x.new_empty(shape)


@torch.library.custom_op("luvc::spectrum_prune", mutates_args=())
def spectrum_prune(
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    visual_ids: torch.Tensor,
    span_starts: Sequence[int],
    span_counts: Sequence[int],
    budgets: Sequence[int],
    variant: str,
    rho: float,
    low_frequencies: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SPU unit (the reference of the ``SpectrumPrune`` plugin; ``low_frequencies`` follow from ``rho``)."""
    spans = tuple(zip(span_starts, span_counts))
    hidden, cos, sin, visual_ids, _ = spu_prune(hidden, cos, sin, visual_ids, spans, budgets, spu_scorer(variant, rho))
    return hidden, cos, sin, visual_ids.clone()  # a custom op's outputs may not alias its inputs (an empty view)


@spectrum_prune.register_fake
def _(hidden, cos, sin, visual_ids, span_starts, span_counts, budgets, variant, rho, low_frequencies):
    removed = sum(span_counts) - sum(budgets)
    batch, length = hidden.shape[:2]
    return (
        hidden.new_empty((batch, length - removed, *hidden.shape[2:])),
        cos.new_empty((batch, length - removed, *cos.shape[2:])),
        sin.new_empty((batch, length - removed, *sin.shape[2:])),
        visual_ids.new_empty((batch, sum(budgets))),
    )


def _plugin_attributes() -> dict:
    return {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_DOMAIN}


def _ortho_merge_node(x, index_a, index_b, weight_a, weight_b, axis):
    return _LUVC.OrthoMerge(
        x,
        index_a=list(index_a),
        index_b=list(index_b),
        weight_a=[float(w) for w in weight_a],
        weight_b=[float(w) for w in weight_b],
        axis=int(axis),
        **_plugin_attributes(),
    )


def _spectrum_prune_node(
    hidden, cos, sin, visual_ids, span_starts, span_counts, budgets, variant, rho, low_frequencies
):
    return _LUVC.SpectrumPrune(
        hidden,
        cos,
        sin,
        visual_ids,
        span_starts=list(span_starts),
        span_counts=list(span_counts),
        budgets=list(budgets),
        variant=str(variant),
        rho=float(rho),
        low_frequencies=list(low_frequencies),
        **_plugin_attributes(),
    )


def plugin_translations() -> dict:
    """The ``custom_translation_table`` entries of ``torch.onnx.export`` for the plugin ops."""
    return {
        torch.ops.luvc.ortho_merge.default: _ortho_merge_node,
        torch.ops.luvc.spectrum_prune.default: _spectrum_prune_node,
    }


def _ortho_merge_unit(units: torch.Tensor, step: OIMStep, dim: int = 0) -> torch.Tensor:
    """``merge_units`` as one ``luvc::ortho_merge`` call."""
    return ortho_merge(
        units,
        step.index_a.tolist(),
        step.index_b.tolist(),
        step.weight_a.tolist(),
        step.weight_b.tolist(),
        dim % units.dim(),
    )


def _spectrum_prune_unit(
    hidden,
    cos,
    sin,
    visual_ids,
    spans: Sequence[Span],
    budgets: Sequence[int],
    scorer,
    score_input=None,
    shift=None,
    *,
    variant: str,
    rho: float,
):
    """``spu_prune`` as one ``luvc::spectrum_prune`` call (the op scores ``hidden`` by ``variant`` and ``rho``)."""
    if score_input is not None and score_input is not hidden:
        raise ValueError("the SpectrumPrune plugin scores the residual stream; export spu_input=normed without it")
    if shift is not None:
        raise ValueError("the SpectrumPrune plugin takes the spans at the template's positions; trace no shift")
    starts, counts = [start for start, _ in spans], [count for _, count in spans]
    low = [low_frequency_count(variant, rho, count, hidden.shape[-1]) for count in counts]
    hidden, cos, sin, visual_ids = spectrum_prune(
        hidden, cos, sin, visual_ids, starts, counts, list(budgets), variant, rho, low
    )
    return hidden, cos, sin, visual_ids, pruned_spans(spans, budgets)


@dataclasses.dataclass(frozen=True)
class SpectrumPruneUnit:
    """An SPU scope's function that calls the SpectrumPrune plugin op with the applied SPU ``variant`` and ``rho``."""

    variant: str
    rho: float
    takes_visual_ids: ClassVar[bool] = True  # an input of the op: the decoder builds them before the unit's scope

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _spectrum_prune_unit(*args, variant=self.variant, rho=self.rho, **kwargs)


@contextlib.contextmanager
def plugin_units(model: nn.Module, variant: str, rho: float) -> Iterator[None]:
    """Within the block, every OIM and SPU scope of ``model`` calls the plugin op instead of its native ops
    (``variant`` and ``rho``: the applied SPU config)."""
    if variant not in PLUGIN_SPU_VARIANTS:
        variant = PLUGIN_SPU_VARIANTS[0]  # no SPU scope runs when SPU is off
    replacements: dict[Callable[..., Any], Callable[..., Any]] = {
        merge_units: _ortho_merge_unit,
        spu_prune: SpectrumPruneUnit(variant, rho),
    }
    swapped = [(scope, scope.fn) for scope in model.modules() if isinstance(scope, Scope) and scope.fn in replacements]
    for scope, fn in swapped:
        scope.fn = replacements[fn]
    try:
        yield
    finally:
        for scope, fn in swapped:
            scope.fn = fn
