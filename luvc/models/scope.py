"""``Scope``: a parameterless module around a function, so traced graphs name that call by a module path."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class Scope(nn.Module):
    """Calls ``fn``. ``torch.export`` (and so the ONNX exporter) records module paths, not function names: wrapping
    an OIM merge or an SPU step in a ``Scope`` lets the exported nodes carry names like
    ``language_model.luvc_spu.3``, which ``luvc.export.naming`` turns into ``/llm/layers.3/spu/<Op>``.
    Adds no parameters, buffers or ``state_dict`` keys.
    """

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


def scopes(fn: Callable, count: int) -> nn.ModuleList:
    """``count`` scopes around ``fn``, one per layer or block (indexed like the layers they precede or follow)."""
    return nn.ModuleList(Scope(fn) for _ in range(count))
