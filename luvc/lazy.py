"""Packages whose public names load on first use: importing the package (or a light module in it) stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, modules: dict[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``: each name ``modules`` lists under a module
    (module -> names) is imported from it when first asked for."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted([*importlib.import_module(package).__dict__, *exports])

    return list(exports), __getattr__, __dir__
