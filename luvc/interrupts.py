"""Ctrl-C and SIGTERM: the CLI's signal handler, and the checks that make an interrupt end the run however it arrives.

The handler raises :class:`Interrupted` where Python is when the signal lands. That can be code whose exceptions are
lost: a ``__del__`` ("Exception ignored in ..."), or a callback TensorRT's builder calls from C++. So the handler
also records the request: :func:`raise_if_requested` raises it again where it counts (before a staged folder becomes
the output, after a build), and inside :func:`deferred` the handler only records it, for a callback to act on (the
build's progress monitor cancels the build). An interrupt lost in a finaliser is seen by ``sys.unraisablehook``
(:func:`handled` installs it): nothing is printed, and a timer signal raises it again a moment later, in ordinary
code, so a run stops within that moment instead of at its end.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_state = {"requested": False, "deferring": 0}
RERAISE_AFTER_S = 0.05  # after an interrupt was lost in a finaliser, when to raise it again


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
    return bool(_state["requested"])


def raise_if_requested() -> None:
    """Raise :class:`Interrupted` when an interrupt arrived, even one whose exception was lost where it landed."""
    if _state["requested"]:
        _disarm()  # it propagates from here: no timer may raise it a second time in the cleanup
        raise Interrupted


def _handle_alarm(signum, frame) -> None:
    """The timer a lost interrupt armed: raise it again, now in ordinary code."""
    if _state["requested"] and not _state["deferring"]:
        raise Interrupted


def _on_unraisable(unraisable, previous=None) -> None:
    """``sys.unraisablehook``: an interrupt lost in a finaliser is not printed; the timer raises it again."""
    if isinstance(unraisable.exc_value, Interrupted):
        signal.setitimer(signal.ITIMER_REAL, RERAISE_AFTER_S)
        return
    (previous or sys.__unraisablehook__)(unraisable)


def _disarm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within the block Ctrl-C and SIGTERM raise :class:`Interrupted` (see the module docstring), from a clean start;
    outside the main thread, where Python delivers no signals, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    hook = sys.unraisablehook
    handlers = {signum: signal.signal(signum, handle_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, _handle_alarm)
    sys.unraisablehook = lambda unraisable: _on_unraisable(unraisable, hook)
    try:
        yield
    finally:
        _disarm()
        sys.unraisablehook = hook
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


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
