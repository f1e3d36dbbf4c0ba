"""``staged_folder``: write an artifact folder under a hidden temporary name and rename it when complete."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from luvc.errors import critical


def refuse_existing(out: Path, overwrite: bool | None) -> None:
    """Fail, naming the fix, when ``out`` exists and ``overwrite`` is not set; stages call it before their slow work
    so that a taken output folder is reported before minutes of exporting, checking or calibrating."""
    if Path(out).exists() and not overwrite:
        critical(f"{out} already exists; choose another --out or pass --overwrite.")


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out``; it becomes ``out`` only when the block completes, and is
    removed on any exception (Ctrl-C included), so nothing half-written looks finished. An existing ``out`` is
    replaced only with ``overwrite``, and only once the new folder is complete."""
    out = Path(out)
    refuse_existing(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
