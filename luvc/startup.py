"""How long a process took to be ready to answer: its sessions' loading, and everything since the process started
(the interpreter, the imports, the checks). ``run`` prints it in its timing table, ``serve`` in its banner."""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class StartUp:
    """How long the process took to be ready: its sessions' loading, and everything since the process started."""

    load_seconds: float  # from the first session's opening to the last one's, side by side with other work or not
    since_start_seconds: float | None  # None where the process's start time cannot be read (not Linux)

    def __str__(self) -> str:
        since = "n/a" if self.since_start_seconds is None else f"{self.since_start_seconds:.1f} s"
        return f"{since} (sessions {self.load_seconds:.1f} s)"


def seconds_since_start() -> float | None:
    """Seconds since this process started (Linux: its start time in /proc/self/stat against /proc/uptime)."""
    try:
        # the fields after the command (which may hold spaces) start at the state, field 3; the start time is field 22
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return float(open("/proc/uptime").read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def ready_after(load_seconds: float) -> StartUp:
    """The start-up of a process whose sessions took ``load_seconds`` to open (``Sessions.opening_seconds``) and that
    is ready now."""
    return StartUp(load_seconds=load_seconds, since_start_seconds=seconds_since_start())
