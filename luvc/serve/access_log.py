"""The server's log on stderr (``server_log``), and its access log: one line per HTTP request, after its
response has gone out (a stream: after its last event).

A line holds the request id (also sent as ``X-Request-ID``: a chat completion's own id, else one made here), the
method, path, status and wall time, and what the app recorded for the request (``record``): tokens, time to first
token, bucket, finish reason. Never the prompt, the image or a header value. Lines go to the ``luvc.access`` logger
at INFO; ``luvc-export serve`` prints them to stderr unless ``--no-access-log``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the Triton model's environment has no starlette: it uses server_log alone
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG = logging.getLogger("luvc.access")
STATE_KEY = "luvc_access"  # where the app leaves a request's fields, in the ASGI scope's state
REQUEST_ID_HEADER = b"x-request-id"


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record comes (a replaced stream is followed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextlib.contextmanager
def server_log(access_log: bool = True) -> Iterator[None]:
    """While serving: the server's log on stderr at INFO, one line each: ``luvc.serve.*`` (worker errors with their
    ids, cancelled requests) and, unless ``access_log`` is off, the ``luvc.access`` lines; nothing else of ``luvc``
    (a refused request's message goes to its client). The ``luvc`` logger is as it was afterwards."""
    logger = logging.getLogger("luvc")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(
        lambda record: record.name.startswith("luvc.serve") or (access_log and record.name == "luvc.access")
    )
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the CLI's root handler would print them again
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def record(scope: MutableMapping[str, Any], **fields: object) -> None:
    """Add ``fields`` (numbers and short identifiers only) to the access-log line of the request of ``scope``."""
    scope.setdefault("state", {}).setdefault(STATE_KEY, {}).update(fields)


def _printable(text: str, limit: int = 200) -> str:
    """``text`` as one short log field: spaces as ``%20``, other unprintable characters escaped (a path decodes
    ``%0A`` into a newline), cut at ``limit``."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return "".join(
        "%20" if c == " " else c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut
    )


class AccessLogMiddleware:
    """Logs every HTTP request of ``app`` (refusals by the access policy included, when it wraps that)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status, request_id = 0, ""

        async def send_and_note(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                given = [value for key, value in headers if key.lower() == REQUEST_ID_HEADER]
                if given:
                    request_id = given[0].decode("latin-1")
                else:
                    request_id = f"req-{uuid.uuid4().hex[:16]}"
                    headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            fields = scope.get("state", {}).get(STATE_KEY, {})
            extra = "".join(f" {key}={value}" for key, value in fields.items())
            elapsed_ms = (time.perf_counter() - began) * 1e3
            LOG.info(
                "%s %s %s %s %.1fms%s",
                request_id or "-",
                _printable(scope["method"]),
                _printable(scope["path"]),
                status or "-",  # no response: the client left first
                elapsed_ms,
                extra,
            )
