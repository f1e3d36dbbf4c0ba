"""Replay of static-shape graphs as CUDA graphs: each (graph, input shapes) captured once, then replayed.

LUVC's budgets are fixed per bucket, so every graph of a request has static shapes: vision per bucket, prefill per
(bucket, batch, padded length), decode per (batch, attention window): the shapes
``luvc.engines.static_shapes`` lists from the manifest. At batch 1 a GPU is launch-bound (an H100 ran the
LUVC prefill of a 2B model 0.72x as fast as the uncompressed one when launched node by node, 1.64x when replayed), so
each shape is captured into a CUDA graph once and replayed after that.

``Replayer`` is the backend-neutral bookkeeping, one per session. It is told which inputs and outputs it binds as
they are (``bound``: the decode graph's KV caches, whose buffers the cache owns): a shape key per call (every input's
and output's name, shape and dtype, and the address of each bound tensor), and per key a ``Captured`` entry:
persistent device buffers at fixed addresses for every other input and output. A call copies those feeds into the
buffers, replays, and copies the outputs out; the bound tensors are never copied (``copied_bytes`` counts what is),
so a KV cache in two alternating sets (TensorRT 10.3's scatter form) is two captured graphs, one per set. The
backend (``GraphCapture``: ONNX Runtime's CUDA graphs, ``luvc.runtime.ort_session``; TensorRT's, by stream capture,
``luvc.runtime.trt_session``) does the capture and the replay. A capture that fails (an unsupported op, out of memory,
a driver refusal) is named in one warning, and the session runs plain from then on: never a crash, never another
answer. ``Replayer.verify_tolerance`` (the GPU check's) runs each call plainly too and records where the replayed
outputs differ from the plain ones (``Divergence``): the first graph and call that went wrong, not only the tokens.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Protocol

import torch

from luvc import cuda_graphs
from luvc.cuda_graphs import MAX_CAPTURED
from luvc.errors import warn


def resolve_cuda_graphs(choice: str | None, device: torch.device) -> bool:
    """Whether the sessions on ``device`` replay CUDA graphs (``luvc.cuda_graphs.runtime_replays``): ``on`` (a CUDA
    device is required); ``auto`` (the default) on a CUDA device where ``RUNTIME_REPLAY_BY_DEFAULT``; ``off``."""
    return cuda_graphs.runtime_replays(choice, device.type)


class GraphCapture(Protocol):
    """What a backend does for a ``Replayer``: capture slot ``slot`` with its inputs and outputs bound to these
    tensors (the run that captures also leaves its results in ``outputs``), replay it, and release it (a slot is never
    used again once released)."""

    def capture(self, slot: int, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None: ...

    def replay(self, slot: int) -> None: ...

    def release(self, slot: int) -> None: ...


ShapeKey = tuple


def shape_key(
    feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], bound: frozenset[str] = frozenset()
) -> ShapeKey:
    """What selects a captured graph: every tensor's name, shape and dtype, and the address of each ``bound`` one
    (bound as it is, not copied into a buffer of the replayer's)."""

    def entries(tensors: dict[str, torch.Tensor]) -> tuple:
        return tuple(
            (name, tuple(tensor.shape), tensor.dtype, tensor.data_ptr() if name in bound else None)
            for name, tensor in sorted(tensors.items())
        )

    return entries(feeds), entries(outputs)


@dataclasses.dataclass(frozen=True)
class Divergence:
    """A replayed output that differed from the plain run of the same feeds: the replayer's call (counted from 1),
    whether that call captured or replayed, the output, and ``max |replayed - plain| / max |plain|``."""

    call: int
    captured: bool
    output: str
    relative: float

    def __str__(self) -> str:
        how = "captured" if self.captured else "replayed"
        return f"call {self.call} ({how}): {self.output} differs by {self.relative:.3g} of its largest value"


# divergences one replayer records at most (the first ones tell where it went wrong)
MAX_DIVERGENCES = 16


@dataclasses.dataclass
class Captured:
    """One captured graph: its slot, the tensors bound to it, and which of them are the replayer's own buffers (the
    others are the caller's in-place tensors)."""

    slot: int
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    own_inputs: frozenset[str]  # bound to buffers of the replayer's (the others: the caller's in-place tensors)
    own_outputs: frozenset[str]

    @property
    def buffer_bytes(self) -> int:
        """Device bytes of the replayer's own buffers for this graph."""
        owned = [self.inputs[name] for name in self.own_inputs] + [self.outputs[name] for name in self.own_outputs]
        return sum(tensor.numel() * tensor.element_size() for tensor in owned)


class Replayer:
    """CUDA-graph replay of session ``name`` through ``backend``: ``run`` captures each new shape key once and replays
    it after; ``failure`` (after a failed capture or replay, or when the backend could not enable capture) makes every
    later call run ``plain``. ``bound``: the names of the inputs and outputs bound as they are (the caller owns their
    buffers and keeps their addresses: the KV caches)."""

    def __init__(
        self, name: str, backend: GraphCapture, failure: str | None = None, bound: frozenset[str] = frozenset()
    ) -> None:
        self.name = name
        self.backend = backend
        self.bound = bound
        self.copied_bytes: collections.Counter[str] = collections.Counter()  # by tensor name, in and out
        self.captured: dict[ShapeKey, Captured] = {}
        self._next_slot = 1  # slot 0: ONNX Runtime's plain runs; a released slot's number is never given again
        self.failure = failure
        self.replays = 0
        self.calls = 0
        # set: each call also runs plainly and a replayed output further than this from it is a ``Divergence``
        self.verify_tolerance: float | None = None
        self.divergences: list[Divergence] = []
        self._warned_full = False
        if failure is not None:
            self._warn(failure)

    @property
    def active(self) -> bool:
        """Whether calls still replay (no capture has failed)."""
        return self.failure is None

    @property
    def buffer_bytes(self) -> int:
        """Device bytes of the persistent buffers of every captured graph."""
        return sum(entry.buffer_bytes for entry in self.captured.values())

    def run(
        self,
        feeds: dict[str, torch.Tensor],
        outputs: dict[str, torch.Tensor],
        plain: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None],
    ) -> None:
        """Write the graph's outputs for ``feeds`` into ``outputs``: by replaying this shape's captured graph
        (captured now if new), or by ``plain`` (the session's ordinary run) after a failure or past ``MAX_CAPTURED``."""
        self.calls += 1
        if self.failure is not None:
            plain(feeds, outputs)
            return
        key = shape_key(feeds, outputs, self.bound)
        entry = self.captured.get(key)
        if entry is None and self._full(feeds, outputs):
            plain(feeds, outputs)
            return
        captured = entry is None
        try:
            if entry is None:
                entry = self._capture(key, feeds, outputs)
            else:
                self._copy_in(entry, feeds)
                self.backend.replay(entry.slot)
            self.replays += 1
        except Exception as error:  # any refusal by the backend or the driver: the graph runs plain from now on
            self.failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
            self._warn(self.failure)
            plain(feeds, outputs)
            return
        for name in entry.own_outputs:
            outputs[name].copy_(entry.outputs[name])
            self.copied_bytes[name] += _bytes(outputs[name])
        if self.verify_tolerance is not None:
            self._compare_with_plain(entry, captured, feeds, outputs, plain)

    def _compare_with_plain(self, entry: Captured, captured: bool, feeds, outputs, plain) -> None:
        """Run ``feeds`` plainly into scratch outputs (in-place tensors as they are: the same values written again) and
        record each replayed output further from the plain one than ``verify_tolerance``."""
        tolerance = self.verify_tolerance
        if tolerance is None:
            return
        expected = {name: torch.empty_like(t) if name in entry.own_outputs else t for name, t in outputs.items()}
        plain(feeds, expected)
        for name in sorted(entry.own_outputs):
            reference = expected[name].double()
            scale = reference.abs().max().item() if reference.numel() else 0.0
            difference = (outputs[name].double() - reference).abs().max().item() if reference.numel() else 0.0
            relative = difference / scale if scale else difference
            if not relative <= tolerance and len(self.divergences) < MAX_DIVERGENCES:  # NaN included
                self.divergences.append(Divergence(self.calls, captured, name, relative))

    def _capture(self, key: ShapeKey, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> Captured:
        """Bind persistent buffers (the caller's tensors where ``bound``), fill them and capture."""

        def with_buffers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
            own = frozenset(name for name in tensors if name not in self.bound)
            return {name: torch.empty_like(t) if name in own else t for name, t in tensors.items()}, own

        (inputs, own_inputs), (results, own_outputs) = with_buffers(feeds), with_buffers(outputs)
        entry = Captured(self._next_slot, inputs, results, own_inputs, own_outputs)
        self._next_slot += 1
        self._copy_in(entry, feeds)
        self.backend.capture(entry.slot, inputs, results)
        self.captured[key] = entry
        return entry

    def _copy_in(self, entry: Captured, feeds: dict[str, torch.Tensor]) -> None:
        """Copy ``feeds`` into the entry's own input buffers (device to device, on the current stream)."""
        for name in entry.own_inputs:
            entry.inputs[name].copy_(feeds[name])
            self.copied_bytes[name] += _bytes(feeds[name])

    def _full(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> bool:
        """Whether a new shape would pass ``MAX_CAPTURED`` or ``luvc.cuda_graphs.MAX_BUFFER_BYTES`` (said once)."""
        new_bytes = sum(_bytes(tensor) for name, tensor in (*feeds.items(), *outputs.items()) if name not in self.bound)
        reason = None
        if len(self.captured) >= MAX_CAPTURED:
            reason = f"{MAX_CAPTURED} shapes captured"
        elif self.buffer_bytes + new_bytes > cuda_graphs.MAX_BUFFER_BYTES:
            total = self.buffer_bytes + new_bytes
            reason = f"its buffers would take {total:,} bytes, past the limit of {cuda_graphs.MAX_BUFFER_BYTES:,}"
        if reason is not None and not self._warned_full:
            self._warned_full = True
            warn(f"{self.name}: {reason}; new shapes run without CUDA graphs.")
        return reason is not None

    def release_bound_to(self, tensors: list[torch.Tensor]) -> int:
        """Release every captured graph bound to the memory of any of ``tensors`` (the buffers of a KV cache that is
        being replaced): the graph, its own buffers and its references to those tensors go, so that their memory is
        freed with the cache. Returns how many were released; a later call of such a shape captures anew."""
        storages = {tensor.untyped_storage().data_ptr() for tensor in tensors}
        bound = [
            key
            for key, entry in self.captured.items()
            if any(
                tensor.untyped_storage().data_ptr() in storages
                for tensors_of, own in ((entry.inputs, entry.own_inputs), (entry.outputs, entry.own_outputs))
                for name, tensor in tensors_of.items()
                if name not in own
            )
        ]
        for key in bound:
            self.backend.release(self.captured.pop(key).slot)
        return len(bound)

    def describe(self) -> str:
        """One line: what was captured, or why nothing is."""
        if self.failure is not None:
            return f"{self.name}: not replayed ({self.failure})"
        return f"{self.name}: {len(self.captured)} captured, {self.replays} runs replayed"

    def _warn(self, reason: str) -> None:
        warn(f"{self.name}: CUDA graph capture failed ({reason}); this graph runs without replay from now on.")


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
