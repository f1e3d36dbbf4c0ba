"""Releasing the resident pages of read-only files this process has mapped, once nothing needs them in memory.

OpenVINO imports a cached compiled model by mapping its blob: the weights are read from the mapping as the graph's
constants, and at the graph's first run the CPU plugin repacks every product's weight into memory of its own. From
then on the mapped copy is hardly read again, yet its pages stay resident and count in the process's RSS and in a
container's working set (mapped file pages are active). ``release_mapped`` tells the kernel the process no longer
needs them (``madvise(MADV_DONTNEED)``): they leave the process's RSS, stay in the page cache for the next start as
any file's pages do, and a later read of one maps it again from the file, with the same bytes. Only mappings without
write permission are released, so nothing a process wrote can be lost. Linux only; elsewhere nothing is released.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import sys
from pathlib import Path

MADV_DONTNEED = 4  # <sys/mman.h> on Linux, every architecture
MAPS = Path("/proc/self/maps")


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One mapped range of a file (a line of ``/proc/self/maps``)."""

    start: int
    end: int
    writable: bool
    path: str

    @classmethod
    def parse(cls, line: str) -> Mapping | None:
        """The mapping of a ``/proc/self/maps`` line, or None for one of no file (anonymous, ``[heap]``...)."""
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            return None
        start, _, end = fields[0].partition("-")
        return cls(int(start, 16), int(end, 16), "w" in fields[1], fields[5].rstrip("\n").removesuffix(" (deleted)"))


def mappings_under(folder: Path) -> list[Mapping]:
    """This process's mappings of files inside ``folder`` (none where ``/proc`` is not there)."""
    prefix = str(Path(folder).resolve()) + os.sep
    try:
        lines = MAPS.read_text().splitlines()
    except OSError:
        return []
    found = (Mapping.parse(line) for line in lines)
    return [mapping for mapping in found if mapping is not None and mapping.path.startswith(prefix)]


@functools.cache
def _madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def release_mapped(folder: Path) -> int:
    """Drop from this process's resident memory the pages of every read-only mapping of a file inside ``folder``;
    returns the bytes of the ranges released (mapped, not necessarily resident). The files stay mapped: a later read
    brings a page back from the file."""
    if not sys.platform.startswith("linux"):
        return 0
    released = 0
    for mapping in mappings_under(folder):
        if mapping.writable:
            continue
        if _madvise()(mapping.start, mapping.end - mapping.start, MADV_DONTNEED) == 0:
            released += mapping.end - mapping.start
    return released
