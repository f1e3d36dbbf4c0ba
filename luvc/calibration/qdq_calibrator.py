"""``QdqExportFromExport``: an fp32 export -> an INT8 or FP8 export with explicit quantization (Q/DQ), its activation
ranges measured with compression in the loop.

Each quantized graph's activation ranges are collected over its feeds from the source export's own runs
(``luvc.calibration.ranges``) before any graph is quantized; a product whose input is heavy tailed stays float
(``luvc.calibration.tails``). ``smooth`` folds SmoothQuant's scales into the weights first
(``luvc.calibration.smoothing``); ``target_agreement`` keeps the fewest layers float that reach a logits cosine
against fp32 (``luvc.calibration.float_layers``). Beside the graphs: ``ranges.json`` and, for INT8, one TensorRT 10
calibration cache per graph.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from luvc.calibration.cache import write_calibration_cache
from luvc.calibration.calibrated_export import Advance, CalibratedExport, Calibration, GraphQuantizer, Scratch
from luvc.calibration.feeds import collect_feeds
from luvc.calibration.float_layers import FloatLayerChoice, FloatLayerTrials, graph_layers, search_float_layers
from luvc.calibration.quantize import (
    QUANTIZED_OPS,
    activation_ranges,
    check_onnxruntime,
    excluded_nodes,
    quantize_graph,
    quantized_layers,
)
from luvc.calibration.ranges import activations_to_calibrate, collect_ranges
from luvc.calibration.smoothing import smooth_export
from luvc.calibration.tails import TailStatistics, heavy_tailed_nodes, pool_by_product
from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import CalibrationRun, GraphEntry, QuantizationEntry, QuantizationSource
from luvc.export.weights import SharedWeights
from luvc.runtime.weights import MappedWeights
from luvc.samples import Sample

CACHE_FOLDER = "calibration"  # the TensorRT 10 calibration caches, one per graph (INT8)
RANGES_FILE = "ranges.json"


@dataclasses.dataclass
class QdqExportFromExport(CalibratedExport):
    """INT8 or FP8 Q/DQ calibration of an fp32 export (``CalibrationOptions``: ``precision`` ``int8`` or ``fp8``)."""

    quantized_kinds = ("vision", "prefill", "decode", "text")  # embed is a table lookup: saved as it is

    def _check_options(self) -> None:
        check_onnxruntime()

    def _plan(self, manifest: ExportManifest, graphs: list[str]) -> tuple[int, Any]:
        steps = len(graphs)  # each graph's ranges
        layers = self._quantized_layers(manifest, graphs) if self.target_agreement is not None else set()
        # at most: the one quantization the search edits, fully quantized, each layer alone, each layer added
        steps += len(graphs) + 1 + 2 * len(layers) if layers else 0
        steps += 2 * len(graphs) if self.smooth is not None else 0  # each graph's maxima, then its smoothed copy
        return steps, None

    def _run_source(self, source, samples: list[Sample], advance: Advance) -> tuple[dict, list]:
        return collect_feeds(source, samples, self.decode_steps, advance)

    def _calibrated(self, calibration: Calibration, feeds: dict, plan: Any, scratch: Scratch, advance: Advance):
        if self.smooth is not None:
            calibration = self._smooth(calibration, feeds, self.smooth, scratch.folder(".smooth-"), advance)
        calibration.heavy_tailed = self._collect_ranges(calibration, feeds, advance)
        return calibration

    def _smooth(
        self, calibration: Calibration, feeds: dict[str, list[dict]], alpha: float, folder: Path, advance
    ) -> Calibration:
        """The calibration reading its graphs smoothed with migration strength ``alpha``
        (``luvc.calibration.smoothing``) from ``folder``."""
        smoothed = smooth_export(
            calibration.source_dir,
            calibration.manifest,
            calibration.graphs,
            feeds,
            lambda model: list(excluded_nodes(model, self.precision)),
            alpha,
            folder,
            advance,
        )
        return dataclasses.replace(calibration, source_dir=smoothed.folder, smoothed=smoothed.products)

    def _collect_ranges(self, calibration: Calibration, feeds: dict[str, list[dict]], advance) -> dict[str, str]:
        """Each quantized graph's activation ranges over its ``feeds`` into the calibration's ``ranges_dir`` (see
        ``luvc.calibration.ranges``), the graph's weights mapped from its source folder for the while. Returns the
        products whose input is heavy tailed over all graphs (``luvc.calibration.tails``), with why each stays float."""
        pooled: dict[str, TailStatistics] = {}
        for name in calibration.graphs:
            graph = calibration.manifest.graphs[name]
            if name not in feeds:
                critical(_unreached(name, graph))
            source = calibration.source_dir / graph.file
            structure = onnx.load(str(source), load_external_data=False)
            excluded = excluded_nodes(structure, self.precision)
            tensors = activations_to_calibrate(structure, excluded)
            weights = MappedWeights(calibration.source_dir)
            cache = calibration.ranges_dir / f"{name}.json"
            try:
                tails = collect_ranges(source, feeds[name], self.method, tensors, cache, weights)
            finally:
                weights.close()
            products = [node.name for node in structure.graph.node if node.op_type in QUANTIZED_OPS]
            pool_by_product(structure, (node for node in products if node not in excluded), tails, pooled)
            advance(f"ranges of {name}: {len(tensors)} activations")
        return heavy_tailed_nodes(pooled, self.precision)

    def _graph_quantizer(self, calibration: Calibration, scratch: Path) -> GraphQuantizer:
        def quantize(name: str, source: Path, structure: onnx.ModelProto, skip: list[str]):
            graph = calibration.manifest.graphs[name]
            ranges = calibration.ranges_dir / f"{name}.json"
            external = bool(graph.external_data)
            model = quantize_graph(
                source, scratch / graph.file, ranges, self.precision, self.method, skip, external_data=external
            )
            return model, activation_ranges(model, self.precision), None

        return quantize

    def _quantized(self, calibration: Calibration, staging: Path, advance: Advance) -> tuple[FloatLayerChoice, tuple]:
        if self.target_agreement is None:
            return super()._quantized(calibration, staging, advance)
        return self._choose_float_layers(calibration, self.target_agreement, staging, advance)

    def _trials(self, calibration: Calibration, folder: Path, advance) -> FloatLayerTrials:
        """The fully quantized export written once into ``folder``, from which each candidate of the target search
        is made by editing the graphs of its float layers (``luvc.calibration.float_layers``)."""
        written = self._write_export(calibration, folder, advance, frozenset())
        full = self._manifest(calibration, written, folder, [])
        excluded = written[3]
        held = graph_layers(folder, full, calibration.graphs, excluded)
        return FloatLayerTrials(calibration.source_dir, calibration.manifest, folder, full, held, excluded)

    def _quantized_layers(self, manifest: ExportManifest, graphs: list[str]) -> set[str]:
        """Every layer that holds a node quantized in one of ``graphs`` (before the data rule: at most these)."""
        layers = set()
        for name in graphs:
            model = onnx.load(str(self.export_path / manifest.graphs[name].file), load_external_data=False)
            layers |= quantized_layers(model, excluded_nodes(model, self.precision))
        return layers

    def _choose_float_layers(
        self, calibration: Calibration, target: float, staging: Path, advance
    ) -> tuple[FloatLayerChoice, tuple]:
        """The fewest quantized layers to keep in floating point for the logits cosine ``target``
        (``luvc.calibration.float_layers.search_float_layers``), the export quantized once, for every candidate and
        for the export written into ``staging``. Returns the choice (its time counts that quantization) and what
        ``_write_export`` returns."""
        started = time.perf_counter()
        # beside the export being written (its file system, removed with it if killed), not in a RAM-backed /tmp
        with tempfile.TemporaryDirectory(prefix=".search-", dir=staging) as scratch:
            trials = self._trials(calibration, Path(scratch), lambda done: advance(f"{done}, for the search"))
            samples, references = calibration.samples, calibration.references
            choice = search_float_layers(trials, samples, references, target, advance)
            choice = dataclasses.replace(choice, seconds=round(time.perf_counter() - started, 1))
            entries, ranges, excluded = trials.save(choice.layers, staging, SharedWeights(staging), self.precision)
        advance(f"wrote the export with {len(choice.layers)} layer(s) in floating point")
        return choice, (entries, ranges, {}, excluded, self._complete(calibration.manifest, staging, entries))

    def _write_own_files(self, ranges: dict, staging: Path) -> list[str]:
        """``ranges.json`` and, for INT8, one TensorRT calibration cache per graph, keyed by the fp32 graph's tensor
        names."""
        (staging / RANGES_FILE).write_text(json.dumps(ranges, indent=2) + "\n")
        if self.precision != "int8":
            return [RANGES_FILE]
        (staging / CACHE_FOLDER).mkdir()
        names = []
        for graph, tensors in ranges.items():
            path = staging / CACHE_FOLDER / f"{graph}.cache"
            write_calibration_cache(path, {tensor: r["scale"] for tensor, r in tensors.items()})
            names.append(f"{CACHE_FOLDER}/{path.name}")
        return [RANGES_FILE, *names]

    def _quantization_entry(
        self, source: QuantizationSource, samples: list[Sample], excluded: dict, own_files: list[str]
    ) -> QuantizationEntry:
        import onnxruntime

        return QuantizationEntry(
            precision=self.precision,
            method=self.method,
            library=f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ), luvc.calibration.ranges",
            source=source,
            calibration=CalibrationRun(tuple(s.name for s in samples), self.decode_steps),
            quantized_ops=tuple(QUANTIZED_OPS),
            activations="symmetric per tensor",
            weights="symmetric per channel" if self.precision == "int8" else "symmetric per tensor",
            excluded_nodes=excluded,
            ranges_file=RANGES_FILE,
            tensorrt10_calibration_caches=tuple(name for name in own_files if name.startswith(f"{CACHE_FOLDER}/")),
        )


def _unreached(name: str, graph: GraphEntry) -> str:
    """Why no calibration sample reached graph ``name``, and what to add."""
    if graph.rung_of:
        length = graph.input("inputs_embeds").shape[1]
        return (
            f"No calibration prompt fits graph {name} ({length} tokens, the shortest prefill of {graph.rung_of}); "
            "add samples with shorter prompts."
        )
    return f"No calibration sample reached graph {name}; add images of bucket {graph.bucket}."
