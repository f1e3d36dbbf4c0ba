"""``WeightOnlyExportFromExport``: an fp32 or fp16 export -> an INT4 or INT8 weight-only (``int8w``, W8A16) export.

Only the LLM graphs' linear layers are quantized (``luvc.calibration.weight_only``), the LM head at INT8; the
activations stay floating point. GPTQ (INT4's default) reads the layers' inputs over the samples' feeds
(``luvc.calibration.hessians``); round to nearest reads nothing, and the samples only measure the agreement with the
source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import onnx

from luvc.calibration.calibrated_export import Advance, CalibratedExport, Calibration, GraphQuantizer, Scratch
from luvc.calibration.feeds import collect_feeds
from luvc.calibration.hessians import HessianGraph, input_hessians, plan_passes
from luvc.calibration.quantize import excluded_nodes
from luvc.calibration.verify import greedy_run
from luvc.calibration.weight_only import (
    BLOCKED_PRECISIONS,
    LAYER_FORMATS,
    check_block_size,
    float_tensor_names,
    gptq_quantizer,
    name_float_head,
    quantize_weights,
    quantized_weights,
)
from luvc.export.manifest import ExportManifest, external_data_files, refuse_linked_weights
from luvc.export.manifest_entries import CalibrationRun, QuantizationEntry, QuantizationSource
from luvc.runtime.weights import MappedWeights
from luvc.samples import Sample

WEIGHT_ONLY_METHODS = {"rtn": "round to nearest", "gptq": "GPTQ, act-order, static groups"}


@dataclasses.dataclass
class WeightOnlyExportFromExport(CalibratedExport):
    """INT4 or INT8 weight-only quantization of an fp32 or fp16 export (``CalibrationOptions``: ``precision``
    ``int4`` or ``int8w``, ``block_size`` for INT4)."""

    quantized_kinds = ("prefill", "decode", "text")  # the LLM's linear layers
    readable = ("fp32", "fp16")

    @property
    def gptq(self) -> bool:
        return self.method == "gptq"

    def _check_options(self) -> None:
        if self.block_size is not None:
            check_block_size(self.block_size)

    def _check_source(self, manifest: ExportManifest) -> None:
        if self.precision in BLOCKED_PRECISIONS and self.block_size is not None:  # the default fits any width
            check_block_size(self.block_size, manifest.geometry.hidden_size)

    def _plan(self, manifest: ExportManifest, graphs: list[str]) -> tuple[int, Any]:
        """GPTQ: the graphs it reads layer inputs from (read once: to count its passes, then to run them)."""
        if not self.gptq:
            return 0, None
        hessian_graphs = self._hessian_graphs(manifest, graphs)
        return len(plan_passes(list(hessian_graphs.values()))), hessian_graphs

    def _hessian_graphs(self, manifest: ExportManifest, graphs: list[str]) -> dict[str, HessianGraph]:
        """Graph name -> the graph GPTQ reads layer inputs from, without feeds yet (they are collected later)."""
        found = {}
        for name in graphs:
            path = self.export_path / manifest.graphs[name].file
            structure = onnx.load(str(path), load_external_data=False)
            found[name] = HessianGraph(path, (), tuple(excluded_nodes(structure, self.precision)))
        return found

    def _run_source(self, source, samples: list[Sample], advance: Advance) -> tuple[dict, list]:
        if self.gptq:
            return collect_feeds(source, samples, self.decode_steps, advance)
        references = []  # nothing to calibrate: the source's logits the agreement is measured against
        for sample in samples:
            references.append(greedy_run(source, sample, self.decode_steps + 1))
            advance(f"{source.manifest.precision} run: {sample.name}")
        return {}, references

    def _calibrated(self, calibration: Calibration, feeds: dict, plan: Any, scratch: Scratch, advance: Advance):
        if not self.gptq:
            return calibration
        weights = MappedWeights(self.export_path)  # the layers' inputs over the same feeds
        try:
            fed = [dataclasses.replace(graph, feeds=feeds.get(name, [])) for name, graph in plan.items()]
            calibration.hessians = input_hessians(fed, weights, advance=advance)
        finally:
            weights.close()
        return calibration

    def _graph_quantizer(self, calibration: Calibration, scratch: Path) -> GraphQuantizer:
        quantizer = gptq_quantizer(calibration.hessians, self.block) if calibration.hessians else None
        # it reads the export itself (no smoothing): where its untouched graphs keep each tensor
        kept_float = float_tensor_names(self.export_path, calibration.manifest, calibration.graphs)
        layers = LAYER_FORMATS[self.precision]

        def quantize(name: str, source: Path, structure: onnx.ModelProto, skip: list[str]):
            graph = onnx.load(str(source), load_external_data=False)
            refuse_linked_weights(source.parent, external_data_files(graph))
            onnx.load_external_data_for_model(graph, str(source.parent))
            model = quantize_weights(graph, self.block, skip, quantizer, layers)
            name_float_head(model, structure, kept_float)
            return model, None, quantized_weights(model)

        return quantize

    def _weights_description(self) -> str:
        """How a weight-only export stores its weights, for its manifest."""
        head = "the LM head int8, one scale per output column"
        if self.precision == "int4":
            return f"symmetric int4, one scale per {self.block} input channels of each output column; {head}"
        return "symmetric int8, one scale per output column (the LM head too)"

    def _quantization_entry(
        self, source: QuantizationSource, samples: list[Sample], excluded: dict, own_files: list[str]
    ) -> QuantizationEntry:
        return QuantizationEntry(
            precision=self.precision,
            method=self.method,
            library=f"luvc.calibration.weight_only ({WEIGHT_ONLY_METHODS[self.method]}, DequantizeLinear)",
            source=source,
            # GPTQ reads the layers' inputs over the samples and their decode steps; RTN only measures agreement
            calibration=CalibrationRun(tuple(s.name for s in samples), self.decode_steps if self.gptq else 0),
            quantized_ops=("MatMul",),
            activations="floating point (weight-only)",
            weights=self._weights_description(),
            excluded_nodes=excluded,
            ranges_file="",
            tensorrt10_calibration_caches=(),
            block_size=self.block_size,
        )
