"""``TrtSession``: a TensorRT engine (``tensorrt`` or ``tensorrt_rtx``) on the pipeline's CUDA stream."""

from __future__ import annotations

from collections.abc import Callable

import torch

from luvc.errors import critical
from luvc.runtime.activations import SharedActivations
from luvc.runtime.base_session import BaseSession


class TrtSession(BaseSession):
    """A TensorRT engine (``tensorrt`` or ``tensorrt_rtx``) on a CUDA device and the pipeline's CUDA stream.
    Input shapes and tensor addresses are set only when they change; nothing is synchronised here. ``weights`` gives,
    once the GPU is checked, the device tensors bound once to the engine's weight inputs (the shared layout);
    ``activations``: the pipeline's shared scratch buffer (``luvc.runtime.activations``)."""

    def __init__(
        self,
        engine: bytes,
        inputs,
        outputs,
        profile,
        tensorrt,
        name: str,
        device=None,
        stream=None,
        weights: Callable[[], dict[str, torch.Tensor]] | None = None,
        activations: SharedActivations | None = None,
    ):
        super().__init__(name, inputs, outputs, profile, device=device or "cuda")
        self.engine_bytes = engine
        self.tensorrt = tensorrt
        self.stream = stream
        self.weights = weights or dict
        self.activations = activations
        self.engine = self.context = None
        self.bound: dict[str, tuple] = {}  # name -> (shape, address) last given to the context

    def activate_impl(self) -> None:
        if not torch.cuda.is_available():
            critical(f"{self.name}: running a TensorRT engine needs an NVIDIA GPU with CUDA; use --backend ort here.")
        trt = self.tensorrt.module
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = runtime.deserialize_cuda_engine(self.engine_bytes)
        if self.engine is None:
            critical(f"{self.name}: {self.tensorrt.describe()} could not deserialize the engine; rebuild it here.")
        if self.activations is not None:
            self.context = self.activations.context(self.engine)
        else:
            self.context = self.engine.create_execution_context()
        for name, tensor in self.weights().items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.bound = {}

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
        stream = self.stream if self.stream is not None else torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            critical(f"{self.name}: TensorRT execution failed.")

    def deactivate_impl(self) -> None:
        if self.activations is not None:
            self.activations.forget(self.context)
        self.context = self.engine = None
        self.bound = {}
