"""Runs in flight: each stage writing an output registers itself (its process, its output) while it runs, so that the
next luvc-export command, whatever its output, cleans what a run killed with ``kill -9`` left behind.

A killed run leaves its hidden partial folder beside its output (``luvc.staging``), and what is inside it: a target
search's hard link to its source export's ``weights.data`` made every later calibration of that source fail (onnx
refuses a weights file with several hard links). A record is a small JSON file (pid, the process's start time, the
output) in ``runs/`` of the start-up cache folder (``luvc.cache``), or of a folder of the user's in the system's
temporary folder where the cache is off; it is removed when its run ends. A record whose process is gone (its pid
ended, or now belongs to a process started later) names an output whose writer lock is free: its partial folders
and lock file are removed, then the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from luvc import cache


def _registry() -> Path:
    root = cache.cache_root()
    base = root if root is not None else Path(tempfile.gettempdir()) / f"luvc-export-{os.getuid()}"
    return base / "runs"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None where it does not run or /proc is
    missing."""
    try:
        # the fields after the command (which may hold spaces) start at the state, field 3; the start time is field 22
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(record: dict) -> bool:
    pid, started = int(record["pid"]), record.get("started")
    if started is not None:
        return process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        return True
    return True


@contextlib.contextmanager
def registered(out: Path) -> Iterator[None]:
    """Register this process as writing ``out`` for the block (nothing where no registry folder can be made)."""
    record = _registry() / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    data = {"pid": os.getpid(), "started": process_start(os.getpid()), "out": str(Path(out).absolute())}
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(data))
    except OSError:
        pass  # unregistered: a kill -9 of this run would leave its partial folder to the next run to its output
    try:
        yield
    finally:
        record.unlink(missing_ok=True)


def clean_dead_runs(clean_output: Callable[[Path], bool]) -> list[Path]:
    """Clean the output of each run that died with ``clean_output`` (``luvc.staging.clean_dead_output``: False while
    another run holds that output) and remove its record; returns the outputs cleaned. A record that cannot be read is
    removed."""
    cleaned = []
    folder = _registry()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            out, alive = Path(record["out"]), _alive(record)
        except (OSError, ValueError, TypeError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if alive:
            continue
        if clean_output(out):
            cleaned.append(out)
            path.unlink(missing_ok=True)
    return cleaned
