"""ONNX Runtime's default (process-wide) logger, quiet where its warnings are noise to a user."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

ORT_DEFAULT_SEVERITY = 2  # warnings: ONNX Runtime's own default, which it gives no way to read back
ORT_ERRORS_ONLY = 3


_quieted = 0  # blocks inside ``default_logger_errors_only`` now (sessions may open on several threads)
_quieted_lock = threading.Lock()


@contextlib.contextmanager
def default_logger_errors_only() -> Iterator[None]:
    """ONNX Runtime's default logger at error level for the block, then at its default again once no other thread's
    block is still open.

    Session creation with the CUDA EP on onnxruntime-gpu 1.29 and later logs "No registered plugin EP device found
    for 'CUDAExecutionProvider'" on this logger (once per session: five per ``run``) when it looks for a CUDA plugin
    EP before creating its built-in CUDA EP; the session still gets the built-in one, which ``OrtSession`` checks."""
    import onnxruntime

    global _quieted
    with _quieted_lock:
        _quieted += 1
        onnxruntime.set_default_logger_severity(ORT_ERRORS_ONLY)
    try:
        yield
    finally:
        with _quieted_lock:
            _quieted -= 1
            if _quieted == 0:
                onnxruntime.set_default_logger_severity(ORT_DEFAULT_SEVERITY)
