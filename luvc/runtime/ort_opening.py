"""Opening an exported graph as an ONNX Runtime ``InferenceSession``: the session options, the shared weights, the
providers a device implies. It imports no torch, so that a CPU start opens its graphs while the runtime imports it
(``luvc.runtime.opening``); ``OrtSession`` (``luvc.runtime.ort_session``) binds device tensors to what it opens."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from luvc.errors import critical
from luvc.runtime.ort_logging import default_logger_errors_only
from luvc.runtime.weights import MappedWeights, is_quantized

if TYPE_CHECKING:
    import onnxruntime
    import torch

# ONNX Runtime 1.32's QDQPropagationTransformer moves an INT8 Q/DQ pair across a Reshape and writes a QuantizeLinear
# whose output_dtype (int8) contradicts its zero point (uint8), and the session fails to load: the tiny Qwen3-VL's INT8
# decode graph did. Off for every graph (it only moves Q/DQ nodes, so float graphs are unchanged)
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def basic_optimizations_only(precision: str) -> bool:
    """Whether the graphs of an export of ``precision`` open with ONNX Runtime's basic optimizations only: an FP8
    export's, since the extended CPU fusions turn float8 Q/DQ pairs into QLinearMatMul, which has no float8 kernel."""
    return precision == "fp8"


def ort_providers(device: torch.device | None, stream: int | None = None) -> list:
    """ONNX Runtime providers for ``device`` (None: the CPU): the CUDA EP on that GPU (on the pipeline's stream, no
    per-run synchronisation beyond the stream's own order; float32 products in float32, not the TF32 the CUDA EP would
    use by default: a float32 tensor is float32 for its accuracy), or the CPU EP."""
    if device is None or device.type != "cuda":
        return ["CPUExecutionProvider"]
    options = {
        "device_id": device.index or 0,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "0",
        "use_tf32": "0",
    }
    if stream is not None:
        options["user_compute_stream"] = str(stream)
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def with_cuda_graphs(providers: list) -> list:
    """``providers`` with the CUDA EP's ``enable_cuda_graph`` set (unchanged when there is no CUDA EP)."""
    enabled = []
    for provider in providers:
        name, options = provider if isinstance(provider, tuple) else (provider, {})
        if name == "CUDAExecutionProvider":
            provider = (name, {**options, "enable_cuda_graph": "1"})
        enabled.append(provider)
    return enabled


@dataclasses.dataclass
class OrtGraph:
    """An exported graph opened in ONNX Runtime: the ``session``, the ONNX Runtime values of the shared weights it was
    given (they must outlive it), and, where CUDA graphs were asked for and refused, why (``cuda_graphs_refused``)."""

    session: onnxruntime.InferenceSession
    shared_values: list
    cuda_graphs_refused: str | None = None


@dataclasses.dataclass(frozen=True)
class OrtOpening:
    """How a pipeline opens its graphs in ONNX Runtime: the ``providers`` (of ``ort_providers``), the ``weights`` the
    sessions share (None: each reads its own), ``basic_optimizations`` only (FP8 exports: ONNX Runtime's extended CPU
    fusions turn float8 Q/DQ pairs into QLinearMatMul, which has no float8 kernel)."""

    providers: list
    weights: MappedWeights | None = None
    basic_optimizations: bool = False

    def open(self, path: Path, name: str, cuda_graphs: bool = False) -> OrtGraph:
        """The graph at ``path`` opened for session ``name`` (the name every error starts with); with ``cuda_graphs``,
        with the CUDA EP's graph capture enabled, or without it where ONNX Runtime refuses it (and why)."""
        try:
            import onnxruntime as ort
        except ImportError:
            critical(
                f"{name}: ONNX Runtime is not installed; run `{sys.executable} -m pip install onnxruntime` "
                "(or onnxruntime-gpu for CUDA; not both)."
            )
        self._check_available(ort, name)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # the pipeline does host work between runs: idle ORT threads that spin would take its cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # a float32 value below 1.2e-38 takes the CPU's slow path (a linear-attention layer's decays within a chunk
        # pass through that range): flushed to zero, a Qwen3.5-0.8B-widths prefill runs 1.4x faster on the CPU
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if self.basic_optimizations:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        model: str | bytes = str(path)
        shared_values: list = []
        if self.weights is not None:
            graph = onnx.load(str(path), load_external_data=False)
            model, shared_values = self.weights.session_model(graph, options)
        session, refused = None, None
        if cuda_graphs:
            try:
                session = inference_session(ort, model, options, with_cuda_graphs(self.providers))
            except Exception as error:  # e.g. a node ONNX Runtime places on the CPU: CUDA graphs are refused
                refused = f"ONNX Runtime refused enable_cuda_graph: {str(error).splitlines()[0]}"
        if session is None:
            session = inference_session(ort, model, options, self.providers)
        if self.weights is not None and not self.weights.on_gpu and is_quantized(graph):
            self.weights.drop_resident_pages()  # the session packed its own copies of what it read
        return OrtGraph(session, shared_values, refused)

    def _check_available(self, ort: Any, name: str) -> None:
        """Refuse providers this ONNX Runtime does not have, naming the package that has them."""
        names = [p[0] if isinstance(p, tuple) else p for p in self.providers]
        unknown = sorted(set(names) - set(ort.get_available_providers()))
        if unknown:
            critical(
                f"{name}: ONNX Runtime here has no {unknown}; it has {ort.get_available_providers()} "
                "(--providers). CUDA needs onnxruntime-gpu instead of onnxruntime."
            )


def inference_session(ort: Any, model: str | bytes, options: Any, providers: list) -> onnxruntime.InferenceSession:
    """ONNX Runtime's session of ``model`` (a path or serialized bytes) with ``options`` on ``providers``."""
    with default_logger_errors_only():  # onnxruntime-gpu's plugin EP lookup warns on every CUDA session
        return ort.InferenceSession(model, options, providers=providers, disabled_optimizers=list(DISABLED_OPTIMIZERS))
