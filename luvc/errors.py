"""One error type for the whole toolkit, raised through :func:`critical` so that it is also logged."""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path
from typing import NoReturn

logger = logging.getLogger("luvc")
# a library's logger: its records go to the handlers an application configures (the CLI: its own), and without one
# they are dropped rather than printed by logging's last-resort handler (``warn`` prints its own line; ``critical``
# raises its message)
logger.addHandler(logging.NullHandler())


class LuvcError(Exception):
    """A problem the user can fix; the message says what is wrong and what to change."""


def critical(message: str) -> NoReturn:
    """Log ``message`` at error level, then raise it as a :class:`LuvcError`."""
    logger.error(message)
    raise LuvcError(message)


def warn(message: str) -> None:
    """Tell the user about a problem the toolkit worked around: one line on standard error (and the log)."""
    logger.warning(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


# what a write says when its disk (or the user's quota on it) is full
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that found its disk or quota full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


def disk_full_message(error: OSError, folder: str | Path | None = None) -> str:
    """One line for a write into ``folder`` (else the file ``error`` names) that found the disk full: where, the
    bytes free there now, and the fix."""
    where = Path(folder) if folder else Path(error.filename) if error.filename else None
    if where is None:
        return f"the disk is full ({error.strerror}); free some space and run again."
    existing = next((path for path in (where, *where.parents) if path.exists()), Path("."))
    try:
        free = f"{shutil.disk_usage(existing).free / 1e6:,.1f} MB free there now"
    except OSError:
        free = "its free space unknown"
    return (
        f"the disk under {where} ran out of space ({error.strerror}; {free}). Free some space, or "
        "write to another disk."
    )
