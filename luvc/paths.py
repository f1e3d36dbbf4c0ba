"""Why a path given as a file cannot be read as one: each message names what the path really is (a folder, a pipe, a
device, a link that loops or leads nowhere) instead of saying it does not exist."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

FOLDER = "is a folder"


def not_a_file(path: Path) -> str | None:
    """What keeps ``path`` from being read as a regular file, as the end of a sentence that starts with it ("does not
    exist", ``FOLDER``, "is a pipe (FIFO), not a file", ...); None for a regular file (or a link to one)."""
    try:
        mode = Path(path).stat().st_mode  # through links
    except FileNotFoundError:
        return "is a link to a file that does not exist" if Path(path).is_symlink() else "does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a link that leads back to itself"
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return FOLDER
    if stat.S_ISFIFO(mode):
        return "is a pipe (FIFO), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "is a socket, not a file" if stat.S_ISSOCK(mode) else "is not a regular file"
