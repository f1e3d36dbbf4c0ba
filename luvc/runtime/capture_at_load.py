"""Capture at load: the shapes an export runs at (``luvc.engines.static_shapes``) captured as CUDA graphs before the
first request, so that no user's answer pays a capture.

``capture_planned`` runs each replayed graph once at each planned shape (batch sizes up to the rows its front end
batches, the smallest first), with zero-filled inputs and the decode steps bound to the KV cache those rows will use
(both buffer sets where the cache alternates), until the replayers' own buffers would pass ``budget_bytes``: the shapes
past the budget are captured when a request first meets them, as without this. What it captured, in how long, and
what it left, is a ``CaptureReport``. The cache is left empty. Nothing here runs without replay (the CPU, or
``--cuda-graphs off``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from luvc.engines.static_shapes import StaticShapes
from luvc.export.inspect import evaluate_dim
from luvc.runtime.base_session import TORCH_DTYPES

if TYPE_CHECKING:
    from luvc.runtime.kv_cache import KVCache
    from luvc.runtime.sessions import Sessions

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class CaptureReport:
    """What capture at load did: ``shapes`` captured in ``seconds``, their own buffers' ``buffer_bytes``, and the
    planned shapes ``left`` for first use (past the budget)."""

    shapes: int
    seconds: float
    buffer_bytes: int
    left: int = 0

    def __str__(self) -> str:
        left = f"; {self.left} more on first use (past the budget)" if self.left else ""
        return (
            f"{self.shapes} shapes captured at load in {self.seconds:.1f} s "
            f"({self.buffer_bytes / MiB:.0f} MiB of buffers){left}"
        )


def capture_planned(sessions: Sessions, graphs: Iterable[str], rows: int, budget_bytes: int) -> CaptureReport | None:
    """Capture the planned shapes of ``graphs`` (opened, replayed) at batch sizes up to ``rows`` (the KV cache's, as
    the front end will allocate it) within ``budget_bytes`` of own buffers; None where the sessions do not replay."""
    if not sessions.cuda_graphs:
        return None
    began = time.perf_counter()
    shapes = StaticShapes.of(sessions.manifest, sessions.prefill_step)
    cache = sessions.kv_cache(rows)
    todo = []
    for name in dict.fromkeys(graphs):
        replayer = sessions[name].replayer
        if replayer is None or not replayer.active:
            continue
        for binding in shapes[name].bindings():
            if binding["batch"] <= rows:
                todo.append((binding["batch"], shapes.buffer_bytes(name, binding), name, binding))
    used = captured = left = 0
    for _, size, name, binding in sorted(todo, key=lambda item: item[:2]):
        if used + size > budget_bytes:
            left += 1
            continue
        _run_once(sessions, name, binding, cache)
        used, captured = used + size, captured + 1
    cache.clear_row()
    sessions.synchronize()
    return CaptureReport(captured, time.perf_counter() - began, used, left)


def _run_once(sessions: Sessions, name: str, binding: dict[str, int], cache: KVCache) -> None:
    """Run graph ``name`` at ``binding`` on zero-filled inputs (which its replayer captures); a decode step on the
    first rows of ``cache``, once per buffer set."""
    graph = sessions.manifest.graphs[name]
    session = sessions[name]
    batch = binding["batch"]
    for _ in range(len(cache.sets) if graph.kind == "decode" else 1):
        feeds: dict[str, torch.Tensor] = {}
        targets: dict[str, torch.Tensor] = {}
        if graph.kind == "decode":  # on the buffers the cache owns, as the running batch's steps are
            embeds, logits = cache.step_buffers()
            window = {"attention_window": cache.window[: binding["attention_window"]], "inputs_embeds": embeds[:batch]}
            feeds = cache.inputs(batch) | window
            targets = cache.targets(batch) | {"logits": logits[:batch]}
        for entry in graph.inputs:
            if entry.name in feeds:
                continue
            shape = [evaluate_dim(dim, binding) for dim in entry.shape]
            tensor = torch.zeros([size or 0 for size in shape], dtype=TORCH_DTYPES[entry.dtype], device=sessions.device)
            if entry.name == "prompt_lengths":  # every row as long as the shape
                tensor.fill_(binding["sequence_length"])
            feeds[entry.name] = tensor
        with sessions.on_stream():
            session.infer(feeds, targets)
        if graph.kind == "decode":
            cache.current = (cache.current + 1) % len(cache.sets)  # the other set, where the cache alternates
