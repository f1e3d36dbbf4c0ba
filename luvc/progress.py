"""``progress_steps``: a rich progress bar over a known number of steps, or nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_steps(show: bool | None, total: int, label: str) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(description)``, which completes one of ``total`` steps. ``show=False`` shows nothing."""
    if show is False:
        yield lambda description: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda description: progress.update(task, advance=1, description=description)
