"""torch -> ONNX for LUVC-compressed VLMs: the export of a whole model into a folder.

``OnnxFromGraphSpec`` (``luvc.export.convert``) makes each graph; ``OnnxFromCompressedModel`` runs the graph passes on
every graph of every bucket, lints them, writes them with host metadata and ``manifest.json`` into a temporary folder,
and renames the folder when everything is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

import luvc
from luvc.compress.config import LUVCConfig
from luvc.compress.criteria import CRITERIA
from luvc.errors import critical, warn
from luvc.export import convert
from luvc.export.bucket_plan import Bucket, kv_capacities, plan_bucket, plan_mixed_bucket
from luvc.export.buckets import bucket_name
from luvc.export.convert import OnnxFromGraphSpec
from luvc.export.converter_settings import prepare_registry, report_settings, settings_applied
from luvc.export.graph_workers import (
    GraphWorkers,
    asked_workers_note,
    cuda_initialized,
    default_workers,
    other_threads,
)
from luvc.export.graphs import GraphSpec, decode_spec, embed_spec, prefill_specs, text_prefill_specs, vision_spec
from luvc.export.host_plan import HostPlan
from luvc.export.lint import check_graph
from luvc.export.manifest import (
    EXPORT_OUTPUT,
    ExportManifest,
    bucket_entry,
    constant_folded_initializers,
    external_data_files,
    geometry_entry,
    io_entries,
    sha256_file,
    template_entry,
)
from luvc.export.manifest_entries import GraphEntry, KVCacheEntry, PassesEntry, ProfileEntry, TemplateEntry
from luvc.export.naming import place_of, unit_prefix
from luvc.export.passes import PASSES, keep_fp32_islands, run_passes
from luvc.export.plugin_ops import PLUGIN_SPU_VARIANTS
from luvc.export.profile import AUTO_EXTERNAL_BYTES, ExportProfile
from luvc.export.source import ModelEntryInBackground
from luvc.export.stage_times import StageTime, StageTimes
from luvc.export.weights import WEIGHTS_FILE, SharedWeights, StableMemory, WeightsPart, load_inline
from luvc.loaders import BaseLoader, as_path, functional
from luvc.models.base import VLMAdapter, check_fp16_range
from luvc.models.weights import cast_in_place
from luvc.pixel_recipe import recorded_rules
from luvc.processing import PROCESSOR_FOLDER, load_processor
from luvc.progress import graph_progress
from luvc.staging import output_claim, staged_folder
from luvc.standalone_tokenizer import TOKENIZER_FOLDER, matches_transformers

STEPS = ("converting", "graph passes", "linting", "saving")  # what follows tracing


def graphs_use_weights_file(setting: str, weight_bytes: int) -> bool:
    """Whether an export's graphs keep their weights in the shared ``weights.data``: ``always``; ``never``; ``auto``
    when the model's weights pass ``AUTO_EXTERNAL_BYTES``. One answer for every graph of an export, so tensors that
    graphs share (a tied embedding and LM head; the LLM of the prefill and decode graphs) are on disk once."""
    return setting == "always" or (setting == "auto" and weight_bytes > AUTO_EXTERNAL_BYTES)


def save_model(
    model: onnx.ModelProto, path: Path, external: bool, weights: SharedWeights, source: Path | None = None
) -> list[str]:
    """Write ``model`` to ``path``, its weights into the export's shared ``weights`` file when ``external``; return
    its files (the graph, then the external-data file it reads). Tensors already in ``weights`` stay where they are;
    ``source``: the folder of other external data the model references now, read tensor by tensor."""
    if external:
        weights.externalize(model, source)
    elif source is not None:
        onnx.load_external_data_for_model(model, str(source))
    partial = path.with_name(path.name + ".partial")
    onnx.save_model(model, str(partial))
    partial.replace(path)
    return [path.name, *external_data_files(model)]


def _versions() -> dict[str, str]:
    import onnxscript
    import transformers

    return {
        "luvc_export": luvc.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "exporter": "torch.export (non-strict) + torch.onnx.export(dynamo=True)",
        **{f"setting.{name}": state for name, state in settings_applied().items()},
    }


def _node_prefixes(model: onnx.ModelProto) -> list[str]:
    """The LUVC node prefixes of a graph (``/vision/blocks.{i}/oim``, ``/llm/layers.{i}/spu``), in layer order."""
    units = {place for node in model.graph.node if (place := place_of(node.name)) is not None and place.unit}
    return [
        unit_prefix(place.stack, place.index) for place in sorted(units, key=lambda place: (place.stack, place.index))
    ]


def host_plan(vision: GraphSpec | None, bucket: Bucket) -> HostPlan:
    """A bucket's host plan: its vision graph's metadata inputs (a mixed bucket has none of its own), the prompt
    positions and a video's time positions."""
    feeds = vision.feeds if vision is not None else {}
    metadata = {name: tensor.numpy() for name, tensor in feeds.items() if name != "pixel_values"}
    prompt = bucket.prompt_position_ids.numpy()
    return HostPlan(metadata, prompt, bucket.next_position, bucket.video_times, bucket.visual_start)


def check_exportable(config: LUVCConfig, plugin_nodes: bool) -> None:
    """Refuse a pruning criterion the graphs cannot hold (one that ranks by attention probabilities), and, for plugin
    nodes, one the ``SpectrumPrune`` plugin does not score by."""
    variant = config.spu_variant
    refusal = CRITERIA[variant].export_refusal if variant in CRITERIA else None
    if refusal:
        critical(f"{refusal}; export another method.")
    if plugin_nodes and variant != "none" and variant not in PLUGIN_SPU_VARIANTS:
        critical(
            f"--plugin-nodes traces each SPU layer as a SpectrumPrune node, which scores by "
            f"{list(PLUGIN_SPU_VARIANTS)} "
            f"only; export {variant} without --plugin-nodes."
        )
    changed = [
        f"{name}={value}"
        for name, value, default in (
            ("spu_keep", config.spu_keep, "high"),
            ("spu_input", config.spu_input, "residual"),
            ("spu_lowpass", config.spu_lowpass, "raster"),
        )
        if value not in (None, default)
    ]
    if plugin_nodes and changed:
        critical(
            f"--plugin-nodes traces each SPU layer as a SpectrumPrune node, which scores the residual stream with the "
            f"raster low-pass and keeps the highest scores; {', '.join(changed)} exports without --plugin-nodes."
        )


@dataclasses.dataclass
class OnnxFromCompressedModel(BaseLoader[Path]):
    """Loader: export ``adapter``'s model under LUVC ``config`` to the folder ``out`` and return its path.

    Graphs: ``vision_{H}x{W}`` and ``prefill_{H}x{W}`` per image-size bucket (``..._{F}x{H}x{W}`` per video
    bucket), ``embed``, ``decode`` and ``prefill_text`` (prompts without visuals) once; a hybrid model's prefill
    graphs each with their shorter rungs ``..._len{N}`` (``luvc.export.graphs.ladder_lengths``).
    ``config=None`` applies the LUVC defaults; ``LUVCConfig.off()`` exports the uncompressed baseline through the
    same code path. The model is cast in place to the profile's precision. Graph passes (``luvc.export.passes``) run
    on every graph unless ``passes=False``; ``plugin_nodes`` traces each OIM/SPU unit as one plugin node
    (``luvc.export.plugin_ops``; for engines built with the LUVC plugin library only). ``jobs`` processes export the
    graphs side by side (``luvc.export.graph_workers``; ``None``: its default, 1: this process alone), with the same
    files as a single process writes. Nothing appears at ``out`` until every file is written and linted.
    """

    adapter: VLMAdapter
    out: str | Path
    profile: ExportProfile | None = None
    config: LUVCConfig | None = None
    overwrite: bool = False
    show_progress: bool = True
    passes: bool = True
    plugin_nodes: bool = False
    times: StageTimes = dataclasses.field(default_factory=StageTimes)  # where the wall time went, stage by stage
    jobs: int | None = None  # processes exporting graphs side by side (None: luvc.export.graph_workers' default)

    def __post_init__(self) -> None:
        self.out = as_path(self.out)

    @property
    def out_path(self) -> Path:
        """Where the export goes."""
        return Path(self.out)

    def call_impl(self) -> Path:
        with output_claim(self.out_path, self.overwrite, EXPORT_OUTPUT, self._inputs()):  # before tracing anything
            return self._export()

    def _shifts(self, bucket: Bucket) -> bool:
        """Whether ``bucket``'s prefill graph takes ``visual_shift``: where its graph reads the visual spans (SPU cuts,
        DeepStack planes), except with the SpectrumPrune plugin, which takes them at the template's positions."""
        reads_spans = bool(bucket.budget_plan.prune_layers()) or self.adapter.deepstack_planes > 0
        return reads_spans and not self.plugin_nodes

    def _inputs(self) -> tuple[Path, ...]:
        """The checkpoint folder the export reads (none for a built-in model)."""
        source = Path(self.adapter.name)
        return (source,) if source.is_dir() else ()

    def _export(self) -> Path:
        adapter = self.adapter
        refusal = adapter.why_not_exportable()
        if refusal:
            critical(refusal)
        adapter.apply_luvc(self.config)
        check_exportable(adapter.luvc_config, self.plugin_nodes)
        profile = (self.profile or ExportProfile()).resolve(adapter)
        if adapter.model.dtype != profile.dtype:
            origin = str(adapter.model.dtype).removeprefix("torch.")
            cast_in_place(adapter.model, profile.dtype)
            check_fp16_range(adapter.model, origin)
        buckets = [plan_bucket(adapter, size) for size in profile.image_sizes]
        buckets += [plan_bucket(adapter, size, frames) for frames, *size in profile.video_sizes]
        named = {bucket.name: bucket for bucket in buckets}
        buckets += [
            plan_mixed_bucket(adapter, named[bucket_name(image)], named[bucket_name(video[1:], video[0])])
            for image, video in profile.mixed_sizes
        ]
        specs: list[tuple[GraphSpec, Bucket | None]] = [(embed_spec(adapter, profile), None)]
        for bucket in buckets:  # a mixed bucket runs its parts' vision graphs
            vision = () if bucket.parts else ((vision_spec(adapter, bucket, profile), bucket),)
            prefills = prefill_specs(adapter, bucket, profile, self._shifts(bucket))
            specs += [*vision, *((spec, bucket) for spec in prefills)]
        capacities = kv_capacities(buckets, profile)
        specs.append((decode_spec(adapter, profile, capacities), None))
        longest_text = min(capacities) - profile.max_new_tokens  # a text-only prompt and its answer fit every layer
        specs += [(spec, None) for spec in text_prefill_specs(adapter, profile, longest_text)]

        times = self.times
        model_bytes = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
        external = graphs_use_weights_file(profile.external_data, model_bytes)
        workers = self._worker_count(len(specs))
        with staged_folder(self.out_path, self.overwrite, EXPORT_OUTPUT, self._inputs()) as staging:
            if external and workers > 1:
                # the merged file, and what workers write themselves: the tensors that leave a graph only after it is
                # converted (under INLINE_BYTES while tracing); larger ones view the model's memory, written here
                need = model_bytes + sum(spec.weight_bytes(below=convert.INLINE_BYTES) for spec, _ in specs)
                workers = self._workers_the_disk_holds(workers, staging, need)
            writer = _GraphWriter(self, specs, staging, profile, external)
            costs = [self._cost(spec) for spec, _ in specs]
            with self._workers(writer, costs, workers) as pool:  # forked before the hashing thread starts
                source = ModelEntryInBackground(adapter)  # hashes the weights while the graphs are traced
                graphs, files, hashes = self._write_graphs(writer, costs, pool)
            bucket_entries = {}
            with times.stage("preprocessing"):
                files += self._save_preprocessing(staging)
                # the rules of the processor as the runtime loads it from the folder (its PIL form)
                image_rules = recorded_rules(load_processor(staging))
                template = template_entry(adapter)
                tokenizer_standalone = reads_standalone(staging, template)
            vision_specs = {bucket.name: spec for spec, bucket in specs if spec.kind == "vision" and bucket is not None}
            for bucket in buckets:
                host = staging / f"host_{bucket.name}.npz"
                host_plan(vision_specs.get(bucket.name), bucket).save(host)
                files.append(host.name)
                bucket_entries[bucket.name] = bucket_entry(bucket)
            with times.stage("hash"):
                hashes = {name: hashes.get(name) or sha256_file(staging / name) for name in sorted(files)}
                model_entry = source.result()
            manifest = ExportManifest(
                model=model_entry,
                luvc=adapter.luvc_config,
                precision=profile.precision,
                opset=profile.opset,
                versions=_versions(),
                profile=profile,
                template=template,
                geometry=geometry_entry(adapter),
                passes=PassesEntry(self.passes, self.plugin_nodes),
                kv_cache=KVCacheEntry(profile.kv_update, tuple(capacities)),
                buckets=bucket_entries,
                graphs=graphs,
                files=hashes,
                image_rules=image_rules,
                tokenizer_standalone=tokenizer_standalone,
            )
            with times.stage("manifest"):
                manifest.save(staging)
        return self.out_path

    def _worker_count(self, graphs: int) -> int:
        """The graph worker processes for ``graphs`` graphs: ``--jobs`` (noted when it asks for more than the graphs
        or the CPUs) or the default, refused where forking is unsafe."""
        workers = min(self.jobs or default_workers(graphs), graphs)
        note = asked_workers_note(self.jobs, graphs) if self.jobs else None
        if note:
            warn(note)
        if workers > 1 and cuda_initialized():
            critical(
                f"--jobs {self.jobs} forks graph workers, which cannot use CUDA once this process has initialized it; "
                "export with --jobs 1, or before using the GPU in this process."
            )
        if workers > 1 and other_threads():
            critical(
                f"--jobs {self.jobs} forks graph workers, which is not safe while other threads run here "
                f"({', '.join(other_threads())}); export with --jobs 1, or before starting them."
            )
        return workers

    def _workers_the_disk_holds(self, workers: int, staging: Path, need: int) -> int:
        """``workers``, or 1 when the disk under ``staging`` may not hold the ``need`` bytes graph workers write: each
        graph's smaller tensors in a file of its own until merged into ``weights.data``, and the merged file. With
        ``--jobs`` given, too little room is an error naming both sizes."""
        free = shutil.disk_usage(staging).free
        if free >= need:
            return workers
        if self.jobs:
            critical(
                f"--jobs {self.jobs} writes each graph's smaller tensors to a file of its own until they are "
                f"merged: up to {need / 1e9:.1f} GB beside {self.out}, where {free / 1e9:.1f} GB are free; free some "
                "space or pass --jobs 1 (each tensor written once)."
            )
        return 1

    def _workers(self, writer: _GraphWriter, costs: list[int], workers: int) -> contextlib.AbstractContextManager:
        """The graph worker processes that run ``writer`` (``workers`` above 1; the dearest graph by ``costs``
        first), forked now; else nothing."""
        if workers < 2:
            return contextlib.nullcontext()
        self.times.workers = workers
        with self.times.stage("registry"):  # what each worker would build first, inherited instead
            report_settings()  # said once, before the workers fork (they inherit that it was)
            prepare_registry(writer.profile.opset)
        jobs = [functools.partial(writer.write, index) for index in range(len(writer.specs))]
        return GraphWorkers(jobs, costs, workers)

    def _write_graphs(self, writer: _GraphWriter, costs: list[int], pool: GraphWorkers | None):
        """Write every graph of ``writer``: by the worker processes of ``pool``, or one after another here; returns
        their manifest entries, the files written and the shared weights file's hash (when the graphs use one).
        ``costs``: each graph's share of the work, for the progress and its estimate of the time left."""
        specs, staging = writer.specs, writer.staging
        weights = SharedWeights(staging)
        results: dict[int, GraphResult] = {}  # as graphs finish
        merged: list[GraphResult] = []  # in graph order, each with its weights in the shared file
        began = time.perf_counter()
        with graph_progress(bool(self.show_progress), "step") as progress:
            overall = progress.add_task("export", total=sum(costs), step="")
            tasks = {}

            def start(index: int) -> None:
                tasks[index] = progress.add_task(specs[index][0].name, total=len(STEPS) + 1, step="tracing")

            def step(index: int, label: str) -> None:
                if index not in tasks:
                    start(index)
                progress.update(tasks[index], advance=1 if label in STEPS else 0, step=label)

            def done(index: int, result: GraphResult) -> None:
                results[index] = result
                self.times.records.extend(result.times)
                while len(merged) in results:  # in graph order: the shared file's layout does not depend on timing
                    merged.append(results[len(merged)])
                    if merged[-1].part is not None:  # a worker's weights, as soon as the graphs before are in
                        with self.times.stage("weights merge", specs[len(merged) - 1][0].name):
                            merged[-1] = merged[-1].merged_into(weights, staging, writer.stable)
                if index not in tasks:
                    start(index)
                progress.update(tasks[index], completed=len(STEPS) + 1, step="done")
                progress.update(overall, advance=costs[index])
                finished = progress.tasks[overall].completed
                left = (time.perf_counter() - began) / finished * (sum(costs) - finished)
                progress.update(overall, step=f"about {_duration(left)} left" if finished < sum(costs) else "done")

            if pool is not None:
                pool.wait(step, done)
            else:
                for index in range(len(specs)):
                    done(index, writer.write(index, functools.partial(step, index), weights))
        graphs = {spec.name: result.entry for (spec, _), result in zip(specs, merged)}
        files = [name for result in merged for name in result.files]
        return graphs, files, {weights.path.name: weights.sha256()} if writer.external else {}

    def _cost(self, spec: GraphSpec) -> int:
        """A graph's share of the export's work, in layers traced: the encoder's blocks, the LLM's layers, or one."""
        if spec.kind == "vision":
            return self.adapter.vision_depth
        return 1 if spec.kind == "embed" else self.adapter.num_layers

    def _save_preprocessing(self, staging: Path) -> list[str]:
        """The tokenizer and the image processor, so the runtime preprocesses exactly as the model does."""
        adapter = self.adapter
        if adapter.tokenizer is None or adapter.image_processor is None:
            critical(
                "The adapter has no tokenizer or image processor to ship with the export; load it with load_model."
            )
        adapter.tokenizer.save_pretrained(staging / TOKENIZER_FOLDER)
        adapter.image_processor.save_pretrained(staging / PROCESSOR_FOLDER)
        return [str(path.relative_to(staging)) for path in sorted(staging.glob("*/*")) if path.is_file()]


def reads_standalone(staging: Path, template: TemplateEntry) -> bool:
    """Whether the tokenizer saved in ``staging`` reads by ``tokenizers`` alone as ``transformers`` reads it, the
    template's texts among the probes (``luvc.standalone_tokenizer.matches_transformers``)."""
    texts = tuple(text for text in dataclasses.asdict(template).values() if isinstance(text, str))
    return matches_transformers(staging / TOKENIZER_FOLDER, texts)


@dataclasses.dataclass(frozen=True)
class GraphResult:
    """What exporting one graph left in the staging folder: its manifest entry, its files, where the times went
    and, from a graph worker, the weights it left to the exporter (``part``: its own file and the views of the
    model's memory it did not write)."""

    entry: GraphEntry
    files: list[str]
    times: list[StageTime]
    part: WeightsPart | None = None

    def merged_into(self, weights: SharedWeights, staging: Path, stable: StableMemory) -> GraphResult:
        """This graph with its tensors in the export's shared ``weights`` file (each distinct tensor once): those of
        its part file moved, the views of the model's memory written from ``stable``; its graph file rewritten and
        the part removed."""
        if self.part is None:
            raise ValueError(f"{self.entry.file} was written here, with its weights in place: nothing to merge")
        path = staging / self.entry.file
        model = onnx.load(str(path), load_external_data=False)
        weights.absorb(model, self.part, staging, stable)
        written = save_model(model, path, False, weights)  # every tensor is in ``weights`` now: nothing to move
        (staging / self.part.file).unlink()
        entry = dataclasses.replace(self.entry, external_data=tuple(written[1:]))
        return GraphResult(entry, written, self.times)


@dataclasses.dataclass
class _GraphWriter:
    """Writes one graph of an export into its staging folder (in the exporter's process or in a graph worker)."""

    exporter: OnnxFromCompressedModel
    specs: list[tuple[GraphSpec, Bucket | None]]
    staging: Path
    profile: ProfileEntry
    external: bool
    stable: StableMemory = dataclasses.field(init=False)  # the model's memory, unchanged while the export runs

    def __post_init__(self) -> None:
        model = self.exporter.adapter.model
        self.stable = StableMemory([*model.parameters(), *model.buffers()])

    def write(self, index: int, report: Callable[[str], None], weights: SharedWeights | None = None) -> GraphResult:
        """Trace, convert, pass, lint and save graph ``index``; ``report(step)`` as it moves on. ``weights``: the
        export's shared weights file; without it (a graph worker) the graph's weights go to a file of its own, but
        for the views of the model's memory, which the exporter writes from its own (``GraphResult.merged_into``)."""
        spec, bucket = self.specs[index]
        exporter, staging = self.exporter, self.staging
        times = StageTimes()
        labels = iter(STEPS)
        own_file = weights is None and self.external  # a graph worker's: merged into the export's by the exporter
        if weights is None:
            weights = SharedWeights(staging, f"{spec.name}.{WEIGHTS_FILE}.part", defer_views=True)
        report("tracing")
        model = OnnxFromGraphSpec(
            spec,
            self.profile.opset,
            on_step=lambda: report(next(labels)),
            kv_update=self.profile.kv_update,
            weights=weights if self.external else None,
            stable=self.stable,
            plugin_config=exporter.adapter.luvc_config if exporter.plugin_nodes else None,
            times=times,
        )()
        # without the passes, fp16 graphs still need their FP32 islands (a no-op on fp32 graphs)
        passes = PASSES if exporter.passes else (keep_fp32_islands,)
        if self.external and exporter.passes:  # what constant folding reads must be in the graph's own bytes
            load_inline(model, constant_folded_initializers(model), staging, weights)
        model, pass_stats = run_passes(model, passes, times, spec.name, report)
        report(next(labels))
        with times.stage("lint", spec.name):
            tokens = bucket.tokens_per_image if bucket is not None else None
            check_graph(model, spec.name, tokens, functools.partial(weights.array, folder=staging))
        report(next(labels))
        path = staging / f"{spec.name}.onnx"
        with times.stage("save", spec.name):
            written = save_model(model, path, self.external, weights)
        entry = GraphEntry(
            file=path.name,
            kind=spec.kind,
            bucket=spec.bucket,
            inputs=tuple(io_entries(model.graph.input)),
            outputs=tuple(io_entries(model.graph.output)),
            node_prefixes=tuple(_node_prefixes(model)),
            num_nodes=len(model.graph.node),
            external_data=tuple(written[1:]),
            passes=tuple(stat.entry() for stat in pass_stats),
            rung_of=spec.rung_of,
        )
        part = weights.part() if own_file else None
        return GraphResult(entry, written, times.records, part)


def _duration(seconds: float) -> str:
    """``"42 s"`` or ``"3 min 5 s"``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


export_model = functional(OnnxFromCompressedModel, "export_model")
