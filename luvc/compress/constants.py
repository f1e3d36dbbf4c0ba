"""Constant matrices made with NumPy (DCT bases, low-pass projections, random score tables) as tensors, in each of
the three ways the model runs:

- eager PyTorch: one copy per device, kept (a copy from host memory before every cut would be a launch and a wait on
  a GPU);
- ``torch.compile``: a constant of the compiled graph, made once when it traces (no NumPy is traced, no graph break);
- ``torch.export``: made afresh while tracing (a tensor cached during the trace would be a fake one), so the exported
  graph holds it as a constant.

The NumPy arrays themselves are cached: a cache filled while ``torch.export`` traces holds real arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

Maker = Callable[..., np.ndarray]
MAKERS: dict[str, Maker] = {}


def constant_maker(function: Maker) -> Maker:
    """Register ``function`` (integer and float arguments -> a read-only float32 array) by its name, cached."""
    cached = functools.lru_cache(maxsize=256)(function)
    MAKERS[function.__name__] = cached
    return cached


def constant_tensor(name: str, *args: int | float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The array ``MAKERS[name](*args)`` as a tensor on ``device``, made as the way the model runs wants it."""
    device = torch.device(device)
    if torch.compiler.is_exporting():
        return torch.tensor(MAKERS[name](*args), device=device)
    if torch.compiler.is_compiling():
        return _compiled_constant(name, device.type, -1 if device.index is None else device.index, *args)
    return _device_constant(name, args, device)


@functools.lru_cache(maxsize=256)
def _device_constant(name: str, args: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(MAKERS[name](*args), device=device)


@torch.compiler.assume_constant_result
def _compiled_constant(name: str, device_type: str, index: int, *args: int | float) -> torch.Tensor:
    """What ``torch.compile`` calls once while it traces and holds as a constant (its arguments are constants)."""
    device = torch.device(device_type) if index < 0 else torch.device(device_type, index)
    return _device_constant(name, args, device)
