"""What every calibrated export shares, whatever it produces: the options (``CalibrationOptions``), the checks of the
source, and ``CalibratedExport``'s steps from the fp32 export's own runs to a folder that loads and decodes.

Calibration feeds come from running the source export's own ``Pipeline`` over the samples: the vision graph sees
real pixels, the prefill graph the merged image embeddings and prompt, and the decode graph a few greedy steps over
the per-layer KV cache, so every activation range (or GPTQ's layer inputs) is measured after OIM merging and SPU
pruning. The result is an ordinary export folder (same graphs, I/O and buckets; another ``precision``; a
``quantization`` manifest section) that ``build``, ``run`` and ``parity`` take, and a report. What each precision
does in between is its loader's: ``luvc.calibration.qdq_calibrator`` (INT8/FP8 Q/DQ: ranges, SmoothQuant, the target
search) and ``luvc.calibration.weight_only_calibrator`` (INT4, int8w).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from luvc.calibration.float_layers import FloatLayerChoice
from luvc.calibration.quantize import WEIGHT_ONLY, check_alpha, check_method
from luvc.calibration.report import write_report
from luvc.calibration.verify import ReferenceRun, agreement_with_reference, open_every_graph
from luvc.errors import critical
from luvc.export.manifest import EXPORT_OUTPUT, ExportManifest, load_graph, refuse_linked_weights, sha256_file
from luvc.export.manifest_entries import GraphEntry, QuantizationEntry, QuantizationSource
from luvc.export.weights import SharedWeights
from luvc.loaders import BaseLoader, as_path, loaded_path
from luvc.progress import progress_steps
from luvc.samples import Sample, synthetic_samples
from luvc.staging import output_claim, staged_folder

Advance = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Scratch:
    """Where a precision keeps what it writes on the way: beside the export being written (``staging``: its file
    system, removed with it if killed), not in a RAM-backed /tmp; ``stack`` holds the contexts that last until the
    export is written."""

    staging: Path
    stack: contextlib.ExitStack

    def folder(self, prefix: str) -> Path:
        """A temporary folder inside the staging folder, removed before the export is complete."""
        return Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix, dir=self.staging)))


# a graph's quantization: (source graph, its structure without weights, nodes kept float) -> (the quantized model, its
# activation ranges (Q/DQ) or None, its quantized weights' formats and bytes (weight-only) or None)
GraphQuantizer = Callable[[str, Path, onnx.ModelProto, list[str]], tuple[onnx.ModelProto, Any, Any]]


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
class CalibrationOptions(BaseLoader[Path]):
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
    precision: str = "int8"  # None (as the CLI passes what is not given) takes each default
    method: str = ""  # the precision's default method
    samples: Sequence[Sample] | None = None
    seed: int | None = None
    decode_steps: int = 4
    block_size: int | None = None  # INT4: ``DEFAULT_BLOCK_SIZE`` when not given (``block``)
    target_agreement: float | None = None
    smooth: float | None = None
    overwrite: bool = False
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        from luvc.calibration.quantize import DEFAULT_METHODS

        self.export_dir, self.out = as_path(self.export_dir), as_path(self.out)
        self.precision = self.precision or "int8"
        self.method = self.method or DEFAULT_METHODS.get(self.precision, "")
        self.decode_steps = 4 if self.decode_steps is None else self.decode_steps
        self.overwrite = bool(self.overwrite)

    @property
    def export_path(self) -> Path:
        """The source export (once a loader that makes it has run)."""
        return loaded_path(self.export_dir)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def block(self) -> int:
        """INT4's block of input channels: ``block_size``, else the default (which a model of any width takes)."""
        from luvc.calibration.weight_only import DEFAULT_BLOCK_SIZE

        return DEFAULT_BLOCK_SIZE if self.block_size is None else self.block_size

    @property
    def weight_only(self) -> bool:
        """Whether the precision quantizes weights only (INT4, INT8 ``int8w``): no calibration, the LLM graphs only."""
        return self.precision in WEIGHT_ONLY

    def options(self) -> dict[str, Any]:
        """These options by field name, as given (another loader of the same options takes them)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclasses.dataclass
class CalibratedExport(CalibrationOptions):
    """The steps every calibrated export takes; a precision's loader fills in ``quantized_kinds``, ``_plan``,
    ``_run_source``, ``_calibrated``, ``_graph_quantizer`` and ``_quantization_entry``."""

    quantized_kinds: ClassVar[tuple[str, ...]] = ()  # the kinds of graph quantized; the others are saved as they are
    readable: ClassVar[tuple[str, ...]] = ("fp32",)  # the float precisions of the exports it reads

    def _source(self) -> ExportManifest:
        """Check the options against each other and the source export; returns its manifest."""
        check_method(self.precision, self.method)
        self._check_options()
        target = self.target_agreement
        if target is not None and self.weight_only:
            critical(
                f"--target-agreement is for --precision int8 or fp8, which can keep layers float; {self.precision} "
                "quantizes every LLM layer's weights alike. Drop --target-agreement, or calibrate int8."
            )
        if target is not None and (isinstance(target, bool) or not 0 < target <= 1):
            critical(f"--target-agreement {target}: give a logits cosine in (0, 1], e.g. 0.99.")
        check_alpha(self.smooth, self.precision)
        manifest = ExportManifest.load(self.export_path, verify=True, engines_flags=None)
        if manifest.precision not in self.readable:
            takes = " or ".join(self.readable)
            critical(
                f"{self.export_dir} is a {manifest.precision} export; {self.precision} calibration reads an {takes} "
                "export. Re-export with --precision fp32 (or fp16 for int4 and int8w) and calibrate that."
            )
        steps, limit = self.decode_steps, manifest.profile.max_new_tokens - 1
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
            critical(
                f"--decode-steps {steps}: calibrate the decode graph on 1 to {limit} steps per sample (the export "
                "generates at most max_new_tokens, one of them from the prompt)."
            )
        if manifest.passes.plugin_nodes:
            critical(f"{self.export_dir} holds plugin nodes ONNX Runtime cannot run; re-export without --plugin-nodes.")
        self._check_source(manifest)
        return manifest

    def _check_options(self) -> None:
        """The precision's own checks of its options, before the source is read."""

    def _check_source(self, manifest: ExportManifest) -> None:
        """The precision's own checks of the source export."""

    def call_impl(self) -> Path:
        manifest = self._source()
        with output_claim(self.out_path, self.overwrite, EXPORT_OUTPUT, (self.export_path,)):  # before the calibration
            return self._calibrate(manifest)

    def _calibrate(self, manifest: ExportManifest) -> Path:
        from luvc.runtime.pipeline import Pipeline

        # before any work, and after a killed run's link to these weights is gone (``output_claim`` cleans it)
        refuse_linked_weights(self.export_path, manifest.weights_files)
        sizes = [bucket.size for bucket in manifest.buckets.values()]
        samples = list(self.samples) if self.samples is not None else synthetic_samples(sizes, seed=self.seed)
        if not samples:
            critical("No calibration samples; pass a data folder with images or leave out --data.")
        graphs = [name for name, graph in manifest.graphs.items() if graph.kind in self.quantized_kinds]
        more_steps, plan = self._plan(manifest, graphs)
        with (
            progress_steps(self.show_progress, len(samples) + len(graphs) + 1 + more_steps, "calibrating") as advance,
            staged_folder(self.out_path, self.overwrite, EXPORT_OUTPUT, (self.export_path,)) as staging,
            contextlib.ExitStack() as stack,  # what the precision keeps until the export is written
        ):
            scratch = Scratch(staging, stack)
            ranges_dir = scratch.folder("ranges-")  # in the staging folder: a killed run's is removed with it
            source = Pipeline(self.export_path)
            feeds, references = self._run_source(source, samples, advance)
            source.release()
            calibration = Calibration(manifest, graphs, samples, references, ranges_dir, self.export_path)
            calibration = self._calibrated(calibration, feeds, plan, scratch, advance)
            del feeds
            self._write_calibrated(calibration, staging, advance)
        return self.out_path

    def _plan(self, manifest: ExportManifest, graphs: list[str]) -> tuple[int, Any]:
        """The precision's progress steps beyond the samples and graphs, and what it read to count them."""
        return 0, None

    def _run_source(self, source, samples: list[Sample], advance: Advance) -> tuple[dict, list[ReferenceRun]]:
        """The source export's runs over the samples: the graphs' feeds and each sample's greedy reference."""
        raise NotImplementedError

    def _calibrated(self, calibration: Calibration, feeds: dict, plan: Any, scratch: Scratch, advance: Advance):
        """The calibration with what the precision measured over ``feeds`` (``plan``: what ``_plan`` read)."""
        return calibration

    def _write_calibrated(self, calibration: Calibration, staging: Path, advance: Advance) -> None:
        """Quantize the calibration's graphs into ``staging`` and write the rest of the export: the precision's own
        files, the manifest once complete, the report. What was written must load and decode as the float export
        does."""
        from luvc.runtime.pipeline import Pipeline

        manifest, samples = calibration.manifest, calibration.samples
        choice, written = self._quantized(calibration, staging, advance)
        _, ranges, weight_bytes, _, _ = written
        own_files = self._write_own_files(ranges, staging)
        calibrated = self._manifest(calibration, written, staging, own_files)
        quantized = Pipeline(staging, manifest=calibrated)  # the folder's manifest, before it is written
        try:  # what was written loads, and decodes as the float export does
            open_every_graph(quantized, closed_kinds=("text",))  # the samples all hold an image
            agreement = agreement_with_reference(calibration.references, quantized, samples, self.target_agreement)
        finally:
            quantized.release()
        if calibrated.quantization is None:
            raise ValueError("a calibrated export's manifest names its quantization (_manifest)")
        quantization = dataclasses.replace(
            calibrated.quantization,
            agreement_with_fp32=agreement,
            target_agreement=self.target_agreement,
            smoothing_alpha=self.smooth,
            smoothed_products=calibration.smoothed,
            **choice.manifest_fields(),
        )
        dataclasses.replace(calibrated, quantization=quantization).save(staging)  # once, complete
        write_report(staging, quantization, ranges, weight_bytes, manifest.precision)
        advance("agreement with fp32")

    def _quantized(self, calibration: Calibration, staging: Path, advance: Advance) -> tuple[FloatLayerChoice, tuple]:
        """The layers kept float and what ``_write_export`` returns: by default none, every graph quantized."""
        return FloatLayerChoice(), self._write_export(calibration, staging, advance, frozenset())

    def _write_own_files(self, ranges: dict, staging: Path) -> list[str]:
        """The precision's files beside the graphs (names relative to ``staging``)."""
        return []

    def _write_export(self, calibration: Calibration, folder: Path, advance: Advance, keep: frozenset[str]):
        """The quantized graphs (``_write_graphs``) and every other file of the source export in ``folder``; returns
        what ``_write_graphs`` does and the files written."""
        entries, ranges, weight_bytes, excluded = self._write_graphs(calibration, folder, advance, keep)
        return entries, ranges, weight_bytes, excluded, self._complete(calibration.manifest, folder, entries)

    def _complete(self, manifest: ExportManifest, folder: Path, entries: dict) -> list[str]:
        """Copy every other file of the source export into ``folder``, beside the graphs ``entries`` written there;
        returns the files of the export: those, the graphs and their weights."""
        files = self._copy_rest(manifest, folder) + [entry.file for entry in entries.values()]
        return files + [f for entry in entries.values() for f in entry.external_data]

    def _write_graphs(self, calibration: Calibration, staging: Path, advance: Advance, keep: frozenset[str]):
        """Quantize the calibration's graphs, with the ``keep`` layers in floating point, and save them with the
        other graphs (embed, as they are) into ``staging``, all of them through one shared weights file, so prefill
        and decode store their quantized weights once. Returns the graph entries, the activation ranges (INT8/FP8)
        and the quantized weights' formats and bytes (weight-only) per graph, and the nodes kept float."""
        from luvc.calibration.quantize import excluded_nodes, layer_exclusions
        from luvc.export.exporter import save_model

        manifest = calibration.manifest
        entries: dict[str, GraphEntry] = {}
        ranges, weight_bytes, excluded = {}, {}, {}
        weights = SharedWeights(staging)
        with tempfile.TemporaryDirectory(prefix="calibrate-", dir=staging) as scratch:  # removed with it if killed
            quantize = self._graph_quantizer(calibration, Path(scratch))
            for name, graph in manifest.graphs.items():
                external = bool(graph.external_data)
                if name not in calibration.graphs:
                    model = load_graph(self.export_path, name, manifest)
                    written = save_model(model, staging / graph.file, external, weights)
                    entries[name] = dataclasses.replace(graph, external_data=tuple(written[1:]))
                    continue
                source = calibration.source_dir / graph.file
                structure = onnx.load(str(source), load_external_data=False)
                kept = excluded_nodes(structure, self.precision, calibration.heavy_tailed)
                skip = {**layer_exclusions(structure, keep), **kept}  # a heavy-tailed input keeps its reason
                quantized, graph_ranges, graph_bytes = quantize(name, source, structure, list(skip))
                if graph_ranges is not None:
                    ranges[name] = graph_ranges
                if graph_bytes is not None:
                    weight_bytes[name] = graph_bytes
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

    def _graph_quantizer(self, calibration: Calibration, scratch: Path) -> GraphQuantizer:
        """How this precision quantizes one graph of ``calibration`` (``scratch``: a folder for the while)."""
        raise NotImplementedError

    def _copy_rest(self, manifest: ExportManifest, staging: Path) -> list[str]:
        """Copy every file that is not a graph or its weights (host plans, tokenizer, processor)."""
        graph_files = {graph.file for graph in manifest.graphs.values()}
        graph_files.update(manifest.weights_files)
        copied = []
        for name in manifest.files:
            if name not in graph_files:
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.export_path / name, target)
                copied.append(name)
        return copied

    def _manifest(
        self, calibration: Calibration, written: tuple, staging: Path, own_files: list[str]
    ) -> ExportManifest:
        """The calibrated export's manifest: the source's, with the quantized graphs and files ``written``
        (``_write_export``'s) and the precision's ``own_files``, and what was done."""
        import onnxruntime

        manifest, (entries, _, _, excluded, files) = calibration.manifest, written
        files = [*files, *own_files]
        quantized_opsets = [entry.opset for entry in entries.values() if entry.opset is not None]
        source = QuantizationSource(str(self.export_dir), sha256_file(self.export_path / "manifest.json"))
        return dataclasses.replace(
            manifest,
            precision=self.precision,
            graphs={**manifest.graphs, **entries},
            opset=max([manifest.opset, *quantized_opsets]),  # fp8 needs 19
            files={name: sha256_file(staging / name) for name in sorted(set(files))},
            versions={**manifest.versions, "onnxruntime": onnxruntime.__version__},
            quantization=self._quantization_entry(source, calibration.samples, excluded, own_files),
        )

    def _quantization_entry(
        self, source: QuantizationSource, samples: list[Sample], excluded: dict, own_files: list[str]
    ) -> QuantizationEntry:
        """The manifest's ``quantization`` section: what this precision did, before the agreement is measured."""
        raise NotImplementedError
