"""One session interface over ONNX Runtime and TensorRT (Polygraphy ``BaseRunner`` style), on device tensors.

Sessions take and return torch tensors on their device (``cpu`` or ``cuda:N``). ``BaseSession`` does the checks:
feeds are validated against the stage manifest's I/O names, dtypes and shapes (symbolic dimensions must agree across
inputs, and stay inside the engine profile for TensorRT), and outputs are placed into caller-given ``targets``
(e.g. a KV cache bound as both input and output, updated in place) or into tensors it allocates on the device from
the manifest's output shapes. ``OrtSession`` (``luvc.runtime.ort_session``) and ``TrtSession``
(``luvc.runtime.trt_session``) implement only ``activate_impl``/``infer_impl``/``deactivate_impl``, and on a GPU may set
a ``replayer`` that runs each shape as a captured CUDA graph (``luvc.runtime.replay``). Every error message starts with
the session name.

``TransferStats`` counts what a session moved between host and device and what it allocated, so tests and the
runtime's report can hold a decode step to "no KV bytes across the bus, no allocation".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from luvc.errors import critical
from luvc.export.inspect import evaluate_dim, root_of
from luvc.export.manifest_entries import TensorEntry
from luvc.runtime.replay import Replayer

TORCH_DTYPES = {
    "float": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclasses.dataclass(frozen=True)
class SessionSetup:
    """What the sessions of one pipeline share: their ``device``; the ``weights`` held once for all of them
    (``luvc.runtime.weights.MappedWeights``); whether they replay CUDA graphs; ONNX Runtime's ``providers`` (default:
    those the device implies) and ``basic_optimizations`` (FP8 exports); the CUDA ``stream``, the ``tensorrt``
    module and TensorRT's shared ``activations`` buffer; the ``openvino`` runtime (``OpenVinoRuntime``); what a replayed
    graph binds as it is (``replay_bound``); the ``graph_kind``."""

    device: torch.device = torch.device("cpu")
    weights: Any = None
    cuda_graphs: bool = False
    providers: list | None = None
    basic_optimizations: bool = False
    stream: Any = None
    tensorrt: Any = None
    activations: Any = None
    openvino: Any = None
    # the inputs and outputs a replayed graph binds as they are, never copied (the decode graph's KV caches, whose
    # buffers the cache owns: ``luvc.runtime.replay.Replayer``'s ``bound``)
    replay_bound: frozenset[str] = frozenset()
    graph_kind: str = ""  # the manifest's kind of the session's graph (``decode``...; empty: not from a manifest)
    # the graph as it opened in the background (``luvc.runtime.opening.OpenedGraph``); None: the session opens it
    opened: Any = None


@dataclasses.dataclass
class TransferStats:
    """Bytes a session moved host -> device (feeds not already on its device) and device -> host, and the output
    tensors it allocated (outputs without a caller-given target)."""

    calls: int = 0
    host_to_device_bytes: int = 0
    device_to_host_bytes: int = 0
    allocations: int = 0

    def since(self, earlier: TransferStats) -> TransferStats:
        return TransferStats(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(earlier))))

    def __add__(self, other: TransferStats) -> TransferStats:
        return TransferStats(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


class BaseSession:
    """A graph or engine with named inputs and outputs on ``device``. Use as a context manager, or call
    ``activate`` first."""

    def __init__(
        self,
        name: str,
        inputs: Sequence[TensorEntry],
        outputs: Sequence[TensorEntry],
        profile: dict | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.profile = profile or {}
        self.device = torch.device(device or "cpu")
        self.is_active = False
        self.last_inference_seconds = 0.0
        self.total_inference_seconds = 0.0
        self.stats = TransferStats()
        self._output_shapes: dict[tuple, dict[str, list[int]]] = {}
        self._output_dtypes = {entry.name: TORCH_DTYPES[entry.dtype] for entry in outputs}
        # CUDA-graph replay of each shape (``luvc.runtime.replay``), set up by a backend that captures; None: plain
        self.replayer: Replayer | None = None

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
        self, feeds: Mapping[str, torch.Tensor | np.ndarray], targets: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Validate ``feeds`` and run; returns every output by name as a tensor on the session's device. Outputs
        named in ``targets`` are written into those contiguous device tensors of the right shape (which may be the
        very tensors fed as inputs: an in-place update); the others are allocated."""
        if not self.is_active:
            self.activate()
        on_device = {name: self._on_device(name, value) for name, value in feeds.items()}
        symbols = self.check_feeds(on_device)
        outputs = self._outputs(symbols, targets or {})
        began = time.perf_counter()
        if self.replayer is not None:
            self.replayer.run(on_device, outputs, self.infer_impl)
        else:
            self.infer_impl(on_device, outputs)
        self.last_inference_seconds = time.perf_counter() - began
        self.total_inference_seconds += self.last_inference_seconds
        self.stats.calls += 1
        return outputs

    def _on_device(self, name: str, value: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A feed as a contiguous tensor on the session's device; a host array or a tensor elsewhere is copied
        (and counted)."""
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if isinstance(value, np.ndarray) or tensor.device != self.device:
            self.stats.host_to_device_bytes += tensor.numel() * tensor.element_size()
            tensor = tensor.to(self.device)
        return tensor.contiguous()

    def output_shapes(self, symbols: dict[str, int]) -> dict[str, list[int]]:
        """Every output's shape for the symbolic sizes the feeds bind (worked out once per set of sizes)."""
        key = tuple(sorted(symbols.items()))
        if key not in self._output_shapes:
            shapes = {}
            for entry in self.outputs:
                found = [evaluate_dim(dim, symbols) for dim in entry.shape]
                shape = [size for size in found if size is not None]
                if len(shape) != len(found):
                    critical(
                        f"{self.name}: output {entry.name} has shape {list(entry.shape)}, which the inputs do not bind."
                    )
                shapes[entry.name] = shape
            self._output_shapes[key] = shapes
        return self._output_shapes[key]

    def _outputs(self, symbols: dict[str, int], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, shape in self.output_shapes(symbols).items():
            target = targets.get(name)
            if target is None:
                outputs[name] = torch.empty(shape, dtype=self._output_dtypes[name], device=self.device)
                self.stats.allocations += 1
                continue
            if list(target.shape) != shape or not target.is_contiguous() or target.device != self.device:
                critical(
                    f"{self.name}: target for output {name} must be a contiguous {shape} tensor on {self.device}; "
                    f"got {list(target.shape)} on {target.device}."
                )
            outputs[name] = target
        return outputs

    def check_feeds(self, feeds: dict[str, torch.Tensor]) -> dict[str, int]:
        """Check names, dtypes, ranks, static sizes, agreeing symbolic sizes and the engine profile; return the
        symbolic dimensions the feeds bind."""
        expected = {entry.name: entry for entry in self.inputs}
        missing, unexpected = sorted(set(expected) - set(feeds)), sorted(set(feeds) - set(expected))
        if missing or unexpected:
            critical(f"{self.name}: missing inputs {missing}, unexpected inputs {unexpected}.")
        symbols: dict[str, tuple[int, str]] = {}
        for name, entry in expected.items():
            self._check_feed(entry, feeds[name], symbols)
        bound = {symbol: size for symbol, (size, _) in symbols.items()}
        for symbol, (size, name) in symbols.items():
            derived = root_of(symbol)
            if derived is not None:  # k*name: the root axis is size / k
                if size % derived[0]:
                    critical(
                        f"{self.name}: dimension {symbol} of {name} must be a multiple of {derived[0]}, got {size}."
                    )
                bound[derived[1]] = size // derived[0]
        return bound

    def _check_feed(self, entry: TensorEntry, tensor: torch.Tensor, symbols: dict[str, tuple[int, str]]) -> None:
        """Check one feed's dtype, rank, static sizes and engine profile, and record the sizes of its symbolic axes
        in ``symbols`` (symbol -> (size, the first input that bound it)), each against the size bound before."""
        name = entry.name
        dtype = TORCH_DTYPES.get(entry.dtype)
        if dtype is not None and tensor.dtype != dtype:
            critical(f"{self.name}: input {name} must be {entry.dtype}, got {str(tensor.dtype)[6:]}.")
        if tensor.dim() != len(entry.shape):
            critical(f"{self.name}: input {name} must have shape {list(entry.shape)}, got {list(tensor.shape)}.")
        for axis, (want, got) in enumerate(zip(entry.shape, tensor.shape)):
            if isinstance(want, int) and want != got:
                critical(f"{self.name}: input {name} axis {axis} must be {want}, got {got} ({list(entry.shape)}).")
            if isinstance(want, str):
                seen = symbols.setdefault(want, (got, name))
                if seen[0] != got:
                    critical(f"{self.name}: dimension {want} is {seen[0]} in {seen[1]} but {got} in {name}.")
        if name in self.profile:
            low, _, high = self.profile[name]
            if any(g < lo or g > hi for g, lo, hi in zip(tensor.shape, low, high)):
                critical(
                    f"{self.name}: input {name} of shape {list(tensor.shape)} is outside the engine profile "
                    f"{low} .. {high}; re-export with larger --max-batch/--max-text-tokens/--max-new-tokens."
                )

    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Run with ``feeds``, writing every output into the given device tensor of ``outputs``."""
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass
