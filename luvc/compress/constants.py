"""Constant matrices made with NumPy (DCT bases, low-pass projections, random score tables) as tensors, in each of
the three ways the model runs:

- eager PyTorch: one copy per device, kept in ``DEVICE_CONSTANTS`` (a copy from host memory before every cut would be
  a launch and a wait on a GPU; on a GPU each is marked a static address, so CUDA graphs read it where it is);
- ``torch.compile`` of the LUVC loop (``luvc.models.compiled``, within ``compiled_constants``): the copy an eager run
  of the same plan put in ``DEVICE_CONSTANTS``, read by the compiled graph as an input (no NumPy is traced, no graph
  break; PyTorch 2.11's inductor failed on two ``assume_constant_result`` constants in one graph);
- ``torch.export``: made afresh while tracing (a tensor cached during the trace would be a fake one), so the exported
  graph holds it as a constant.

The NumPy arrays themselves are cached: a cache filled while ``torch.export`` traces holds real arrays.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np
import torch

Maker = Callable[..., np.ndarray]
MAKERS: dict[str, Maker] = {}
# (maker name, its arguments, device type, device index) -> the tensor on that device
DEVICE_CONSTANTS: dict[tuple, torch.Tensor] = {}
_compiling = False  # within a loop luvc.models.compiled runs (read while torch.compile traces it)


def constant_maker(function: Maker) -> Maker:
    """Register ``function`` (integer and float arguments -> a read-only float32 array) by its name, cached."""
    cached = functools.lru_cache(maxsize=256)(function)
    MAKERS[function.__name__] = cached
    return cached


@contextlib.contextmanager
def compiled_constants():
    """Within the block, ``torch.compile`` reads constants from ``DEVICE_CONSTANTS`` (``luvc.models.compiled`` runs its
    compiled loop in it, after an eager run of each plan made them). Said by the caller: PyTorch 2.11 answers
    ``is_exporting()`` while torch.compile traces."""
    global _compiling
    before, _compiling = _compiling, True
    try:
        yield
    finally:
        _compiling = before


def constant_tensor(name: str, *args: int | float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The array ``MAKERS[name](*args)`` as a tensor on ``device``, made as the way the model runs wants it."""
    device = torch.device(device)
    key = (name, args, device.type, -1 if device.index is None else device.index)
    if torch.compiler.is_compiling():
        if _compiling:  # the LUVC loop compiled: an eager run of this plan made it (CompiledLoop)
            return DEVICE_CONSTANTS[key]
        return torch.tensor(MAKERS[name](*args), device=device)  # exporting
    if key not in DEVICE_CONSTANTS:
        tensor = torch.tensor(MAKERS[name](*args), device=device)
        if tensor.is_cuda:
            torch._dynamo.mark_static_address(tensor)
        DEVICE_CONSTANTS[key] = tensor
    return DEVICE_CONSTANTS[key]
