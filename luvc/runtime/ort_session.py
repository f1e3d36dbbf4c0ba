"""``OrtSession``: an exported graph in ONNX Runtime with IO binding to device tensors, and the providers a device
implies; on a CUDA device, each input shape captured once as a CUDA graph and replayed (``OrtGraphCapture``)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from luvc.errors import critical
from luvc.runtime.base_session import BaseSession, SessionSetup
from luvc.runtime.ort_logging import default_logger_errors_only
from luvc.runtime.replay import Replayer
from luvc.runtime.weights import MappedWeights, is_quantized

if TYPE_CHECKING:
    import onnxruntime

# the run option that selects a captured CUDA graph (ONNX Runtime's ``kOrtRunOptionsConfigCudaGraphAnnotation``): an
# id above 0 captures that graph on its first allowed run and replays it after; -1 runs without capture or replay
GRAPH_ID = "gpu_graph_id"
NO_GRAPH = "-1"
# runs of one graph id when it is first seen: ONNX Runtime runs a graph plainly before it allows the capture (its
# warm-up, for the allocations), then captures and replays it within the next run
CAPTURE_RUNS = 2


def ort_providers(device: torch.device, stream: int | None = None) -> list:
    """ONNX Runtime providers for ``device``: the CUDA EP on that GPU (on the pipeline's stream, no per-run
    synchronisation beyond the stream's own order; float32 products in float32, not the TF32 the CUDA EP would use by
    default: a float32 tensor is float32 for its accuracy), or the CPU EP."""
    if device.type != "cuda":
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


# ONNX Runtime 1.32's QDQPropagationTransformer moves an INT8 Q/DQ pair across a Reshape and writes a QuantizeLinear
# whose output_dtype (int8) contradicts its zero point (uint8), and the session fails to load: the tiny Qwen3-VL's INT8
# decode graph did. Off for every graph (it only moves Q/DQ nodes, so float graphs are unchanged)
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


class OrtSession(BaseSession):
    """An exported graph in ONNX Runtime, with inputs and outputs bound to device tensors (IO binding), set up as
    ``setup`` says (device, shared weights, providers, CUDA graphs). ``providers`` after activation lists what the
    session really got."""

    def __init__(self, path: Path, inputs, outputs, setup: SessionSetup | None = None, name: str | None = None):
        setup = setup or SessionSetup()
        super().__init__(name or f"ort:{Path(path).stem}", inputs, outputs, device=setup.device)
        # replay each shape (luvc.runtime.replay); the CPU EP runs the same bookkeeping
        self.cuda_graphs = setup.cuda_graphs
        self.replay_bound = setup.replay_bound
        self.path = Path(path)
        self.weights: MappedWeights | None = setup.weights  # external initializers shared with the other sessions
        self._shared_values: list = []  # the OrtValues of those, alive as long as the session
        self.requested_providers = setup.providers or ort_providers(self.device)
        # FP8 Q/DQ graphs: ONNX Runtime's extended CPU fusions turn float8 Q/DQ pairs into QLinearMatMul, which has
        # no float8 kernel; basic optimizations keep the Q/DQ nodes
        self.basic_optimizations = setup.basic_optimizations
        self.providers: list[str] = []
        self.session: onnxruntime.InferenceSession | None = None
        self.binding: onnxruntime.IOBinding | None = None
        self.run_options: onnxruntime.RunOptions | None = None

    @property
    def live(self) -> onnxruntime.InferenceSession:
        """The ONNX Runtime session, while this one is active."""
        if self.session is None:
            raise RuntimeError(f"{self.name} is not active: activate it first")
        return self.session

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            critical(
                f"{self.name}: ONNX Runtime is not installed; run `{sys.executable} -m pip install onnxruntime` "
                "(or onnxruntime-gpu for CUDA; not both)."
            )
        self._check_available(ort)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # the pipeline does host work between runs: idle ORT threads that spin would take its cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # a float32 value below 1.2e-38 takes the CPU's slow path (a linear-attention layer's decays within a chunk pass
        # through that range): flushed to zero, a Qwen3.5-0.8B-widths prefill runs 1.4x faster on the CPU
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if self.basic_optimizations:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        model: str | bytes = str(self.path)
        if self.weights is not None:
            graph = onnx.load(str(self.path), load_external_data=False)
            model, self._shared_values = self.weights.session_model(graph, options)
        failure = None
        if self.cuda_graphs:
            try:
                self.session = self._inference_session(ort, model, options, with_cuda_graphs(self.requested_providers))
            except Exception as error:  # e.g. a node ONNX Runtime places on the CPU: CUDA graphs are refused
                failure = f"ONNX Runtime refused enable_cuda_graph: {str(error).splitlines()[0]}"
        if self.session is None:
            self.session = self._inference_session(ort, model, options, self.requested_providers)
        if self.weights is not None and self.device.type == "cpu" and is_quantized(graph):
            self.weights.drop_resident_pages()  # the session packed its own copies of what it read
        self.providers = self.session.get_providers()
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.providers:
            critical(
                f"{self.name}: asked for {self.device} but ONNX Runtime gave {self.providers}; install the GPU "
                f"package instead of the CPU one: `{sys.executable} -m pip uninstall -y onnxruntime && "
                f"{sys.executable} -m pip install onnxruntime-gpu`, or run with --device cpu."
            )
        self.binding = self.session.io_binding()
        if self.device.type == "cuda":  # ordered by the stream; the host waits only when it reads a result
            self.run_options = self.new_run_options()
        if self.cuda_graphs:
            self.run_options = self.run_options or self.new_run_options()
            if failure is None:  # a plain run of a session with CUDA graphs enabled must say so, or it captures
                self.run_options.add_run_config_entry(GRAPH_ID, NO_GRAPH)
            self.replayer = Replayer(self.name, OrtGraphCapture(self), failure, self.replay_bound)

    def _check_available(self, ort) -> None:
        """Refuse providers this ONNX Runtime does not have, naming the package that has them."""
        names = [p[0] if isinstance(p, tuple) else p for p in self.requested_providers]
        unknown = sorted(set(names) - set(ort.get_available_providers()))
        if unknown:
            critical(
                f"{self.name}: ONNX Runtime here has no {unknown}; it has {ort.get_available_providers()} "
                "(--providers). CUDA needs onnxruntime-gpu instead of onnxruntime."
            )

    def _inference_session(self, ort, model, options, providers):
        with default_logger_errors_only():  # onnxruntime-gpu's plugin EP lookup warns on every CUDA session
            return ort.InferenceSession(
                model, options, providers=providers, disabled_optimizers=list(DISABLED_OPTIMIZERS)
            )

    def new_run_options(self):
        """Run options for this session's device: on a GPU, no synchronisation beyond the stream's own order."""
        import onnxruntime as ort

        run_options = ort.RunOptions()
        if self.device.type == "cuda":
            run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return run_options

    def bind(self, binding, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Bind ``feeds`` and ``outputs`` (device tensors) to ``binding``, replacing what it held."""
        device_type, device_id = self.device.type, self.device.index or 0
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, tensor in feeds.items():
            element = _numpy_type(tensor.dtype)
            binding.bind_input(name, device_type, device_id, element, list(tensor.shape), tensor.data_ptr())
        for name, tensor in outputs.items():
            element = _numpy_type(tensor.dtype)
            binding.bind_output(name, device_type, device_id, element, list(tensor.shape), tensor.data_ptr())

    def infer_impl(self, feeds, outputs):
        session, binding = self.live, self.binding
        if binding is None:  # made with the session
            raise RuntimeError(f"{self.name} has no IO binding: activate it first")
        self.bind(binding, feeds, outputs)
        session.run_with_iobinding(binding, self.run_options)

    def deactivate_impl(self) -> None:
        self.session = self.binding = self.replayer = None
        self._shared_values = []


class OrtGraphCapture:
    """ONNX Runtime's CUDA graphs for ``session`` (made with ``enable_cuda_graph``): a slot is a graph id, with its own
    IO binding, bound once to the replayer's buffers, and run options that select it."""

    def __init__(self, session: OrtSession) -> None:
        self.session = session
        self.slots: dict[int, tuple] = {}  # slot -> (binding, run options)

    def capture(self, slot: int, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Bind, then run graph id ``slot`` until ONNX Runtime has captured it (its warm-up run first); every run
        writes this call's outputs."""
        binding = self.session.live.io_binding()
        self.session.bind(binding, inputs, outputs)
        run_options = self.session.new_run_options()
        run_options.add_run_config_entry(GRAPH_ID, str(slot))
        self.slots[slot] = (binding, run_options)
        for _ in range(CAPTURE_RUNS):
            self.session.live.run_with_iobinding(binding, run_options)

    def replay(self, slot: int) -> None:
        binding, run_options = self.slots[slot]
        self.session.live.run_with_iobinding(binding, run_options)

    def release(self, slot: int) -> None:
        """Drop the slot's IO binding (ONNX Runtime has no call to free one graph id's capture: its session keeps it
        until it closes, and the id is never run again)."""
        self.slots.pop(slot, None)


@functools.cache
def _numpy_type(dtype: torch.dtype) -> type:
    return torch.empty(0, dtype=dtype).numpy().dtype.type
