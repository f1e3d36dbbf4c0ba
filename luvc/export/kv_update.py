"""In-place KV-cache update: the op the decode graph writes each layer's new key/value with, and its ONNX forms.

The decode graph holds every layer's cache at a fixed capacity and writes one step's key/value at a write index,
instead of concatenating past and new into a fresh tensor. In PyTorch the update is the custom op
``luvc::kv_cache_update`` (functional: it returns the updated cache); the ONNX exporter translates it into one of:

- ``tensor-scatter``: the opset 24 ``TensorScatter`` op, which TensorRT >= 10.15 and TensorRT-RTX map to their
  KV-cache update layer and ONNX Runtime updates in place when the output is bound to the input's buffer. The
  graph is marked opset 24 (between 18 and 24 the standard ops only gained types, so the opset 18 ops keep their
  meaning);
- ``scatter-elements``: ``ScatterElements`` along the sequence axis (opset 18), for parsers without
  ``TensorScatter`` such as TensorRT 10.3 on JetPack 6; ONNX Runtime also updates it in place when bound so.

TensorRT's KV-cache update layer needs a static capacity, so the capacities are export-time constants.

Attention then reads only a window of each cache: ``luvc::kv_window`` is the first ``min(W, C)`` tokens of a cache of
capacity ``C``, where ``W`` is the length of the decode graph's ``attention_window`` input (only its shape is read).
The runtime sizes ``W`` to the longest valid prefix of any layer (rounded up to a step), so a step costs what the
request holds, not the capacity. It is an op of its own because ``torch.export`` guards a plain slice whose end may
pass the size; its ONNX form is one ``Slice``, which clamps there.
"""

from __future__ import annotations

import onnx
import torch
from onnxscript import opset18 as op
from onnxscript.onnx_opset import opset24

TENSOR_SCATTER_OPSET = 24
SEQUENCE_AXIS = 2  # caches are (batch, kv_heads, capacity, head_dim)


@torch.library.custom_op("luvc::kv_cache_update", mutates_args=())
def kv_cache_update(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """``cache (B, H, C, D)`` with ``update (B, H, n, D)`` written at ``[b, :, write_indices[b] : + n]``."""
    index = write_indices.view(-1, 1, 1, 1) + torch.arange(update.shape[SEQUENCE_AXIS], device=update.device).view(
        1, 1, -1, 1
    )
    index = index.expand(-1, update.shape[1], -1, update.shape[3])
    return cache.clone().scatter_(SEQUENCE_AXIS, index, update)


@kv_cache_update.register_fake
def _(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(cache)


@torch.library.custom_op("luvc::kv_window", mutates_args=())
def kv_window(cache: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The first ``min(len(window), C)`` tokens of ``cache (B, H, C, D)``."""
    return cache[:, :, : window.shape[0]].clone()


@kv_window.register_fake
def _(cache: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    return cache.new_empty((cache.shape[0], cache.shape[1], window_length(window, cache), cache.shape[3]))


def window_length(window: torch.Tensor, cache: torch.Tensor):
    """Tokens of ``cache`` that attention reads: ``min(len(window), capacity)`` (symbolic while tracing)."""
    return torch.sym_min(window.shape[0], cache.shape[SEQUENCE_AXIS])


def _window(cache, window):
    end = op.Shape(window, start=0, end=1)
    return op.Slice(cache, op.Constant(value_ints=[0]), end, op.Constant(value_ints=[SEQUENCE_AXIS]))


def _tensor_scatter(cache, update, write_indices):
    return opset24.TensorScatter(cache, update, write_indices, axis=SEQUENCE_AXIS)


def _scatter_elements(cache, update, write_indices):
    # one step writes one token per row: indices (B, H, 1, D) filled with each row's write index
    index = op.Expand(op.Reshape(write_indices, op.Constant(value_ints=[-1, 1, 1, 1])), op.Shape(update))
    return op.ScatterElements(cache, index, update, axis=SEQUENCE_AXIS)


TRANSLATIONS = {"tensor-scatter": _tensor_scatter, "scatter-elements": _scatter_elements}


def translation_table(form: str) -> dict:
    """The ``custom_translation_table`` entries of ``torch.onnx.export`` for ``form`` (and the attention window)."""
    return {torch.ops.luvc.kv_cache_update.default: TRANSLATIONS[form], torch.ops.luvc.kv_window.default: _window}


def mark_opset(model: onnx.ModelProto) -> None:
    """Raise the default-domain opset to 24 where the graph holds ``TensorScatter`` (the exporter keeps the
    profile's opset for the rest of the graph)."""
    if not any(node.op_type == "TensorScatter" for node in model.graph.node):
        return
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < TENSOR_SCATTER_OPSET:
            entry.version = TENSOR_SCATTER_OPSET
    model.ir_version = max(model.ir_version, 10)
