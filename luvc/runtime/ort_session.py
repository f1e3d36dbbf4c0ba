"""``OrtSession``: an exported graph in ONNX Runtime with IO binding to device tensors, and the providers a device
implies; on a CUDA device, each input shape captured once as a CUDA graph and replayed (``OrtGraphCapture``)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from luvc.errors import critical
from luvc.runtime.base_session import BaseSession, SessionSetup
from luvc.runtime.ort_opening import OrtGraph, OrtOpening, ort_providers
from luvc.runtime.replay import Replayer
from luvc.runtime.weights import MappedWeights

if TYPE_CHECKING:
    import onnxruntime

# the run option that selects a captured CUDA graph (ONNX Runtime's ``kOrtRunOptionsConfigCudaGraphAnnotation``): an
# id above 0 captures that graph on its first allowed run and replays it after; -1 runs without capture or replay
GRAPH_ID = "gpu_graph_id"
NO_GRAPH = "-1"
# runs of one graph id when it is first seen: ONNX Runtime runs a graph plainly before it allows the capture (its
# warm-up, for the allocations), then captures and replays it within the next run
CAPTURE_RUNS = 2


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
        self.requested_providers = setup.providers or ort_providers(self.device)
        # FP8 Q/DQ graphs: basic optimizations only (``OrtOpening``)
        self.basic_optimizations = setup.basic_optimizations
        # the graph as opened already (``luvc.runtime.opening``), else opened on activation
        self.opened: OrtGraph | None = setup.opened if isinstance(setup.opened, OrtGraph) else None
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
        if self.opened is None:
            opening = OrtOpening(self.requested_providers, self.weights, self.basic_optimizations)
            self.opened = opening.open(self.path, self.name, self.cuda_graphs)
        self.session = self.opened.session
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
            refused = self.opened.cuda_graphs_refused
            self.run_options = self.run_options or self.new_run_options()
            if refused is None:  # a plain run of a session with CUDA graphs enabled must say so, or it captures
                self.run_options.add_run_config_entry(GRAPH_ID, NO_GRAPH)
            self.replayer = Replayer(self.name, OrtGraphCapture(self), refused, self.replay_bound)

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
        self.session = self.binding = self.replayer = self.opened = None  # the shared weights' values with it


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
