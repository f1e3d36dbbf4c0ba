"""``Pipeline``: image (or video) + prompt -> text over the exported graphs (ONNX Runtime) or their engines (TensorRT).

A short facade over the runtime's stages, one module each:

- ``prepare``: visuals fitted to a bucket, preprocessed, prompts rendered and tokenized -> ``Prepared``;
- ``feeds``: the host work between the graphs (vision feeds, features, positions, prefill feeds from the bucket's
  ``HostPlan``);
- ``sessions``: the graph sessions on one device, the KV cache, the CUDA stream and the transfer counters;
- ``request``: ``GenerationOptions`` + ``Prepared`` -> a ``Request`` that yields one ``Step`` per token.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from luvc.cuda_graphs import DEFAULT_CAPTURE_MIB
from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import BucketEntry
from luvc.runtime import BACKENDS, DEVICE_PREPROCESSING
from luvc.runtime.backend_choice import AUTO, BackendChoice, choose_backend
from luvc.runtime.capture_at_load import CaptureReport, MiB, capture_planned
from luvc.runtime.feeds import GraphFeeds
from luvc.runtime.fit import DEFAULT_FIT, check_policy
from luvc.runtime.opening import GraphOpener, request_graphs
from luvc.runtime.options import GenerationOptions, Step
from luvc.runtime.prepare import Prepared, Preparer
from luvc.runtime.replay import resolve_cuda_graphs
from luvc.runtime.request import Generation, Request, Timings
from luvc.runtime.sessions import RuntimeChoices, Sessions, host_arrays, resolve_device

__all__ = ["Generation", "GenerationOptions", "Pipeline", "Prepared", "Request", "Step", "Timings", "host_arrays"]


class Pipeline:
    """Generation over an export folder on one device. ``backend="trt"`` runs the engines of ``engines_dir`` (built
    from this export by ``luvc-export build``); ``backend="openvino"`` compiles the export's graphs with OpenVINO for
    the CPU, its products in ``openvino_precision`` (``auto``: bf16 where the CPU has bf16 kernels, else f32);
    ``backend="auto"`` picks the one that answers first here (``luvc.runtime.backend_choice``);
    ``providers`` overrides the ONNX Runtime execution providers that ``device`` implies (``cpu``: the CPU EP;
    ``cuda:N``: the CUDA EP of onnxruntime-gpu); ``fit`` is the policy for visuals of other sizes than the buckets
    (``luvc.runtime.fit``); ``manifest`` is the folder's, when the caller holds it before it is written (calibration
    checks a quantized export before saving its manifest); ``float16_compute`` runs an fp16 export's float16
    arithmetic on the CPU as a GPU would (``Sessions``); ``cuda_graphs`` (``auto``, ``on``, ``off``; default ``auto``:
    ``luvc.cuda_graphs.RUNTIME_REPLAY_BY_DEFAULT``) captures each graph's shapes as CUDA graphs once and replays them
    (``luvc.runtime.replay``); ``preprocessing`` is where an image's pixel arithmetic runs (``device``: on the
    pipeline's device from 8-bit pixels, ``luvc.runtime.pixels``; ``processor``: the ``transformers`` image processor
    on the host, parity's reference); ``opener`` is the export's ``GraphOpener`` made before the runtime was imported
    (``GraphOpener.for_cpu_start``: ``run`` opens its graphs while torch imports), with its manifest."""

    def __init__(
        self,
        export_dir: str | Path,
        backend: str = "ort",
        engines_dir: str | Path | None = None,
        providers: list | None = None,
        verify: bool = True,
        device: str | None = None,
        plugin_library: str | Path | None = None,
        fit: str | None = None,
        manifest: ExportManifest | None = None,
        float16_compute: bool = False,
        cuda_graphs: str | None = None,
        openvino_precision: str = "auto",
        preprocessing: str = DEVICE_PREPROCESSING,
        opener: GraphOpener | None = None,
    ) -> None:
        self.fit_policy = check_policy(fit or DEFAULT_FIT)
        if backend not in (*BACKENDS, AUTO):
            critical(f"Backend {backend!r} is not one of {[*BACKENDS, AUTO]}.")
        self.folder = Path(export_dir)
        if opener is not None:
            manifest = opener.manifest
        self.manifest = manifest or ExportManifest.load(self.folder, verify=verify)
        self.backend_choice: BackendChoice | None = None  # what --backend auto chose, and why
        if backend == AUTO:
            where = resolve_device("ort", providers, device)
            measure = functools.partial(first_token_ms, self.folder, self.manifest)
            self.backend_choice = choose_backend(self.manifest, where, engines_dir is not None, measure)
            backend = self.backend_choice.backend
        self.backend = backend
        if backend != "trt" and self.manifest.passes.plugin_nodes:
            runtime = "ONNX Runtime" if backend == "ort" else "OpenVINO"
            critical(
                f"{self.folder} holds luvc plugin nodes, which {runtime} cannot run; run its TensorRT engines "
                "(--backend trt --engines DIR) or re-export without --plugin-nodes."
            )
        if backend == "trt" and engines_dir is None:
            critical("--backend trt needs the engine folder built from this export: pass --engines ENGINE_DIR.")
        self.device = resolve_device(backend, providers, device)
        self.cuda_graphs_choice = cuda_graphs or "auto"
        engines = None if engines_dir is None else Path(engines_dir)
        choices = RuntimeChoices(
            backend,
            self.device,
            providers,
            engines,
            plugin_library,
            float16_compute,
            resolve_cuda_graphs(cuda_graphs, self.device),
            openvino_precision,
        )
        self.sessions = Sessions(self.folder, self.manifest, choices, opener)
        self.feeds = GraphFeeds(self.folder, self.manifest, self.sessions)
        self.preparer = Preparer(self.folder, self.manifest, self.fit_policy, preprocessing)
        self.capture_report: CaptureReport | None = None  # what ``load`` captured as CUDA graphs, where it did

    @property
    def tokenizer(self):
        return self.preparer.tokenizer

    def backend_description(self) -> str:
        """The backend in words (``Sessions.backend_description``), with what ``--backend auto`` measured."""
        described = self.sessions.backend_description()
        if self.backend_choice is None:
            return described
        return f"{described}, chosen by --backend auto: {self.backend_choice.reason}"

    def prepare(self, visuals, prompts) -> Prepared:
        """One ``Prepared`` batch of one visual per prompt (``Preparer.__call__``): fitted to a bucket, preprocessed,
        the prompts (``str`` or ``luvc.prompt.Conversation``) in the export's template or chat template; ``visuals``
        ``None``: prompts without visuals, for the text prefill."""
        return self.preparer(visuals, prompts)

    def request_graphs(self, bucket: BucketEntry | None = None, *, text_only: bool = False) -> list[str]:
        """The graphs requests in ``bucket`` run on this pipeline's backend, or those without a visual (``text_only``),
        or with neither given, any request's (``luvc.runtime.opening.request_graphs``)."""
        return request_graphs(self.manifest, self.backend, bucket, text_only=text_only)

    def begin_loading(self, graphs: Iterable[str]) -> None:
        """Start opening the sessions of ``graphs`` (e.g. ``request_graphs``) in the background where the backend
        opens them there (ONNX Runtime and OpenVINO on the CPU: ``Sessions.begin_opening``), so that loading the
        tokenizer overlaps them; ``load`` and the first request wait for them."""
        self.sessions.begin_opening(graphs)

    def load(
        self,
        bucket: BucketEntry | None = None,
        *,
        text_only: bool = False,
        capture_rows: int | None = None,
        capture_budget_mib: int = DEFAULT_CAPTURE_MIB,
    ) -> Pipeline:
        """Load the tokenizer and what images need (``Preparer.load``) and open the sessions of
        ``request_graphs(bucket, text_only)`` (default: any request's), so timings exclude it; where sessions open in
        the background they begin first, and the tokenizer loads beside them. ``capture_rows`` (the batch the front
        end will run: ``serve``'s ``--max-batch``): where the sessions replay CUDA graphs, capture the planned shapes
        of those graphs up to that batch, within ``capture_budget_mib`` MiB of buffers, now
        (``luvc.runtime.capture_at_load``; what it did: ``capture_report``)."""
        graphs = self.request_graphs(bucket, text_only=text_only)
        self.begin_loading(graphs)
        self.preparer.load()
        self.sessions.open(graphs)
        if capture_rows is not None:
            self.capture_report = capture_planned(self.sessions, graphs, capture_rows, capture_budget_mib * MiB)
        return self

    def release(self) -> None:
        """Close every session and free the KV caches (a later request opens what it needs again)."""
        self.sessions.release()

    def request(self, prepared: Prepared, options: GenerationOptions | None = None) -> Request:
        """A generation for ``prepared`` under ``options``; iterate it for ``Step``s."""
        options = GenerationOptions() if options is None else options
        if not isinstance(options, GenerationOptions):
            critical(f"Generation options must be a GenerationOptions, not {options!r} (e.g. GenerationOptions(64)).")
        return Request(self.sessions, self.feeds, prepared, options, self.tokenizer)

    def _prepared(self, visuals, prompts) -> Prepared:
        if isinstance(visuals, Prepared):
            return visuals
        if prompts is None:
            critical("Give the prompts with the visuals, or a Prepared batch from Pipeline.prepare().")
        return self.prepare(visuals, prompts)

    def generate(self, visuals, prompts=None, options: GenerationOptions | None = None) -> Generation:
        """Text for one prompt per visual (a batch that fits one bucket; ``visuals=None``: text-only prompts), or for a
        ``Prepared`` batch."""
        request = self.request(self._prepared(visuals, prompts), options)
        tokens = np.stack([step.tokens for step in request], axis=1)
        return Generation(list(request.texts), tokens, request.timings, request.ended_reasons())

    def stream(
        self,
        visual,
        prompt: str | None = None,
        options: GenerationOptions | None = None,
        timings: Timings | None = None,
    ) -> Iterator[str]:
        """The text of one request, piece by piece as tokens arrive (the pieces join to ``generate``'s text);
        ``timings``, when given, are filled in as it goes."""
        request = self.request(self._prepared(visual, prompt), options)
        if timings is not None:
            request.timings = timings
            timings.preprocess_ms = request.prepared.preprocess_ms
        yield from request.pieces()

    def greedy(self, prepared: Prepared, max_new_tokens: int) -> tuple[np.ndarray, np.ndarray, Request]:
        """``(B, max_new_tokens)`` greedy tokens, ``(B, steps, V)`` logits (no stop tokens), and the finished
        request (its visual features and prefill outputs)."""
        options = GenerationOptions(max_new_tokens, stop_token_ids=(), keep_logits=True)
        request = self.request(prepared, options)
        steps = list(request)
        logits = [step.logits for step in steps if step.logits is not None]  # keep_logits: every step's
        return np.stack([step.tokens for step in steps], axis=1), np.stack(logits, axis=1), request


def first_token_ms(folder: Path, manifest: ExportManifest, backend: str) -> float:
    """Milliseconds from a prepared request to its first token on ``backend`` after a warm-up request (what
    ``--backend auto`` compares): a synthetic visual of the export's first bucket, or a text prompt where it has
    none."""
    from luvc.samples import synthetic_visual

    pipeline = Pipeline(folder, backend=backend, manifest=manifest)
    buckets = list(manifest.buckets.values())
    visuals = [synthetic_visual(buckets[0].size, 0)] if buckets else None
    prepared = pipeline.prepare(visuals, ["Describe the image."])
    pipeline.load(prepared.bucket)
    options = GenerationOptions(1, stop_token_ids=())
    pipeline.generate(prepared, options=options)
    timings = pipeline.generate(prepared, options=options).timings
    pipeline.release()
    return timings.first_token_ms
