"""One session interface over ONNX Runtime and TensorRT (Polygraphy ``BaseRunner`` style).

``BaseSession`` does the checks: feeds are validated against the stage manifest's I/O names, dtypes and shapes
(symbolic dimensions must agree across inputs, and stay inside the engine profile for TensorRT) before
``infer_impl`` runs. ``OrtSession`` and ``TrtSession`` implement only ``activate_impl``/``infer_impl``/
``deactivate_impl``. Every error message starts with the session name.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from luvc.errors import critical

NUMPY_DTYPES = {"float": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


class BaseSession:
    """A graph or engine with named inputs and outputs. Use as a context manager, or call ``activate`` first."""

    def __init__(self, name: str, inputs: list[dict], outputs: list[dict], profile: dict | None = None) -> None:
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.profile = profile or {}
        self.is_active = False
        self.last_inference_seconds = 0.0
        self.total_inference_seconds = 0.0

    def activate(self) -> BaseSession:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> BaseSession:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def infer(
        self, feeds: dict[str, np.ndarray], targets: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate ``feeds`` and run; returns every output by name. Outputs named in ``targets`` are written into
        those preallocated, C-contiguous arrays of the right shape (no allocation for them)."""
        if not self.is_active:
            self.activate()
        self.check_feeds(feeds)
        began = time.perf_counter()
        outputs = self.infer_impl(feeds, targets or {})
        self.last_inference_seconds = time.perf_counter() - began
        self.total_inference_seconds += self.last_inference_seconds
        return outputs

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        expected = {entry["name"]: entry for entry in self.inputs}
        missing, unexpected = sorted(set(expected) - set(feeds)), sorted(set(feeds) - set(expected))
        if missing or unexpected:
            critical(f"{self.name}: missing inputs {missing}, unexpected inputs {unexpected}.")
        symbols: dict[str, tuple[int, str]] = {}
        for name, entry in expected.items():
            array = feeds[name]
            dtype = NUMPY_DTYPES.get(entry["dtype"])
            if dtype is not None and array.dtype != dtype:
                critical(f"{self.name}: input {name} must be {np.dtype(dtype).name}, got {array.dtype}.")
            if array.ndim != len(entry["shape"]):
                critical(f"{self.name}: input {name} must have shape {entry['shape']}, got {list(array.shape)}.")
            for axis, (want, got) in enumerate(zip(entry["shape"], array.shape)):
                if isinstance(want, int) and want != got:
                    critical(f"{self.name}: input {name} axis {axis} must be {want}, got {got} ({entry['shape']}).")
                if isinstance(want, str):
                    seen = symbols.setdefault(want, (got, name))
                    if seen[0] != got:
                        critical(f"{self.name}: dimension {want} is {seen[0]} in {seen[1]} but {got} in {name}.")
            if name in self.profile:
                low, _, high = self.profile[name]
                if any(g < lo or g > hi for g, lo, hi in zip(array.shape, low, high)):
                    critical(
                        f"{self.name}: input {name} of shape {list(array.shape)} is outside the engine profile "
                        f"{low} .. {high}; re-export with larger --max-batch/--max-text-tokens/--max-new-tokens."
                    )

    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feeds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass


class OrtSession(BaseSession):
    """An exported graph in ONNX Runtime. ``providers`` after activation lists what the session really got."""

    def __init__(
        self,
        path: Path,
        inputs,
        outputs,
        providers: list[str] | None = None,
        name: str | None = None,
        basic_optimizations: bool | None = None,
    ):
        super().__init__(name or f"ort:{Path(path).stem}", inputs, outputs)
        self.path = Path(path)
        self.requested_providers = providers or ["CPUExecutionProvider"]
        # FP8 Q/DQ graphs: ONNX Runtime's extended CPU fusions turn float8 Q/DQ pairs into QLinearMatMul, which has
        # no float8 kernel; basic optimizations keep the Q/DQ nodes
        self.basic_optimizations = bool(basic_optimizations)
        self.providers: list[str] = []
        self.session = None

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            critical(
                f"{self.name}: ONNX Runtime is not installed; run `{sys.executable} -m pip install onnxruntime` "
                "(or onnxruntime-gpu for CUDA; not both)."
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.basic_optimizations:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(str(self.path), options, providers=self.requested_providers)
        self.providers = self.session.get_providers()

    def infer_impl(self, feeds, targets):
        if not targets:
            values = self.session.run(None, feeds)
            return dict(zip((output.name for output in self.session.get_outputs()), values))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        names = [output.name for output in self.session.get_outputs()]
        for name in names:
            if name in targets:
                target = targets[name]
                element_type = target.dtype.type
                binding.bind_output(name, "cpu", 0, element_type, list(target.shape), target.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: targets[name] if name in targets else value.numpy() for name, value in zip(names, values)}

    def deactivate_impl(self) -> None:
        self.session = None


class TrtSession(BaseSession):
    """A TensorRT engine (``tensorrt`` or ``tensorrt_rtx``) with device buffers as torch CUDA tensors."""

    def __init__(self, engine: bytes, inputs, outputs, profile, tensorrt, name: str):
        super().__init__(name, inputs, outputs, profile)
        self.engine_bytes = engine
        self.tensorrt = tensorrt
        self.engine = self.context = None

    def activate_impl(self) -> None:
        import torch

        if not torch.cuda.is_available():
            critical(f"{self.name}: running a TensorRT engine needs an NVIDIA GPU with CUDA; use --backend ort here.")
        trt = self.tensorrt.module
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = runtime.deserialize_cuda_engine(self.engine_bytes)
        if self.engine is None:
            critical(f"{self.name}: {self.tensorrt.describe()} could not deserialize the engine; rebuild it here.")
        self.context = self.engine.create_execution_context()

    def infer_impl(self, feeds, targets):
        import torch

        trt = self.tensorrt.module
        keep = []
        for name, array in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(array.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for entry in self.outputs:
            shape = tuple(self.context.get_tensor_shape(entry["name"]))
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(entry["name"])))).dtype
            outputs[entry["name"]] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(entry["name"], outputs[entry["name"]].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            critical(f"{self.name}: TensorRT execution failed.")
        stream.synchronize()
        results = {}
        for name, tensor in outputs.items():
            if name in targets:
                targets[name][...] = tensor.cpu().numpy()
                results[name] = targets[name]
            else:
                results[name] = tensor.cpu().numpy()
        return results

    def deactivate_impl(self) -> None:
        self.context = self.engine = None
