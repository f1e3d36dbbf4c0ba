"""Progress display: ``progress_steps`` (one bar over a known number of steps, plain lines when not on a terminal,
or nothing) and ``graph_progress`` (one row per graph with its current phase, for export and build)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_steps(show: bool | None, total: int, label: str) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(description)``, which completes one of ``total`` steps. ``show=False`` shows nothing; when
    stderr is not a terminal (a log file, CI), each step prints one line ``label: [i/total] description``."""
    if show is False:
        yield lambda description: None
        return
    if not sys.stderr.isatty():
        done = 0

        def advance(description: str) -> None:
            nonlocal done
            done += 1
            print(f"{label}: [{done}/{total}] {description}", file=sys.stderr, flush=True)

        yield advance
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(label, total=total)
        yield lambda description: progress.update(task, advance=1, description=description)


def graph_progress(show: bool, field: str):
    """A rich ``Progress`` with one task per graph: name, bar, the task's ``field`` (its current phase) and the time
    elapsed; ``show=False`` disables it. Tasks are added with ``field=...`` and updated as the work moves on."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<28}"), BarColumn(), TextColumn(f"{{task.fields[{field}]}}"))
    return Progress(*columns, TimeElapsedColumn(), disable=not show, transient=False)
