"""``TrtSession``: a TensorRT engine (``tensorrt`` or ``tensorrt_rtx``) on the pipeline's CUDA stream, each input shape
replayed as a CUDA graph when asked: TensorRT-RTX captures and replays by itself (its runtime config's
``cuda_graph_strategy``); full TensorRT's runs are stream-captured here (``TrtGraphCapture``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from luvc.errors import critical
from luvc.runtime.base_session import BaseSession, SessionSetup
from luvc.runtime.replay import Replayer


@dataclasses.dataclass(frozen=True)
class CheckedEngine:
    """An engine that passed the engine manifest's checks: its serialized bytes, its optimization ``profile`` (per
    input: min, opt and max shapes) and the weights bound to its inputs (``weights()``: name -> device tensor)."""

    data: bytes
    profile: dict
    weights: Callable[[], dict[str, torch.Tensor]] = dict


class TrtSession(BaseSession):
    """A TensorRT engine (``tensorrt`` or ``tensorrt_rtx``, ``setup.tensorrt``) on a CUDA device and the pipeline's CUDA
    stream. Input shapes and tensor addresses are set only when they change; nothing is synchronised here. The engine's
    weights are bound once the GPU is checked (the shared layout); ``setup.activations``: the pipeline's shared scratch
    buffer (``luvc.runtime.activations``)."""

    def __init__(self, engine: CheckedEngine, inputs, outputs, name: str, setup: SessionSetup) -> None:
        super().__init__(name, inputs, outputs, engine.profile, device=setup.device or "cuda")
        self.engine_bytes = engine.data
        self.tensorrt = setup.tensorrt
        self.stream = setup.stream
        self.weights = engine.weights
        self.activations = setup.activations
        self.engine: Any = None  # tensorrt's ICudaEngine and IExecutionContext (the module ships no types)
        self.context: Any = None
        self.bound: dict[str, tuple] = {}  # name -> (shape, address) last given to the context
        self.cuda_graphs = setup.cuda_graphs
        self.replay_bound = setup.replay_bound

    def activate_impl(self) -> None:
        if not torch.cuda.is_available():
            critical(f"{self.name}: running a TensorRT engine needs an NVIDIA GPU with CUDA; use --backend ort here.")
        trt = self.tensorrt.module
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = runtime.deserialize_cuda_engine(self.engine_bytes)
        if self.engine is None:
            critical(f"{self.name}: {self.tensorrt.describe()} could not deserialize the engine; rebuild it here.")
        builtin = self.cuda_graphs and self.tensorrt.captures_cuda_graphs
        self.context = self.new_context(builtin)
        self.bound = {}
        if self.cuda_graphs and not builtin:
            self.replayer = Replayer(self.name, TrtGraphCapture(self), bound=self.replay_bound)

    def new_context(self, cuda_graphs: bool = False):
        """An execution context of the engine, on the shared activation buffer when there is one, with the weights
        bound; ``cuda_graphs``: TensorRT-RTX captures and replays each shape itself."""
        config = None
        if cuda_graphs:
            trt = self.tensorrt.module
            config = self.engine.create_runtime_config()
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if self.activations is not None:
            context = self.activations.context(self.engine, config)
        elif config is not None:
            context = self.engine.create_execution_context(config)
        else:
            context = self.engine.create_execution_context()
        for name, tensor in self.weights().items():
            context.set_tensor_address(name, tensor.data_ptr())
        return context

    @property
    def cuda_stream(self) -> torch.cuda.Stream:
        return self.stream if self.stream is not None else torch.cuda.current_stream(self.device)

    def infer_impl(self, feeds, outputs):
        for name, tensor in feeds.items():
            shape, address = tuple(tensor.shape), tensor.data_ptr()
            last = self.bound.get(name, (None, None))
            if last[0] != shape:
                self.context.set_input_shape(name, shape)
            if last[1] != address:
                self.context.set_tensor_address(name, address)
            self.bound[name] = (shape, address)
        for name, tensor in outputs.items():
            if self.bound.get(name, (None, None))[1] != tensor.data_ptr():
                self.context.set_tensor_address(name, tensor.data_ptr())
                self.bound[name] = (None, tensor.data_ptr())
        if not self.context.execute_async_v3(self.cuda_stream.cuda_stream):
            critical(f"{self.name}: TensorRT execution failed.")

    def deactivate_impl(self) -> None:
        if self.activations is not None:
            self.activations.forget(self.context)
            if self.replayer is not None and isinstance(self.replayer.backend, TrtGraphCapture):
                for context in self.replayer.backend.contexts():
                    self.activations.forget(context)
        self.context = self.engine = self.replayer = None
        self.bound = {}


class TrtGraphCapture:
    """Stream capture of a full TensorRT engine's runs (``torch.cuda.CUDAGraph``): each slot gets an execution context
    of its own, given its shapes and addresses once (a context's state is what its captured kernels read), run once
    plainly (TensorRT needs one run after a shape change before a capture; it gives this call's outputs), then
    captured on the pipeline's stream."""

    def __init__(self, session: TrtSession) -> None:
        self.session = session
        self.slots: dict[int, tuple] = {}  # slot -> (context, graph)

    def capture(self, slot: int, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        context = self.session.new_context()
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        stream = self.session.cuda_stream
        capturable = getattr(context, "is_stream_capturable", None)
        if capturable is not None and not capturable(stream.cuda_stream):
            raise RuntimeError("TensorRT says this engine's runs cannot be stream-captured")
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed before the capture")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed while captured")
        self.slots[slot] = (context, graph)

    def replay(self, slot: int) -> None:
        with torch.cuda.stream(self.session.cuda_stream):
            self.slots[slot][1].replay()

    def release(self, slot: int) -> None:
        """Free the slot's execution context and captured graph."""
        self.slots.pop(slot, None)

    def contexts(self) -> list:
        """The execution contexts of the captured slots."""
        return [context for context, _ in self.slots.values()]
