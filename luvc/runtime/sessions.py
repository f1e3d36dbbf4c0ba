"""``Sessions``: the graph sessions of one export on one device, and what they share.

One session per graph name, opened on first use (ONNX Runtime over the export's graphs, or TensorRT over the
engines of ``luvc-export build``, whose engine-manifest checks run up front); the fixed-capacity KV cache of the
current batch size; the CUDA stream every session and torch op of a request runs on; whether each graph's shapes are
captured and replayed as CUDA graphs (``luvc.runtime.replay``); and the counters of what crossed between host and
device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from luvc.engines.static_shapes import PREFILL_LENGTH_STEP, REPLAYED_KINDS, prefill_shape, replay_bound
from luvc.errors import critical
from luvc.export.manifest import ExportManifest, checked_graph_path
from luvc.export.manifest_entries import GraphEntry
from luvc.runtime.base_session import TORCH_DTYPES, BaseSession, SessionSetup, TransferStats
from luvc.runtime.kv_cache import KVCache, KVLayout, StepLayout
from luvc.runtime.opening import GraphOpener, OpenedGraph, openvino_runtime, shared_weights
from luvc.runtime.openvino_runtime import OpenVinoRuntime
from luvc.runtime.ort_opening import OrtOpening, basic_optimizations_only, ort_providers
from luvc.runtime.ort_session import OrtSession

if TYPE_CHECKING:
    from luvc.engines.trt_module import TensorRT


def resolve_device(backend: str, providers: Sequence | None, device: str | None) -> torch.device:
    """The pipeline's device: as given; else CUDA for TensorRT or a CUDA execution provider, else the CPU."""
    if device is not None:
        try:
            resolved = torch.device(device)
        except RuntimeError:
            critical(f"Device {device!r} is not a torch device; use cpu or cuda:N (--device).")
        if resolved.type not in ("cpu", "cuda"):
            critical(f"Device {device!r} is not supported; use cpu or cuda:N (--device).")
        if backend == "openvino" and resolved.type != "cpu":
            critical("The OpenVINO backend runs on the CPU; use --device cpu, or --backend ort/trt on a GPU.")
        if resolved.type == "cuda" and not torch.cuda.is_available():
            critical(f"Device {device} needs CUDA, which this PyTorch does not see; use --device cpu.")
        if backend == "trt" and resolved.type != "cuda":
            critical("TensorRT engines run on a CUDA device; use --device cuda:N or --backend ort.")
        # tensors report cuda:N; a bare "cuda" would never compare equal to their device
        return torch.device("cuda", torch.cuda.current_device()) if resolved == torch.device("cuda") else resolved
    names = [p[0] if isinstance(p, tuple) else p for p in providers or ()]
    return torch.device("cuda", 0) if backend == "trt" or "CUDAExecutionProvider" in names else torch.device("cpu")


def host_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """NumPy copies of device tensors (for reports, calibration and parity, never in the decode loop)."""
    return {name: tensor.detach().to("cpu", copy=True).numpy() for name, tensor in tensors.items()}


@dataclasses.dataclass(frozen=True)
class RuntimeChoices:
    """How a pipeline runs its export: ``backend`` (``ort``; ``trt`` runs the engines of ``engines_dir``, built with
    the plugin library at ``plugin_library`` when moved), the ``device``, ONNX Runtime ``providers`` instead of those
    the device implies, ``float16_compute`` (an fp16 export's float16 arithmetic on the CPU, as a GPU runs it: what
    parity checks), whether graphs replay as CUDA graphs (``cuda_graphs``, resolved), and the precision OpenVINO
    computes products in (``openvino_precision``: ``auto``, ``bf16`` or ``f32``; ``luvc.runtime.openvino_graph``)."""

    backend: str = "ort"
    device: torch.device = torch.device("cpu")
    providers: list | None = None
    engines_dir: Path | None = None
    plugin_library: str | Path | None = None
    float16_compute: bool = False
    cuda_graphs: bool = False
    openvino_precision: str = "auto"


class Sessions:
    """The sessions of export ``folder`` run as ``choices`` say. On the CPU an fp16 export computes in float32 (ONNX
    Runtime's CPU kernels would convert anyway); ``choices.float16_compute`` rounds each value it computed in float16
    to float16 (``luvc.runtime.float32_graph.float32_compute``). ``opener`` is one made for this export before the
    runtime was imported (``GraphOpener.for_cpu_start``), whose graphs may be opening already; by default one of its
    own."""

    def __init__(
        self, folder: Path, manifest: ExportManifest, choices: RuntimeChoices, opener: GraphOpener | None = None
    ) -> None:
        device, backend = choices.device, choices.backend
        self.folder, self.manifest, self.backend, self.device = folder, manifest, backend, device
        self.cuda_graphs = choices.cuda_graphs and device.type == "cuda"
        # prefill sequences are padded to a multiple of this on a GPU (``prefill_shape``), replaying or not
        self.prefill_step = PREFILL_LENGTH_STEP if device.type == "cuda" else 1
        self.engines_dir, self.plugin_library = choices.engines_dir, choices.plugin_library
        # without CUDA a TensorRT pipeline still opens (its engine checks run first); its sessions then refuse
        on_gpu = device.type == "cuda" and torch.cuda.is_available()
        self.cuda_stream = torch.cuda.Stream(device) if on_gpu else None
        stream = self.cuda_stream.cuda_stream if self.cuda_stream is not None else None
        self.providers = choices.providers or ort_providers(device, stream)
        self.stats = TransferStats()  # the pipeline's own host <-> device copies (sessions count theirs)
        self._tensorrt: TensorRT | None = None  # the module the engines were built with, once checked
        self._engines = self._checked_engines() if backend == "trt" else {}
        if opener is None:
            opener = self._own_opener(choices)
        elif opener.backend != backend or device.type != "cpu" or choices.float16_compute:
            raise ValueError(f"an opener for {opener.backend} on the CPU cannot open {backend} graphs on {device}")
        elif Path(opener.folder).resolve() != Path(folder).resolve():
            raise ValueError(f"an opener of the export in {opener.folder} cannot open the graphs of {folder}")
        self.opener = opener
        # one copy of the weights for all sessions and engines
        self.weights = opener.weights
        self.openvino = opener.runtime if isinstance(opener.runtime, OpenVinoRuntime) else None
        self.activations = None
        if backend == "trt" and on_gpu:
            from luvc.runtime.activations import SharedActivations

            self.activations = SharedActivations(device, self._tensorrt)
        self._open: dict[str, BaseSession] = {}
        self._opening_times: list[tuple[float, float]] = []  # when each session opened on first use began and ended
        self._caches: dict[int, KVCache] = {}
        # TensorRT's KV-cache update layer (tensor-scatter) writes in place; its ScatterElements output may not share
        # memory with the input, so that form alternates between two sets of buffers on TensorRT
        self.kv_aliased = backend != "trt" or self.manifest.kv_cache.update == "tensor-scatter"
        # the GPU check's: every replayed call also runs plainly, and outputs further apart than this are recorded
        # (``replay_divergences``); set before the sessions open
        self.verify_replay_tolerance: float | None = None

    def _own_opener(self, choices: RuntimeChoices) -> GraphOpener:
        """The opener of these sessions where none was given: in the background on the CPU (``GraphOpener``)."""
        weights = shared_weights(self.folder, self.manifest, self.device, choices.float16_compute)
        runtime: OrtOpening | OpenVinoRuntime | None = None  # TensorRT's engines open on first use
        if self.backend == "openvino":
            runtime = openvino_runtime(self.folder, choices.openvino_precision)
        elif self.backend == "ort":
            runtime = OrtOpening(self.providers, weights, basic_optimizations_only(self.manifest.precision))
        return GraphOpener(self.manifest, weights, runtime, in_background=self.device.type == "cpu")

    def setup(self, graph: GraphEntry, opened: OpenedGraph | None = None) -> SessionSetup:
        """What the session of ``graph`` shares with the others, its kind (which decides whether it replays), and the
        graph as it ``opened`` in the background."""
        return SessionSetup(
            device=self.device,
            weights=self.weights,
            cuda_graphs=self.cuda_graphs and graph.kind in REPLAYED_KINDS,
            providers=self.providers,
            basic_optimizations=basic_optimizations_only(self.manifest.precision),
            stream=self.cuda_stream,
            tensorrt=self._tensorrt,
            activations=self.activations,
            openvino=self.openvino,
            replay_bound=replay_bound(self.manifest, graph.kind),
            graph_kind=graph.kind,
            opened=opened,
        )

    def begin_opening(self, names: Iterable[str]) -> None:
        """Start opening the sessions of graphs ``names`` on background threads (``GraphOpener.begin``), so that the
        caller's own work (loading the tokenizer) overlaps them; a use of one waits for it, and a failure to open is
        raised there. Where the backend opens none in the background, nothing: each opens on first use."""
        self.opener.begin(name for name in names if name not in self._open)

    def cancel_opening(self) -> None:
        """Cancel the background openings not yet begun (``GraphOpener.cancel``); a cancelled graph opens on its first
        use as any other."""
        self.opener.cancel()

    def __getitem__(self, name: str) -> BaseSession:
        """The session of graph ``name`` (created and activated on first use, or waited for if it is opening)."""
        if name not in self._open:
            session = self._new_session(name, self.opener.take(name))
            self._open[name] = session
            if session.replayer is not None:
                session.replayer.verify_tolerance = self.verify_replay_tolerance
        return self._open[name]

    def _new_session(self, name: str, opened: OpenedGraph | None = None) -> BaseSession:
        """A session of graph ``name``, activated: over ``opened`` where it opened in the background, else opened
        now (and timed)."""
        began = time.perf_counter()
        graph = self.manifest.graphs[name]
        session: BaseSession
        if self.backend == "ort":
            path = checked_graph_path(self.folder, name, self.manifest)
            session = OrtSession(path, graph.inputs, graph.outputs, self.setup(graph, opened))
        elif self.backend == "openvino":
            from luvc.runtime.openvino_session import OpenVinoSession

            path = checked_graph_path(self.folder, name, self.manifest)
            session = OpenVinoSession(path, graph.inputs, graph.outputs, self.setup(graph, opened))
        else:
            session = self._trt_session(name, graph)
        session.activate()
        if opened is None:
            self._opening_times.append((began, time.perf_counter()))
        return session

    def open(self, names: Iterable[str]) -> None:
        """Open the sessions of graphs ``names`` now (so that a request's timings exclude it): in the background
        where the backend opens them there (``begin_opening``)."""
        names = list(names)
        self.begin_opening(names)
        for name in names:
            self[name]

    def opening_seconds(self) -> float:
        """Wall-clock seconds from the first session's opening to the last one's end, so far (sessions that opened
        side by side, or beside other work, count once; those opened in the background with the opener's times)."""
        times = self._opening_times + self.opener.times
        if not times:
            return 0.0
        return max(end for _, end in times) - min(begin for begin, _ in times)

    def close(self, name: str) -> None:
        """Close the session of graph ``name`` if it is open (a later use opens it again)."""
        session = self._open.pop(name, None)
        if session is not None:
            session.deactivate()

    def _checked_engines(self) -> dict[str, tuple]:
        """Every engine's bytes, profile and weights after the engine-manifest checks, up front (and the TensorRT
        module they were built with): a truncated or foreign engine is named before anything runs."""
        from luvc.engines.cuda_device import device_capability
        from luvc.engines.manifest import EngineManifest
        from luvc.engines.plugin_library import plugin_library_for_run
        from luvc.engines.trt_module import import_tensorrt

        if self.engines_dir is None:  # the TensorRT backend is chosen with its engines
            critical("The TensorRT backend needs the engines' folder; pass --engines.")
        engines = EngineManifest.load(self.engines_dir)
        tensorrt = self._tensorrt = import_tensorrt(engines.tensorrt.module)
        plugins = plugin_library_for_run(engines.plugin_library, self.plugin_library)
        checked, capability = {}, device_capability(self.device.index or 0)
        for name in self.manifest.graphs:
            engine = engines.check_engine(self.engines_dir, name, tensorrt, capability, export=self.manifest)
            entry = engines.engines[name]
            profile = {key: [list(s) for s in shapes] for key, shapes in entry.profile.items()}
            checked[name] = (engine, profile, entry.weights)
        if plugins is not None:
            plugins.load(tensorrt)  # before any engine deserializes
        return checked

    def _trt_session(self, name: str, graph: GraphEntry) -> BaseSession:
        from luvc.runtime.trt_session import CheckedEngine, TrtSession

        data, profile, weights = self._engines.pop(name)

        def bound() -> dict[str, torch.Tensor]:
            return {tensor.name: self.weights.device_tensor(tensor) for tensor in weights}

        engine = CheckedEngine(data, profile, bound)
        return TrtSession(engine, graph.inputs, graph.outputs, f"trt:{name}", self.setup(graph))

    def opened(self) -> dict[str, BaseSession]:
        """The sessions open now, by graph name."""
        return dict(self._open)

    def backend_description(self) -> str:
        """The backend in words, for run's table and serve's banner: ONNX Runtime with the providers its open sessions
        got, OpenVINO with the precision it computes in and why (and the graphs whose weight-only products run on
        integer kernels instead: ``luvc.runtime.openvino_graph.integer_kernels_faster``, and those computing in f16:
        ``float16_decode_faster``), or TensorRT."""
        if self.backend == "ort":
            return f"ort ({', '.join(self.providers_in_use())})"
        if self.openvino is not None:
            notes = [
                f"{', '.join(names)}: {what}"
                for attribute, what in (
                    ("integer_kernels", "weight-only products on integer kernels"),
                    ("float16_products", "f16 products (fp16 weights, the CPU has f16 kernels)"),
                )
                if (names := sorted(name for name, session in self._open.items() if getattr(session, attribute, False)))
            ]
            return "; ".join([f"openvino {self.openvino.precision}", *notes])
        return self.backend

    def providers_in_use(self) -> list[str]:
        """The ONNX Runtime execution providers the open sessions really got (empty for TensorRT)."""
        return sorted({name for session in self._open.values() for name in getattr(session, "providers", [])})

    def replay_counts(self) -> tuple[int, int, int, int]:
        """``(enabled, shapes captured, runs replayed, graphs that fell back to plain runs)``; safe to read from
        another thread while requests run."""
        replayers = [session.replayer for session in list(self._open.values()) if session.replayer is not None]
        return (
            int(self.cuda_graphs),
            sum(len(replayer.captured) for replayer in replayers),
            sum(replayer.replays for replayer in replayers),
            sum(not replayer.active for replayer in replayers),
        )

    def replay_summary(self) -> str:
        """What the open sessions captured as CUDA graphs and replayed, in one line; those that run plain, with why."""
        replayers = [session.replayer for session in self._open.values() if session.replayer is not None]
        builtin = [name for name, session in self._open.items() if session.replayer is None]
        captured = sum(len(replayer.captured) for replayer in replayers if replayer.active)
        replays = sum(replayer.replays for replayer in replayers if replayer.active)
        graphs = sum(replayer.active for replayer in replayers)
        parts = [f"{captured} shapes of {graphs} graphs captured, {replays} runs replayed"]
        if self.backend == "trt" and builtin:  # TensorRT-RTX captures by itself
            parts.append(f"{len(builtin)} engines replayed by TensorRT-RTX itself")
        parts += [replayer.describe() for replayer in replayers if not replayer.active]
        return "; ".join(parts)

    def replay_divergences(self) -> list[str]:
        """Where replayed outputs differed from plain runs of the same feeds (``verify_replay_tolerance`` set), one
        line each, by session."""
        return [
            f"{name}: {divergence}"
            for name, session in self._open.items()
            if session.replayer is not None
            for divergence in session.replayer.divergences
        ]

    def replayed_buffer_bytes(self) -> int:
        """Device bytes of the replayers' persistent input and output buffers (ONNX Runtime's and TensorRT's own memory
        for the captured graphs not counted)."""
        return sum(session.replayer.buffer_bytes for session in self._open.values() if session.replayer is not None)

    def prefill_shape(self, graph: str, length: int) -> tuple[str, int]:
        """The graph and sequence length a prefill of ``length`` tokens runs at, for ``graph`` (a bucket's or the
        text prefill; ``luvc.engines.static_shapes.prefill_shape``): on a GPU padded to a multiple of
        ``prefill_step``, replaying or not; as it is on the CPU; a hybrid model's at the shortest rung of its ladder
        that holds it."""
        return prefill_shape(self.manifest, graph, length, self.prefill_step)

    def seconds(self) -> float:
        """Seconds spent inside session runs so far."""
        return sum(session.total_inference_seconds for session in self._open.values())

    def transfer_stats(self) -> TransferStats:
        """Host <-> device bytes and allocations so far: the pipeline's own and every session's (a copy: the counts
        of a later run do not move it)."""
        total = dataclasses.replace(self.stats)
        for session in self._open.values():
            total = total + session.stats
        return total

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the device (counted)."""
        self.stats.host_to_device_bytes += array.nbytes
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        """A copy of a device tensor on the host (counted; waits for the device)."""
        self.stats.device_to_host_bytes += tensor.numel() * tensor.element_size()
        return tensor.detach().to("cpu", copy=True).numpy()

    def synchronize(self) -> None:
        """Wait for the device work (only to time stages; the decode loop waits on token ids alone)."""
        if self.cuda_stream is not None:
            self.cuda_stream.synchronize()

    def on_stream(self):
        """A context that runs torch work on the sessions' CUDA stream (no-op on the CPU)."""
        return torch.cuda.stream(self.cuda_stream) if self.cuda_stream is not None else contextlib.nullcontext()

    def kv_cache(self, batch: int) -> KVCache:
        """The fixed-capacity KV cache for ``batch`` rows, allocated on first use and reused by every request."""
        if self.device.type == "cuda" and not torch.cuda.is_available():  # TensorRT's default device, without a GPU
            critical("Running a TensorRT engine needs an NVIDIA GPU with CUDA; use --backend ort here.")
        if batch not in self._caches:
            geometry, kv = self.manifest.geometry, self.manifest.kv_cache
            first_key = next(name for name in geometry.cache_names("past_key_values") if name.endswith(".key"))
            dtype = TORCH_DTYPES[self.manifest.graphs["decode"].input(first_key).dtype]
            layout = KVLayout(
                geometry.num_key_value_heads,
                geometry.head_dim,
                tuple(kv.capacity),
                dtype,
                frozenset(geometry.linear_layers),
                geometry.conv_state_shape,
                geometry.recurrent_state_shape,
                geometry.sliding_window,
                geometry.sliding_layers,
            )
            # one batch size at a time: a new size frees the old buffers, with the graphs captured on them
            for old in self._caches.values():
                self._release_captures_on(old)
            decode = self.manifest.graphs["decode"]
            embeds, logits = decode.input("inputs_embeds"), decode.output("logits")
            step = StepLayout(
                int(embeds.shape[-1]), TORCH_DTYPES[embeds.dtype], int(logits.shape[-1]), TORCH_DTYPES[logits.dtype]
            )
            self._caches = {batch: KVCache(batch, layout, self.device, self.kv_aliased, step)}
        return self._caches[batch]

    def _release_captures_on(self, cache: KVCache) -> None:
        """Release every captured graph bound to ``cache``'s buffers (``Replayer.release_bound_to``)."""
        buffers = [tensor for pair_set in cache.sets for pair in pair_set for tensor in pair]
        buffers += [cache.write_index, cache.window, *(t for t in (cache.embeds, cache.logits) if t is not None)]
        buffers += [] if cache.sliding is None else [cache.sliding.device_starts]
        for session in self._open.values():
            if session.replayer is not None:
                session.replayer.release_bound_to(buffers)

    def kv_buffer_bytes(self) -> int:
        """Device bytes of the KV-cache buffers allocated now (what ``luvc-export plan`` counts per batch size)."""
        return sum(cache.capacity_bytes() for cache in self._caches.values())

    def release(self) -> None:
        """Close every session and free the KV caches (a later request opens what it needs again); of those opening in
        the background, the ones not begun never open."""
        self.opener.release()  # those still opening are let go with the rest
        for session in self._open.values():
            session.deactivate()
        self._open.clear()
        self._opening_times.clear()  # a later opening is timed afresh
        self._caches.clear()
        if self.weights is not None:
            self.weights.close()
        if self.activations is not None:
            self.activations.release()
