"""``CalibratedExportFromExport``: an fp32 export -> an INT8/FP8 Q/DQ export, calibrated with compression in the loop,
or a weight-only INT4 or INT8 (W8A16) export.

Calibration feeds come from running the fp32 export's own ``Pipeline`` over the samples: the vision graph sees
real pixels, the prefill graph the merged image embeddings and prompt, and the decode graph a few greedy steps over
the per-layer KV cache. So every activation range is measured after OIM merging and SPU pruning. The result is an
ordinary export folder (same graphs, I/O and buckets; ``precision`` int8 or fp8; a ``quantization`` manifest
section) that ``build``, ``run`` and ``parity`` take, plus INT8 calibration caches for TensorRT 10 and a report.
INT4 and INT8 weight-only (``int8w``, ``luvc.calibration.weight_only``) quantize the LLM graphs' weights only, the LM
head's at INT8: GPTQ (INT4) reads the layers' inputs over the
same feeds (``luvc.calibration.hessians``), round to nearest reads nothing and the samples only measure the agreement
with fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from luvc.calibration.cache import write_calibration_cache
from luvc.calibration.feeds import collect_feeds
from luvc.calibration.float_layers import FloatLayerChoice, FloatLayerTrials, graph_layers, search_float_layers
from luvc.calibration.hessians import HessianGraph, input_hessians, plan_passes
from luvc.calibration.quantize import (
    DEFAULT_METHODS,
    QUANTIZED_OPS,
    WEIGHT_ONLY,
    activation_ranges,
    check_alpha,
    check_method,
    check_onnxruntime,
    excluded_nodes,
    layer_exclusions,
    quantize_graph,
    quantized_layers,
)
from luvc.calibration.ranges import activations_to_calibrate, collect_ranges
from luvc.calibration.report import write_report
from luvc.calibration.smoothing import smooth_export
from luvc.calibration.tails import TailStatistics, heavy_tailed_nodes, pool_by_product
from luvc.calibration.verify import ReferenceRun, agreement_with_reference, greedy_run, open_every_graph
from luvc.calibration.weight_only import (
    BLOCKED_PRECISIONS,
    DEFAULT_BLOCK_SIZE,
    LAYER_FORMATS,
    check_block_fits,
    check_block_size,
    float_tensor_names,
    gptq_quantizer,
    name_float_head,
    quantize_weights,
    quantized_weights,
)
from luvc.errors import critical
from luvc.export.manifest import EXPORT_OUTPUT, ExportManifest, load_graph, sha256_file
from luvc.export.manifest_entries import CalibrationRun, QuantizationEntry, QuantizationSource
from luvc.export.weights import SharedWeights
from luvc.loaders import BaseLoader, as_path, functional
from luvc.progress import progress_steps
from luvc.runtime.weights import MappedWeights
from luvc.samples import Sample, synthetic_samples
from luvc.staging import output_claim, staged_folder

QUANTIZED_KINDS = ("vision", "prefill", "decode", "text")  # embed is a table lookup: saved as it is
LLM_KINDS = ("prefill", "decode", "text")  # what weight-only precisions quantize: the LLM's linear layers
WEIGHT_ONLY_METHODS = {"rtn": "round to nearest", "gptq": "GPTQ, act-order, static groups"}
CACHE_FOLDER = "calibration"


@dataclasses.dataclass
class Calibration:
    """What one calibration run quantizes from: the source manifest, the folder of the graphs it reads (the
    source's, or with ``--smooth`` the smoothed copy's: the same files), the graphs it quantizes, the samples and the
    fp32 greedy run of each, and the folder holding each graph's activation ranges (INT8/FP8;
    collected once, before any quantization, so the feeds are not held while the graphs are quantized)."""

    manifest: ExportManifest
    graphs: list[str]
    samples: list[Sample]
    references: list[ReferenceRun]
    ranges_dir: Path
    source_dir: Path  # the folder of the graphs quantized: the export's, or its smoothed copy's (``--smooth``)
    hessians: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # GPTQ: node -> X^T X
    heavy_tailed: Mapping[str, str] = dataclasses.field(default_factory=dict)  # INT8: node -> why it stays float
    smoothed: tuple[str, ...] = ()  # the products whose weights SmoothQuant scaled


@dataclasses.dataclass
class CalibratedExportFromExport(BaseLoader[Path]):
    """Calibrate and quantize the fp32 export ``export_dir`` into ``out``.

    ``precision``: ``int8`` (methods ``minmax``, ``entropy``, ``percentile``), ``fp8`` (``distribution``, ONNX
    Runtime's float8 calibrator), ``int4`` (weight-only, blocks of ``block_size`` input channels, default 128:
    ``gptq``, the default, or ``rtn``) or ``int8w`` (weight-only INT8 per output column, ``rtn``). ``samples``
    default to the seeded synthetic set (``seed``); ``decode_steps`` (default 4) greedy steps per sample calibrate
    the decode graph, and the written export is run that far to check it. ``target_agreement`` (INT8/FP8): the worst
    logits cosine against fp32 (first token and greedy decode steps) over the samples to reach, keeping in floating
    point the fewest layers, most sensitive first. ``smooth`` (INT8/FP8): SmoothQuant's migration strength alpha in
    (0, 1), applied to the fp32 weights before calibrating (``luvc.calibration.smoothing``); none by default.
    """

    export_dir: str | Path | BaseLoader[Path]
    out: str | Path
    precision: str | None = None
    method: str | None = None
    samples: Sequence[Sample] | None = None
    seed: int | None = None
    decode_steps: int | None = None
    block_size: int | None = None
    target_agreement: float | None = None
    smooth: float | None = None
    overwrite: bool | None = None
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        self.export_dir, self.out = as_path(self.export_dir), as_path(self.out)
        self.precision = self.precision or "int8"
        self.method = self.method or DEFAULT_METHODS.get(self.precision, "")
        self.decode_steps = 4 if self.decode_steps is None else self.decode_steps
        self._block_size_chosen = self.block_size is not None  # the default is taken by a model of any width
        self.block_size = DEFAULT_BLOCK_SIZE if self.block_size is None else self.block_size
        self.overwrite = bool(self.overwrite)

    def _source(self) -> ExportManifest:
        check_method(self.precision, self.method)
        if self.precision in WEIGHT_ONLY:
            check_block_size(self.block_size)
        else:
            check_onnxruntime()
        target = self.target_agreement
        if target is not None and (self.weight_only or isinstance(target, bool) or not 0 < target <= 1):
            critical(
                f"--target-agreement {target}: a logits cosine in (0, 1] for --precision int8 or fp8 "
                f"({self.precision if self.weight_only else 'a weight-only precision'} quantizes every LLM layer's "
                "weights alike)."
            )
        check_alpha(self.smooth, self.precision)
        manifest = ExportManifest.load(self.export_dir, verify=True, engines_flags=None)
        readable = ("fp32", "fp16") if self.weight_only else ("fp32",)
        if manifest.precision not in readable:
            takes = "an fp32 or fp16 export" if self.weight_only else "an fp32 export"
            critical(
                f"{self.export_dir} is a {manifest.precision} export; {self.precision} calibration reads {takes}. "
                "Re-export with --precision fp32 (or fp16 for int4 and int8w) and calibrate that."
            )
        steps, limit = self.decode_steps, manifest.profile.max_new_tokens - 1
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
            critical(
                f"--decode-steps {steps}: calibrate the decode graph on 1 to {limit} steps per sample (the export "
                "generates at most max_new_tokens, one of them from the prompt)."
            )
        if manifest.passes.plugin_nodes:
            critical(f"{self.export_dir} holds plugin nodes ONNX Runtime cannot run; re-export without --plugin-nodes.")
        if self.precision in BLOCKED_PRECISIONS and self._block_size_chosen:
            check_block_fits(self.block_size, manifest.geometry.hidden_size)
        return manifest

    def call_impl(self) -> Path:
        manifest = self._source()
        with output_claim(self.out, self.overwrite, EXPORT_OUTPUT, (self.export_dir,)):  # before the calibration
            return self._calibrate(manifest)

    def _calibrate(self, manifest: ExportManifest) -> Path:
        from luvc.runtime.pipeline import Pipeline

        sizes = [bucket.size for bucket in manifest.buckets.values()]
        samples = list(self.samples) if self.samples is not None else synthetic_samples(sizes, seed=self.seed)
        if not samples:
            critical("No calibration samples; pass a data folder with images or leave out --data.")
        source = Pipeline(self.export_dir)
        kinds = LLM_KINDS if self.weight_only else QUANTIZED_KINDS
        graphs = [name for name, graph in manifest.graphs.items() if graph.kind in kinds]
        steps = len(samples) + len(graphs) + 1 + (0 if self.weight_only else len(graphs))
        gptq = self.method == "gptq"
        hessian_graphs = self._hessian_graphs(manifest, graphs) if gptq else {}  # read once: to plan, then to run
        steps += len(plan_passes(list(hessian_graphs.values()))) if gptq else 0
        layers = self._quantized_layers(manifest, graphs) if self.target_agreement is not None else set()
        # at most: the one quantization the search edits, fully quantized, each layer alone, each layer added
        steps += len(graphs) + 1 + 2 * len(layers) if layers else 0
        steps += 2 * len(graphs) if self.smooth is not None else 0  # each graph's maxima, then its smoothed copy
        with (
            progress_steps(self.show_progress, steps, "calibrating") as advance,
            tempfile.TemporaryDirectory(prefix="luvc-ranges-") as ranges_dir,
            staged_folder(self.out, self.overwrite, EXPORT_OUTPUT, (self.export_dir,)) as staging,
            # beside the export being written (its file system, removed with it if killed), not in a RAM-backed /tmp
            _scratch(staging, ".smooth-", self.smooth is not None) as smoothing_dir,
        ):
            if self.weight_only and not gptq:  # nothing to calibrate: the fp32 logits the agreement is measured against
                feeds, references = {}, []
                for sample in samples:
                    references.append(greedy_run(source, sample, self.decode_steps + 1))
                    advance(f"{manifest.precision} run: {sample.name}")
            else:
                feeds, references = collect_feeds(source, samples, self.decode_steps, advance)
            source.release()
            calibration = Calibration(manifest, graphs, samples, references, Path(ranges_dir), self.export_dir)
            if smoothing_dir is not None:
                calibration = self._smooth(calibration, feeds, smoothing_dir, advance)
            if gptq:  # the layers' inputs over the same feeds
                weights = MappedWeights(self.export_dir)
                try:
                    fed = [
                        dataclasses.replace(graph, feeds=feeds.get(name, [])) for name, graph in hessian_graphs.items()
                    ]
                    calibration.hessians = input_hessians(fed, weights, advance=advance)
                finally:
                    weights.close()
            elif not self.weight_only:
                calibration.heavy_tailed = self._collect_ranges(calibration, feeds, advance)
            del feeds
            self._write_calibrated(calibration, staging, advance)
        return self.out

    def _smooth(self, calibration: Calibration, feeds: dict[str, list[dict]], folder: Path, advance) -> Calibration:
        """The calibration reading its graphs smoothed with ``smooth`` (``luvc.calibration.smoothing``) from
        ``folder``."""
        smoothed = smooth_export(
            calibration.source_dir,
            calibration.manifest,
            calibration.graphs,
            feeds,
            lambda model: list(excluded_nodes(model, self.precision)),
            self.smooth,
            folder,
            advance,
        )
        return dataclasses.replace(calibration, source_dir=smoothed.folder, smoothed=smoothed.products)

    def _write_calibrated(self, calibration: Calibration, staging: Path, advance) -> None:
        """Quantize the calibration's graphs into ``staging`` (the ``target_agreement`` search first, if asked), and
        write the rest of the export: calibration caches, ranges, the manifest once complete, the report. What was
        written must load and decode as the float export does."""
        from luvc.runtime.pipeline import Pipeline

        manifest, samples = calibration.manifest, calibration.samples
        if self.target_agreement is None:
            choice, written = FloatLayerChoice(), self._write_export(calibration, staging, advance, frozenset())
        else:
            choice, written = self._choose_float_layers(calibration, staging, advance)
        entries, ranges, weight_bytes, excluded, files = written
        caches = self._write_caches(ranges, staging)
        if not self.weight_only:
            (staging / "ranges.json").write_text(json.dumps(ranges, indent=2) + "\n")
            files.append("ranges.json")
        files += caches
        calibrated = self._manifest(manifest, entries, files, staging, samples, excluded, caches)
        quantized = Pipeline(staging, manifest=calibrated)  # the folder's manifest, before it is written
        try:  # what was written loads, and decodes as the float export does
            open_every_graph(quantized, closed_kinds=("text",))  # the samples all hold an image
            agreement = agreement_with_reference(calibration.references, quantized, samples, self.target_agreement)
        finally:
            quantized.release()
        quantization = dataclasses.replace(
            calibrated.quantization,
            agreement_with_fp32=agreement,
            target_agreement=self.target_agreement,
            smoothing_alpha=self.smooth,
            smoothed_products=calibration.smoothed,
            **choice.manifest_fields(),
        )
        dataclasses.replace(calibrated, quantization=quantization).save(staging)  # once, complete
        write_report(staging, quantization, ranges, weight_bytes, len(samples), manifest.precision)
        advance("agreement with fp32")

    def _collect_ranges(self, calibration: Calibration, feeds: dict[str, list[dict]], advance) -> dict[str, str]:
        """Each quantized graph's activation ranges over its ``feeds`` into the calibration's ``ranges_dir`` (see
        ``luvc.calibration.ranges``), the graph's weights mapped from its source folder for the while. Returns the
        products whose input is heavy tailed over all graphs (``luvc.calibration.tails``), with why each stays float."""
        pooled: dict[str, TailStatistics] = {}
        for name in calibration.graphs:
            graph = calibration.manifest.graphs[name]
            if name not in feeds:
                critical(f"No calibration sample reached graph {name}; add images of bucket {graph.bucket}.")
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

    def _trials(self, calibration: Calibration, folder: Path, advance) -> FloatLayerTrials:
        """The fully quantized export written once into ``folder``, from which each candidate of the target search
        is made by editing the graphs of its float layers (``luvc.calibration.float_layers``)."""
        entries, _, _, excluded, files = self._write_export(calibration, folder, advance, frozenset())
        full = self._manifest(calibration.manifest, entries, files, folder, calibration.samples, excluded, [])
        held = graph_layers(folder, full, calibration.graphs, excluded)
        return FloatLayerTrials(calibration.source_dir, calibration.manifest, folder, full, held, excluded)

    def _quantized_layers(self, manifest: ExportManifest, graphs: list[str]) -> set[str]:
        """Every layer that holds a node quantized in one of ``graphs`` (before the data rule: at most these)."""
        layers = set()
        for name in graphs:
            model = onnx.load(str(self.export_dir / manifest.graphs[name].file), load_external_data=False)
            layers |= quantized_layers(model, excluded_nodes(model, self.precision))
        return layers

    def _choose_float_layers(self, calibration: Calibration, staging: Path, advance) -> tuple[FloatLayerChoice, tuple]:
        """The fewest quantized layers to keep in floating point for ``target_agreement``
        (``luvc.calibration.float_layers.search_float_layers``), the export quantized once, for every candidate and
        for the export written into ``staging``. Returns the choice (its time counts that quantization) and what
        ``_write_export`` returns."""
        started = time.perf_counter()
        # beside the export being written (its file system, removed with it if killed), not in a RAM-backed /tmp
        with tempfile.TemporaryDirectory(prefix=".search-", dir=staging) as scratch:
            trials = self._trials(calibration, Path(scratch), lambda done: advance(f"{done}, for the search"))
            samples, references = calibration.samples, calibration.references
            choice = search_float_layers(trials, samples, references, self.target_agreement, advance)
            choice = dataclasses.replace(choice, seconds=round(time.perf_counter() - started, 1))
            entries, ranges, excluded = trials.save(choice.layers, staging, SharedWeights(staging), self.precision)
        advance(f"wrote the export with {len(choice.layers)} layer(s) in floating point")
        return choice, (entries, ranges, {}, excluded, self._complete(calibration.manifest, staging, entries))

    def _hessian_graphs(self, manifest: ExportManifest, graphs: list[str]) -> dict[str, HessianGraph]:
        """Graph name -> the graph GPTQ reads layer inputs from, without feeds yet (they are collected later)."""
        found = {}
        for name in graphs:
            path = self.export_dir / manifest.graphs[name].file
            structure = onnx.load(str(path), load_external_data=False)
            found[name] = HessianGraph(path, (), tuple(excluded_nodes(structure, self.precision)))
        return found

    @property
    def weight_only(self) -> bool:
        """Whether the precision quantizes weights only (INT4, INT8 ``int8w``): no calibration, the LLM graphs only."""
        return self.precision in WEIGHT_ONLY

    def _write_export(self, calibration: Calibration, folder: Path, advance, keep: frozenset[str]):
        """The quantized graphs (``_write_graphs``) and every other file of the source export in ``folder``; returns
        what ``_write_graphs`` does and the files written."""
        entries, ranges, weight_bytes, excluded = self._write_graphs(calibration, folder, advance, keep)
        return entries, ranges, weight_bytes, excluded, self._complete(calibration.manifest, folder, entries)

    def _complete(self, manifest: ExportManifest, folder: Path, entries: dict) -> list[str]:
        """Copy every other file of the source export into ``folder``, beside the graphs ``entries`` written there;
        returns the files of the export: those, the graphs and their weights."""
        files = self._copy_rest(manifest, folder) + [entry.file for entry in entries.values()]
        return files + [f for entry in entries.values() for f in entry.external_data]

    def _write_graphs(self, calibration: Calibration, staging: Path, advance, keep: frozenset[str] = frozenset()):
        """Quantize the calibration's graphs, with the ``keep`` layers in floating point, and save them with the
        other graphs (embed, as they are) into ``staging``, all of them through one shared weights file, so prefill
        and decode store their quantized weights once. Returns the graph entries, the activation ranges (INT8/FP8)
        and the quantized weights' formats and bytes (weight-only) per graph, and the nodes kept float."""
        from luvc.export.exporter import save_model

        manifest, graphs = calibration.manifest, calibration.graphs
        entries, ranges, weight_bytes, excluded = {}, {}, {}, {}
        weights = SharedWeights(staging)
        quantizer = gptq_quantizer(calibration.hessians, self.block_size) if calibration.hessians else None
        # a weight-only calibration reads the export itself (no smoothing): where its untouched graphs keep each tensor
        kept_float = float_tensor_names(self.export_dir, manifest, graphs) if self.weight_only else {}
        with tempfile.TemporaryDirectory(prefix="luvc-calibrate-") as scratch:
            for name, graph in manifest.graphs.items():
                external = bool(graph.external_data)
                if name not in graphs:
                    model = load_graph(self.export_dir, name, manifest)
                    written = save_model(model, staging / graph.file, external, weights)
                    entries[name] = dataclasses.replace(graph, external_data=tuple(written[1:]))
                    continue
                source = calibration.source_dir / graph.file
                structure = onnx.load(str(source), load_external_data=False)
                kept = excluded_nodes(structure, self.precision, calibration.heavy_tailed)
                skip = {**layer_exclusions(structure, keep), **kept}  # a heavy-tailed input keeps its reason
                if self.weight_only:
                    layers = LAYER_FORMATS[self.precision]
                    quantized = quantize_weights(onnx.load(str(source)), self.block_size, list(skip), quantizer, layers)
                    name_float_head(quantized, structure, kept_float)
                    weight_bytes[name] = quantized_weights(quantized)
                else:
                    quantized = quantize_graph(
                        source,
                        Path(scratch) / graph.file,
                        calibration.ranges_dir / f"{name}.json",
                        self.precision,
                        self.method,
                        list(skip),
                        external_data=bool(graph.external_data),
                    )
                    ranges[name] = activation_ranges(quantized, self.precision)
                written = save_model(quantized, staging / graph.file, external, weights)
                entries[name] = dataclasses.replace(
                    graph,
                    external_data=tuple(written[1:]),
                    num_nodes=len(quantized.graph.node),
                    opset=next(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")),
                )
                excluded[name] = skip
                del quantized  # before the next graph's quantization holds that graph
                advance(f"quantized {name}")
        return entries, ranges, weight_bytes, excluded

    def _weights_description(self) -> str:
        """How a weight-only export stores its weights, for its manifest."""
        head = "the LM head int8, one scale per output column"
        if self.precision == "int4":
            return f"symmetric int4, one scale per {self.block_size} input channels of each output column; {head}"
        return "symmetric int8, one scale per output column (the LM head too)"

    def _copy_rest(self, manifest, staging) -> list[str]:
        """Copy every file that is not a graph or its weights (host plans, tokenizer, processor)."""
        graph_files = {graph.file for graph in manifest.graphs.values()}
        graph_files |= {f for graph in manifest.graphs.values() for f in graph.external_data}
        copied = []
        for name in manifest.files:
            if name not in graph_files:
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.export_dir / name, target)
                copied.append(name)
        return copied

    def _write_caches(self, ranges, staging) -> list[str]:
        """INT8 only: one TensorRT calibration cache per graph, keyed by the fp32 graph's tensor names."""
        if self.precision != "int8":
            return []
        (staging / CACHE_FOLDER).mkdir()
        names = []
        for graph, tensors in ranges.items():
            path = staging / CACHE_FOLDER / f"{graph}.cache"
            write_calibration_cache(path, {tensor: r["scale"] for tensor, r in tensors.items()})
            names.append(f"{CACHE_FOLDER}/{path.name}")
        return names

    def _manifest(self, manifest, entries, files, staging, samples, excluded, caches) -> ExportManifest:
        """The calibrated export's manifest: the source's, with the quantized graphs, files and what was done."""
        import onnxruntime

        quantized_opsets = [entry.opset for entry in entries.values() if entry.opset is not None]
        source = QuantizationSource(str(self.export_dir), sha256_file(self.export_dir / "manifest.json"))
        if self.weight_only:
            quantization = QuantizationEntry(
                precision=self.precision,
                method=self.method,
                library=f"luvc.calibration.weight_only ({WEIGHT_ONLY_METHODS[self.method]}, DequantizeLinear)",
                source=source,
                # GPTQ reads the layers' inputs over the samples and their decode steps; RTN only measures agreement
                calibration=CalibrationRun(
                    tuple(s.name for s in samples), self.decode_steps if self.method == "gptq" else 0
                ),
                quantized_ops=("MatMul",),
                activations="floating point (weight-only)",
                weights=self._weights_description(),
                excluded_nodes=excluded,
                ranges_file="",
                tensorrt10_calibration_caches=(),
                block_size=self.block_size,
            )
        else:
            quantization = QuantizationEntry(
                precision=self.precision,
                method=self.method,
                library=f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ), luvc.calibration.ranges",
                source=source,
                calibration=CalibrationRun(tuple(s.name for s in samples), self.decode_steps),
                quantized_ops=tuple(QUANTIZED_OPS),
                activations="symmetric per tensor",
                weights="symmetric per channel" if self.precision == "int8" else "symmetric per tensor",
                excluded_nodes=excluded,
                ranges_file="ranges.json",
                tensorrt10_calibration_caches=tuple(caches),
            )
        return dataclasses.replace(
            manifest,
            precision=self.precision,
            graphs={**manifest.graphs, **entries},
            opset=max([manifest.opset, *quantized_opsets]),  # fp8 needs 19
            files={name: sha256_file(staging / name) for name in sorted(set(files))},
            versions={**manifest.versions, "onnxruntime": onnxruntime.__version__},
            quantization=quantization,
        )


@contextlib.contextmanager
def _scratch(folder: Path, prefix: str, wanted: bool) -> Iterator[Path | None]:
    """A temporary folder inside ``folder`` for the block where ``wanted``, else ``None``."""
    if not wanted:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as scratch:
        yield Path(scratch)


calibrate_export = functional(CalibratedExportFromExport, "calibrate_export")
