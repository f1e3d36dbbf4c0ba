"""One graph of an export: ``OnnxFromGraphSpec`` traces a ``GraphSpec`` with ``torch.export`` (non-strict, dynamic
axes as declared, the exporter's settings entered per stage) and converts it with the ONNX exporter; node names and
dimension names are then made readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import onnx
import onnx_ir as ir
import torch

from luvc.compress.config import ResolvedLUVCConfig
from luvc.errors import critical
from luvc.export.converter_settings import export_settings
from luvc.export.decomposed_trace import trace_decomposed
from luvc.export.graphs import GraphSpec
from luvc.export.inspect import root_of
from luvc.export.kv_update import mark_opset, translation_table
from luvc.export.naming import name_nodes, rename_dims
from luvc.export.plugin_ops import plugin_translations, plugin_units
from luvc.export.profile import DEFAULT_KV_UPDATE
from luvc.export.stage_times import StageTimes
from luvc.export.weights import SharedWeights, StableMemory
from luvc.loaders import BaseLoader
from luvc.models.gated_delta import traced_by_squaring

INLINE_BYTES = 1 << 20  # while exporting, tensors below this are loaded (constants passes and lint read), not weights


@dataclasses.dataclass
class OnnxFromGraphSpec(BaseLoader[onnx.ModelProto]):
    """Loader: ``GraphSpec`` -> ``onnx.ModelProto`` with readable node and dimension names.

    With ``weights`` (the export's shared file), every tensor of at least ``INLINE_BYTES`` is written there as the
    graph leaves the exporter and the model references it: a graph's weights are never held as protobuf bytes, nor
    written twice. Smaller tensors stay in the model, so passes and lint read constants. Without it every tensor is
    in the model."""

    spec: GraphSpec
    opset: int
    on_step: Callable[[], None] | None = None
    kv_update: str | None = None
    weights: SharedWeights | None = None
    stable: StableMemory | None = None  # the traced module's parameters, for ``weights`` (SharedWeights.stream)
    plugin_config: ResolvedLUVCConfig | None = None
    times: StageTimes = dataclasses.field(default_factory=StageTimes)

    def _step(self) -> None:
        if self.on_step is not None:
            self.on_step()

    def call_impl(self) -> onnx.ModelProto:
        spec = self.spec
        args = tuple(spec.feeds.values())
        translations = translation_table(self.kv_update or DEFAULT_KV_UPDATE)
        units: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.plugin_config is not None:  # OIM/SPU units as luvc::OrthoMerge / luvc::SpectrumPrune nodes
            translations.update(plugin_translations())
            units = plugin_units(spec.module, self.plugin_config.spu_variant, self.plugin_config.rho)
        times = self.times
        with export_settings("graph"), torch.no_grad(), units:
            try:
                with times.stage("trace", spec.name), export_settings("trace"), traced_by_squaring():
                    program = trace_decomposed(
                        spec.module.eval(), args, spec.dynamic_shapes(), self.opset, translations
                    )
            except Exception as error:  # torch.export raises many types; say which graph and why
                critical(f"torch.export could not trace the {spec.name} graph: {type(error).__name__}: {error}")
            self._step()
            with times.stage("convert", spec.name), export_settings("convert"):
                onnx_program = torch.onnx.export(
                    program,
                    args,
                    input_names=list(spec.feeds),
                    output_names=spec.output_names,
                    opset_version=self.opset,
                    dynamo=True,
                    verbose=False,
                    optimize=True,
                    custom_translation_table=translations,
                )
            if onnx_program is None:  # dynamo=True always gives a program
                raise RuntimeError(f"torch.onnx.export returned no program for the {spec.name} graph")
            with times.stage("weights", spec.name):
                if self.weights is not None:
                    model = self.weights.stream(onnx_program.model, INLINE_BYTES, self.stable)
                else:
                    model = ir.serde.serialize_model(onnx_program.model)
            del onnx_program, program  # the torch-side copies of folded constants
        mark_opset(model)
        symbols = {}
        inputs = {info.name: info for info in model.graph.input}
        for (name, axis), dim_name in spec.dim_names().items():
            symbol = inputs[name].type.tensor_type.shape.dim[axis].dim_param
            if symbol:
                derived = root_of(symbol)  # "7*s92" for a derived axis: name its root (outputs use the root)
                if derived is not None:
                    named = root_of(dim_name)
                    symbol, dim_name = derived[1], dim_name if named is None else named[1]
                symbols[symbol] = dim_name
        rename_dims(model, symbols)
        name_nodes(model, root=spec.kind)
        self._step()
        return model
