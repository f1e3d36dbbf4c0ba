"""``BaseArgs``: one group of command-line options (Polygraphy ``BaseArgs``), and argument types that check ranges.

Argument groups import nothing heavy at module level (no PyTorch, transformers or ONNX): every subcommand's
``--help`` and argument errors come back at once; what an option needs to act on is imported in ``parse`` or later.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from luvc.runtime.user_text import lone_surrogate


class BaseArgs:
    """Base: a group of options. Docstrings of groups read ``Title: description`` then ``Depends on: ...``."""

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def parse(self, args: argparse.Namespace) -> None:
        """Read this group's options from ``args`` into attributes."""
        raise NotImplementedError


def same_named(source: object, options: type, **given: Any) -> dict[str, Any]:
    """Keyword arguments for the dataclass ``options``: each of its fields that ``source`` (parsed arguments, or an
    argument group) holds under the same name, then ``given`` (fields named otherwise, or converted) on top."""
    names = {field.name for field in dataclasses.fields(options)} - given.keys()
    return {name: getattr(source, name) for name in names if hasattr(source, name)} | given


class StoreOnce(argparse.Action):
    """An argparse action that takes its option once: given twice, one line says so (the plain store action keeps the
    last silently, so ``--image a.png --image b.png`` would drop a.png)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        seen = f"_{self.dest}_given"
        if getattr(namespace, seen, False):
            parser.error(f"argument {option_string}: given twice; a request takes one {self.dest}")
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, values)


def budget_list(text: str) -> str:
    """An argparse ``type`` for ``--budgets``: refuses a blank value at once (taken silently, it meant the default
    schedule); the list itself is read by ``luvc.compress.budgets``."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty; give the visual tokens entering each decoder layer, e.g. '256,256,128,0', or 'auto' (or leave "
            "--budgets out) for the default schedule"
        )
    return text


def user_text(text: str) -> str:
    """An argparse ``type``: text a user typed, refused in one line where it is not valid UTF-8 (Python hands such bytes
    of the command line over as lone surrogates, which no tokenizer or stop string can hold)."""
    at = lone_surrogate(text)
    if at is None:
        return text
    try:  # a byte of the command line that is not UTF-8, as Python hands it over
        shown = f"byte {text[at].encode('utf-8', 'surrogateescape')!r}"
    except UnicodeEncodeError:  # a lone surrogate given as text (the Python API)
        shown = f"{text[at]!r}"
    raise argparse.ArgumentTypeError(f"is not valid UTF-8 text ({shown} at character {at}); type it in UTF-8")


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (either end open when ``None``), else a one-line error
    with the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not an integer {_range(low, high)}")
        return value

    return parse


def float_in(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``; either end open
    when ``None``), else a one-line error with the range; NaN and infinities are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {_range(low, high, low_open)}")
        return value

    return parse


def _range(low: float | None, high: float | None, low_open: bool = False) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {_number(low)}" if low is not None else "(any)"
    if low is None:
        return f"<= {_number(high)}"
    return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}]"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
