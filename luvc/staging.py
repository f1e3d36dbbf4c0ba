"""Artifact folders: one writer per output folder, written under a hidden temporary name and renamed when complete.

``output_claim`` refuses a taken folder and holds the folder's writer lock (``flock`` on a hidden ``.NAME.lock``
file beside it) before a stage's slow work; the kernel drops the lock when its process ends, ``kill -9`` included,
so a dead run never blocks the next one. ``staged_folder`` writes into ``.NAME.partial-PID-XXXX``, removes partial
folders that earlier runs left behind (the lock proves their owners are gone), checks again that the folder is not
taken just before the rename.

``--overwrite`` replaces only a folder of the stage's own :class:`OutputKind` (an export replaces an export, never a
folder that is not ours), and no stage writes over, into or around its own inputs. Each output records the files it
wrote (``.luvc-files``); what else the old folder holds (a notes file the user added) is moved into the new one and
named, never deleted; a file of the user's that the new output would replace is refused before anything changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from luvc import interrupts, runs
from luvc.errors import critical

# output folder -> [the open lock file this process holds, how many claims hold it, its run registration]
_held: dict[Path, list] = {}


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """What a stage writes, recognised by a file only its folders hold: ``--overwrite`` replaces nothing else."""

    label: str  # how messages name it, e.g. "an export"
    marker: str  # the file inside the folder, e.g. "manifest.json"
    format: str | int | None = None  # the marker's JSON "format" value; None: the file's presence is enough

    def __post_init__(self) -> None:
        _KINDS.append(self)

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is an output of this kind."""
        path = Path(folder) / self.marker
        if not path.is_file():
            return False
        if self.format is None:
            return True
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(data, dict) and data.get("format") == self.format


_KINDS: list[OutputKind] = []  # every kind a stage writes, for naming what a folder is


def _not_replaceable(out: Path, kind: OutputKind) -> str:
    """Why ``--overwrite`` will not replace ``out`` with an output of ``kind``, naming what ``out`` is, and the fix."""
    fix = "choose another --out, or remove it yourself."
    if out.is_symlink():
        return (
            f"{out} is a link to {out.resolve()}; --overwrite replaces a folder, never a link: pass that folder as "
            f"--out, or {fix}"
        )
    if not out.is_dir():
        what = f"is a file, not {kind.label}"
    elif (other := next((known for known in _KINDS if known.holds(out)), None)) is not None:
        what = f"is {other.label}, not {kind.label}"
    elif (out / kind.marker).is_file():
        what = f"holds a {kind.marker} that is not {kind.label}'s"
    else:
        what = f"is not {kind.label} (no luvc-export {kind.marker} in it)"
    return f"{out} {what}, so --overwrite will not replace it; {fix}"


def refuse_existing(out: Path, overwrite: bool | None, kind: OutputKind) -> None:
    """Fail, naming the fix, when ``out`` exists and ``overwrite`` is not set, or when it is set but ``out`` is not
    an output of ``kind`` (``--overwrite`` never deletes a folder that is not ours)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        critical(f"{out} already exists; choose another --out or pass --overwrite.")
    if out.is_symlink() or not out.is_dir() or not kind.holds(out):
        critical(_not_replaceable(out, kind))


def refuse_working_folder(out: Path) -> None:
    """Fail when ``out`` exists and is the folder this command runs in, or holds it (``--out .`` with
    ``--overwrite``): replacing it would pull the folder from under the shell that runs the command."""
    target, here = Path(out).resolve(), Path.cwd().resolve()
    if target.is_dir() and here.is_relative_to(target):
        where = "the folder this command runs in" if here == target else "a folder holding the one this runs in"
        critical(
            f"--out {out} is {where}, which --overwrite would replace under your shell; run the command from "
            f"outside it (cd {target.parent}) and pass --out {target.name}, or choose another --out."
        )


def refuse_overlap(out: Path, inputs: Sequence[Path | str | None]) -> None:
    """Fail when ``out`` is one of this command's ``inputs``, holds one, or lies inside one: writing there would
    replace or alter what the command reads."""
    target = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            critical(f"--out {out} overlaps this command's input {given}; choose an --out outside it.")


def refuse_unusable_parent(out: Path) -> None:
    """Fail, naming the fix, when a folder above ``out`` is a file or cannot be made."""
    for ancestor in reversed(Path(out).absolute().parents):
        if ancestor.exists() and not ancestor.is_dir():
            critical(f"--out {out}: {ancestor} is a file, not a folder; choose an --out inside a folder.")
    try:
        Path(out).absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        critical(f"--out {out}: cannot make its parent folder ({error.strerror or error}); choose another --out.")


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_claim(
    out: Path, overwrite: bool | None, kind: OutputKind, inputs: Sequence[Path | str | None] = ()
) -> Iterator[None]:
    """Refuse a taken ``out`` (or one that overlaps the command's ``inputs``) and hold its writer lock for the block;
    stages wrap their whole work in it, so a taken or busy folder is reported before minutes of work. Re-entrant
    within a process (``staged_folder`` claims too)."""
    out = Path(out).absolute()
    refuse_overlap(out, inputs)
    refuse_unusable_parent(out)
    refuse_existing(out, overwrite, kind)
    refuse_working_folder(out)
    if out not in _held:
        runs.clean_dead_runs(clean_dead_output)  # what runs killed elsewhere left (a partial folder, an input's link)
        registration = contextlib.ExitStack()
        _held[out] = [_lock(out), 0, registration]
        registration.enter_context(runs.registered(out))
    _held[out][1] += 1
    try:
        yield
    finally:
        _held[out][1] -= 1
        if _held[out][1] == 0:
            handle, _, registration = _held.pop(out)
            _lock_path(out).unlink(missing_ok=True)  # while still locked: a waiting opener re-checks the inode
            handle.close()
            registration.close()


def _lock(out: Path) -> IO:
    """The open, ``flock``-ed lock file of ``out``; an error naming the holder when another process has it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_path(out)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            critical(
                f"{out} is being written by another luvc-export run (pid {holder}); wait for it to finish or "
                "choose another --out."
            )
        try:  # the lock file may have been removed and re-created between open and flock: lock the live one
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def partials_of(out: Path) -> list[Path]:
    """The hidden partial folders beside ``out``: of a run writing it now, or of one that was stopped."""
    out = Path(out)
    return sorted(out.parent.glob(f".{out.name}.partial-*")) if out.parent.is_dir() else []


def partials_note(out: Path) -> str:
    """For messages about an unfinished ``out``: the partial folders beside it and what becomes of them; ``""``
    when there are none."""
    partials = partials_of(out)
    if not partials:
        return ""
    return (
        f" {partials[0].name} beside it was left by a run that was stopped (the next run to that --out removes it), "
        "or belongs to one still writing it."
    )


def clean_dead_output(out: Path) -> bool:
    """Where nobody holds ``out``'s writer lock, remove the partial folders beside it and the lock file (what a run
    killed while writing it left); False when a run holds the lock now."""
    out = Path(out)
    path = _lock_path(out)
    if out in _held:
        return False
    try:
        handle = open(path, "a+")
    except OSError:
        return not path.exists()
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        remove_stale_partials(out)
        path.unlink(missing_ok=True)  # while still locked, as ``output_claim`` does
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the partial folders of ``out`` left by runs that died (call with the writer lock held); returns them."""
    stale = partials_of(out)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        owner = folder.name.rsplit(".partial-", 1)[1].split("-")[0]
        print(f"removed {folder}, a partial folder left by an interrupted run (pid {owner})", file=sys.stderr)
    return stale


@contextlib.contextmanager
def staged_folder(
    out: Path, overwrite: bool | None, kind: OutputKind, inputs: Sequence[Path | str | None] = ()
) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out``; it becomes ``out`` only when the block completes, and is
    removed on any exception (Ctrl-C and SIGTERM included), so nothing half-written looks finished. An existing
    ``out`` is replaced only with ``overwrite``, only when it is an output of ``kind``, and only once the new folder
    is complete."""
    out = Path(out).absolute()  # "." has no name to stage beside
    with output_claim(out, overwrite, kind, inputs):
        remove_stale_partials(out)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
            interrupts.raise_if_requested()  # an interrupt lost where it landed (a __del__) still writes nothing
            refuse_existing(out, overwrite, kind)  # taken meanwhile (by a run that held the lock before this one)
            written = _files(staging)
            (staging / RECORD).write_text("".join(f"{name}\n" for name in sorted(written)))
            theirs = _not_ours(out, written) if out.is_dir() else []
            clashes = [name for name in theirs if name in written]
            if clashes:
                critical(
                    f"{out} holds {', '.join(clashes[:5])}, which luvc-export did not write and this run would "
                    "replace; move it out of the folder first."
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        staging.rename(out)
        if old is not None:
            for name in theirs:  # killed in here, the rest stay in the .old- folder: moved, never deleted
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (old / name).rename(out / name)
            if theirs:
                listing = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
                print(f"kept {listing} in {out}: files luvc-export did not write", file=sys.stderr)
            shutil.rmtree(old, ignore_errors=True)


RECORD = ".luvc-files"  # inside an output folder: the files the stage wrote, one relative path a line


def _files(folder: Path) -> set[str]:
    """The relative paths of the files under ``folder`` (the record left out)."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() and path.name != RECORD}


def _not_ours(folder: Path, new: set[str]) -> list[str]:
    """The files in an earlier output ``folder`` that luvc-export did not write: those its record does not list (for
    a folder written before records were kept, those the ``new`` output does not hold either)."""
    record = folder / RECORD
    ours = set(record.read_text().splitlines()) if record.is_file() else new
    return sorted(_files(folder) - ours)
