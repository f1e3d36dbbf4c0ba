"""One error type for the whole toolkit, raised through :func:`critical` so that it is also logged."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

logger = logging.getLogger("luvc")


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
