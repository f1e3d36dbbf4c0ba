"""``--backend auto``: the backend that answers first on this machine, measured once per export and machine.

On a GPU the choice needs no measurement (TensorRT where engines are given, else ONNX Runtime's CUDA EP). On the CPU
it does: OpenVINO's bf16 kernels make it several times faster where the CPU has AMX or AVX-512 BF16, and both
compute f32 elsewhere, where ONNX Runtime's shared weights and kernels may win. The first start times one request's
first token on each (a warm-up request, then a timed one, on a synthetic visual of the export's first bucket) and
keeps the result in the start-up cache (``luvc.cache``), keyed by the export's files, this CPU and both runtimes'
versions; a later start reads it. Either way the choice comes with its reason, for run's table and serve's banner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import time
from collections.abc import Callable

import torch

from luvc import cache
from luvc.errors import LuvcError
from luvc.export.manifest import ExportManifest
from luvc.runtime.openvino_graph import cpu_flags

AUTO = "auto"
MEASURED = ("ort", "openvino")  # the CPU backends timed against each other


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """The backend ``auto`` resolved to, and why."""

    backend: str
    reason: str  # said after the backend by ``Pipeline.backend_description``


def choose_backend(
    manifest: ExportManifest, device: torch.device, engines: bool, first_token_ms: Callable[[str], float]
) -> BackendChoice:
    """The backend to run the export of ``manifest`` with on ``device`` (``engines``: TensorRT engines were given);
    ``first_token_ms(backend)`` times a request's first token on a CPU backend
    (``luvc.runtime.pipeline.first_token_ms``); a kept measurement that is not what this module writes (a damaged
    cache file) is measured again."""
    if engines:
        return BackendChoice("trt", "TensorRT engines were given")
    if device.type == "cuda":
        return BackendChoice("ort", "ONNX Runtime's CUDA EP on a GPU without engines (build them for trt)")
    try:
        openvino = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return BackendChoice("ort", "OpenVINO is not installed (pip install 'luvc-export[openvino]')")
    key = _machine_key(manifest, openvino)
    kept = cache.kept_record("backends", key)
    if kept is not None and _well_formed(kept):
        return BackendChoice(kept["backend"], f"{_timings(kept['first_token_ms'])}, measured {kept['when']}")
    measured, refused = {}, {}
    for backend in MEASURED:
        try:
            measured[backend] = first_token_ms(backend)
        except LuvcError as error:  # e.g. a graph OpenVINO cannot read: the other one runs the export
            if backend == MEASURED[0]:
                raise
            refused[backend] = str(error)
    best = min(measured, key=measured.__getitem__)
    why = f"{_timings(measured)}, measured now" + "".join(f"; {name} refused: {e}" for name, e in refused.items())
    when = time.strftime("%Y-%m-%d")
    cache.keep_record("backends", key, {"backend": best, "first_token_ms": measured, "when": when})
    return BackendChoice(best, why)


def _well_formed(kept: dict) -> bool:
    """Whether ``kept`` is a measurement as ``choose_backend`` writes it."""
    if kept.get("backend") not in MEASURED or not isinstance(kept.get("when"), str):
        return False
    timings = kept.get("first_token_ms")
    return isinstance(timings, dict) and all(
        name in MEASURED and isinstance(ms, (int, float)) and not isinstance(ms, bool) for name, ms in timings.items()
    )


def _timings(first_token_ms: dict[str, float]) -> str:
    parts = ", ".join(f"{backend} {ms:.0f} ms" for backend, ms in sorted(first_token_ms.items(), key=lambda i: i[1]))
    return f"first token {parts}"


def _machine_key(manifest: ExportManifest, openvino_version: str) -> str:
    """What a measurement holds for: the export's files, this CPU (model and features) and the runtimes' versions."""
    onnxruntime = importlib.metadata.version("onnxruntime") if _installed("onnxruntime") else "none"
    facts = {
        "files": manifest.files,
        "cpu": platform.processor() or platform.machine(),
        "flags": sorted(cpu_flags()),
        "onnxruntime": onnxruntime,
        "openvino": openvino_version,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
