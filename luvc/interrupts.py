"""Ctrl-C and SIGTERM: the CLI's signal handler, and the checks that make an interrupt end the run however it arrives.

The handler raises :class:`Interrupted` where Python is when the signal lands. That can be code whose exceptions are
lost: a ``__del__`` ("Exception ignored in ..."), or a callback TensorRT's builder calls from C++. So the handler
also records the request: :func:`raise_if_requested` raises it again where it counts (before a staged folder becomes
the output, after a build), and inside :func:`deferred` the handler only records it, for a callback to act on (the
build's progress monitor cancels the build).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_state = {"requested": False, "deferring": 0}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM. A subclass: CPython marks a plain ``KeyboardInterrupt`` that passes through code it runs
    for a library (``PyRun_*``) as unhandled and then ends the process by SIGINT, even after ``main`` handled it."""


def handle_signal(signum, frame) -> None:
    """The CLI's SIGINT/SIGTERM handler: record the request, and raise it unless inside :func:`deferred`."""
    _state["requested"] = True
    if not _state["deferring"]:
        raise Interrupted


def requested() -> bool:
    """Whether an interrupt arrived since :func:`reset`."""
    return _state["requested"]


def raise_if_requested() -> None:
    """Raise :class:`Interrupted` when an interrupt arrived, even one whose exception was lost where it landed."""
    if _state["requested"]:
        raise Interrupted


def reset() -> None:
    """Forget earlier interrupts (a new CLI run starts clean)."""
    _state["requested"] = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block the handler records an interrupt without raising; on leaving, a recorded one is raised."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    raise_if_requested()
