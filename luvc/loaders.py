"""Loaders, in the way Polygraphy's are: each long stage is a callable object built from its arguments.

A loader is a dataclass of the stage's arguments, normalised and checked once in ``__post_init__``; calling it runs
``call_impl`` and returns the stage's result (an export folder, an engine folder, parity results, ...). An argument
may be a value or another loader that makes it: ``EnginesFromExport(OnnxFromCompressedModel(adapter, "out"),
"ampere", "engines")()`` exports, then builds. Each loader's function twin (``functional``) takes the same arguments
and returns the result at once (``export_model``, ``build_engines``, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

Result = TypeVar("Result")
Arguments = ParamSpec("Arguments")


@dataclasses.dataclass
class BaseLoader(Generic[Result]):
    """A stage's arguments and ``call_impl``, which runs it; ``loader()`` first runs any argument that is itself a
    loader and checks the arguments again with the values it made."""

    def __post_init__(self) -> None:
        """Normalise and check the arguments (subclasses); an argument that is a loader is checked once it has run."""

    def __call__(self) -> Result:
        pending = {
            field.name: value
            for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), BaseLoader)
        }
        if pending:
            for name, loader in pending.items():
                setattr(self, name, loader())
            self.__post_init__()
        return self.call_impl()

    def call_impl(self) -> Result:
        raise NotImplementedError


@overload
def as_path(value: None) -> None: ...
@overload
def as_path(value: str | Path) -> Path: ...
@overload
def as_path(value: BaseLoader[Result]) -> BaseLoader[Result]: ...
def as_path(value: str | Path | BaseLoader | None) -> Path | BaseLoader | None:
    """``value`` as a ``Path`` (``None`` stays ``None``); a loader stays a loader until the loader holding it runs."""
    return value if value is None or isinstance(value, BaseLoader) else Path(value)


def loaded_path(value: str | Path | BaseLoader[Path]) -> Path:
    """A path argument of a loader as ``call_impl`` reads it: by then any loader that made it has run."""
    if isinstance(value, BaseLoader):
        raise RuntimeError(f"{type(value).__name__} has not run: call the loader holding it, not call_impl")
    return Path(value)


def functional(loader: Callable[Arguments, BaseLoader[Result]], name: str) -> Callable[Arguments, Result]:
    """The function twin ``name`` of ``loader``: the loader's arguments in, the loader's result out."""

    @functools.wraps(loader, assigned=("__module__",), updated=())
    def run(*args: Arguments.args, **kwargs: Arguments.kwargs) -> Result:
        return loader(*args, **kwargs)()

    run.__name__ = run.__qualname__ = name
    bases = [base for base in getattr(loader, "__orig_bases__", ()) if typing.get_origin(base) is BaseLoader]
    returns = typing.get_args(bases[0])[0] if bases else inspect.Signature.empty
    typing.cast(Any, run).__signature__ = inspect.signature(loader).replace(return_annotation=returns)
    run.__doc__ = f"Run ``{loader.__name__}`` with these arguments and return its result (see its docstring)."
    return run
