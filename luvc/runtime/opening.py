"""``GraphOpener``: the graphs of an export opening on background threads (ONNX Runtime or OpenVINO on the CPU), so
that a process's other work runs beside them, the import of torch included.

Opening a graph is most of a start: reading it, rewriting it for the CPU, packing a quantized graph's weights or
compiling it (0.3-2.6 s for a request's graphs at Qwen2-VL-2B widths with 8 layers, warm), and ONNX Runtime and
OpenVINO do it without holding the GIL. Nothing here imports torch (a test holds it to that), so ``run`` begins the
openings before it imports the runtime, whose import of torch (about 2 s) then overlaps them
(``GraphOpener.for_cpu_start``); ``Sessions`` wraps each opened graph in the session that binds torch tensors to it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from luvc.engines.static_shapes import ladder
from luvc.export.manifest import ExportManifest, checked_graph_path
from luvc.export.manifest_entries import BucketEntry
from luvc.runtime.float32_graph import AS_EXPORTED, FLOAT16_ROUNDED, IN_FLOAT32
from luvc.runtime.openvino_runtime import CompiledGraph, OpenVinoRuntime
from luvc.runtime.ort_opening import OrtGraph, OrtOpening, basic_optimizations_only, ort_providers
from luvc.runtime.weights import MappedWeights

if TYPE_CHECKING:
    import torch

OpenedGraph = OrtGraph | CompiledGraph  # what a backend made of one graph, before a session wraps it
EVERY_REQUEST_GRAPHS = ("embed", "decode")  # the graphs every request runs, whatever its visual
CPU_BACKENDS = ("ort", "openvino")  # the backends whose graphs open in the background, on the CPU


def request_graphs(
    manifest: ExportManifest, backend: str, bucket: BucketEntry | None = None, *, text_only: bool = False
) -> list[str]:
    """The graphs requests run on ``backend``: those in ``bucket`` (its vision graphs, a mixed bucket's parts' too, and
    its prefill), those without a visual (``text_only``: the text prefill), or with neither given, any request (every
    bucket's graphs and the text prefill); each with the embedding and decode graphs, and a hybrid model's prefills
    with every rung of their ladders (on OpenVINO the shortest rung alone)."""
    graphs = list(EVERY_REQUEST_GRAPHS)
    # OpenVINO holds its own copy of the LLM's weights per compiled graph (1.2 GB at Qwen2-VL-2B widths with 8
    # layers): for any request, the text prefill is compiled when a request without a visual first needs it, and
    # of a hybrid model's prefill ladder the shortest rung (what most prompts run), a longer one when a prompt
    # first needs it
    own_weights = backend == "openvino"
    if text_only:
        graphs.append(manifest.text_prefill)
    elif bucket is None and not own_weights:
        graphs.append(manifest.text_prefill)
    if not text_only:
        buckets = [bucket] if bucket is not None else list(manifest.buckets.values())
        for entry in list(buckets):  # a mixed bucket runs its parts' vision graphs
            buckets += [manifest.buckets[part] for part in entry.parts]
        graphs += [graph for entry in buckets for graph in (entry.vision, entry.prefill)]
    rungs = {graph: [name for _, name in ladder(manifest, graph)] for graph in graphs}
    if own_weights:
        graphs = [rungs[graph][0] if rungs[graph] else graph for graph in graphs]
    else:
        graphs += [name for graph in list(graphs) for name in rungs[graph]]
    return [name for name in dict.fromkeys(graphs) if name]


def shared_weights(
    folder: Path, manifest: ExportManifest, device: torch.device | None = None, float16_compute: bool = False
) -> MappedWeights:
    """The one copy of the weights every session and engine of the export shares, on ``device`` (None: the CPU): on
    the CPU an fp16 export computes in float32 (ONNX Runtime's CPU kernels would convert anyway), its float16
    arithmetic rounded in float32 with ``float16_compute`` (``luvc.runtime.float32_graph.float32_compute``)."""
    on_cpu = device is None or device.type == "cpu"
    float32 = on_cpu and manifest.float_precision == "fp16"
    compute = (FLOAT16_ROUNDED if float16_compute else IN_FLOAT32) if float32 else AS_EXPORTED
    return MappedWeights(folder, compute, device=device, digests=manifest.files)


def openvino_runtime(folder: Path, precision: str) -> OpenVinoRuntime:
    """The OpenVINO runtime of the export in ``folder``, computing its products in ``precision`` (``auto``, ``bf16``
    or ``f32``), its compiled models kept in the start-up cache's folder for an export of its weights' size."""
    from luvc import cache

    weights = sum(path.stat().st_size for path in folder.glob("*.data"))
    return OpenVinoRuntime.create(precision, cache.openvino_folder(weights))


class GraphOpener:
    """Opens graphs of the export ``manifest`` describes, whose ``weights`` its sessions share, on background threads
    with ``runtime``: ONNX Runtime's (an ``OrtOpening``) or OpenVINO's (an ``OpenVinoRuntime``; None: TensorRT, whose
    engines open on first use). ``threads`` is how many open at once: ONNX Runtime's one per core, as its session
    creation runs without the GIL (packing a quantized graph's weights: 1.3 s per graph of Qwen2-VL-2B widths with 8
    layers, on one core); OpenVINO's one, since its compiles run one at a time (``OpenVinoRuntime.compile``: each seals
    the cache's blobs) but without the GIL; 0 where nothing opens in the background (``in_background`` off: a GPU's
    sessions share a device, and open on first use)."""

    def __init__(
        self,
        manifest: ExportManifest,
        weights: MappedWeights,
        runtime: OrtOpening | OpenVinoRuntime | None,
        in_background: bool = True,
    ) -> None:
        self.folder, self.manifest, self.weights, self.runtime = weights.folder, manifest, weights, runtime
        self.backend = {OrtOpening: "ort", OpenVinoRuntime: "openvino"}.get(type(runtime), "trt")
        by_backend = {"ort": os.cpu_count() or 1, "openvino": 1} if in_background else {}
        self.threads = by_backend.get(self.backend, 0)
        self._opening: dict[str, Future[OpenedGraph]] = {}
        self._executors: list[ThreadPoolExecutor] = []  # each shut down when given its graphs: threads end with them
        self.times: list[tuple[float, float]] = []  # when each graph began and ended opening

    @classmethod
    def for_cpu_start(
        cls, folder: str | Path, backend: str, providers: list | None = None, openvino_precision: str = "auto"
    ) -> GraphOpener | None:
        """The opener of a process that runs export ``folder`` on ``backend`` on the CPU, made before the runtime is
        imported (``run`` begins its graphs, then imports the rest, torch included, beside them); None where its graphs
        would not open in the background (another backend, a CUDA provider) or where it holds plugin nodes (which
        ``Pipeline`` refuses, in one line, on these backends). The export is checked as ``Pipeline`` checks it."""
        names = [p[0] if isinstance(p, tuple) else p for p in providers or ()]
        if backend not in CPU_BACKENDS or "CUDAExecutionProvider" in names:
            return None
        folder = Path(folder)
        manifest = ExportManifest.load(folder, verify=True)
        if manifest.passes.plugin_nodes:
            return None
        weights = shared_weights(folder, manifest)
        if backend == "openvino":
            return cls(manifest, weights, openvino_runtime(folder, openvino_precision))
        return cls(
            manifest,
            weights,
            OrtOpening(providers or ort_providers(None), weights, basic_optimizations_only(manifest.precision)),
        )

    def begin(self, names: Iterable[str]) -> None:
        """Start opening the graphs ``names`` on background threads (``threads``), those not opening already; where
        none open in the background, nothing (each opens on first use)."""
        todo = [name for name in dict.fromkeys(names) if name not in self._opening]
        if not self.threads or not todo:
            return
        executor = ThreadPoolExecutor(min(len(todo), self.threads), thread_name_prefix="luvc-open")
        for name in todo:
            self._opening[name] = executor.submit(self._open, name)
        executor.shutdown(wait=False)  # no idle threads stay behind (a process with threads must not fork)
        self._executors.append(executor)

    def _open(self, name: str) -> OpenedGraph:
        """Graph ``name`` opened (on an opening thread), named as its session names itself in errors."""
        began = time.perf_counter()
        path = checked_graph_path(self.folder, name, self.manifest)
        opened: OpenedGraph
        if isinstance(self.runtime, OpenVinoRuntime):
            decode_step = self.manifest.graphs[name].kind == "decode"
            opened = self.runtime.compile(path, f"openvino:{path.stem}", decode_step)
        elif isinstance(self.runtime, OrtOpening):
            opened = self.runtime.open(path, f"ort:{path.stem}")
        else:
            raise RuntimeError(f"{self.backend} graphs do not open in the background")
        self.times.append((began, time.perf_counter()))
        return opened

    def take(self, name: str) -> OpenedGraph | None:
        """Graph ``name`` as it opened in the background, once it has (its failure raised here), or None where it was
        not opening (its session opens it on first use)."""
        opening = self._opening.pop(name, None)
        if opening is None:
            return None
        try:
            return opening.result()
        finally:
            self._join()

    def _join(self) -> None:
        """Once nothing is opening, wait for the opening threads to end (they end once their graphs have opened)."""
        if not self._opening:
            for executor in self._executors:
                executor.shutdown(wait=True)
            self._executors.clear()

    def cancel(self) -> None:
        """Cancel the openings not yet begun, so that an error ends the process sooner; those already opening finish,
        and a cancelled graph opens on its first use as any other."""
        for name, opening in list(self._opening.items()):
            if opening.cancel():
                del self._opening[name]
        self._join()

    @contextlib.contextmanager
    def cancelled_on_error(self) -> Iterator[None]:
        """A block that, where it raises, cancels the openings not begun (``cancel``: the process then ends sooner)."""
        try:
            yield
        except BaseException:
            self.cancel()
            raise

    def release(self) -> None:
        """Drop every opening: those not begun never open, those opening are waited for and let go (a failure among
        them was never used: nothing to say)."""
        self.cancel()
        for opening in self._opening.values():
            opening.exception()
        self._opening.clear()
        self._join()
        self.times.clear()  # a later opening is timed afresh
