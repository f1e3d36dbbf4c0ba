"""Who may talk to ``luvc-export serve``, and how much they may send: checked before the app reads a body.

``AccessPolicy`` is enforced by ``AccessMiddleware`` (plain ASGI, ahead of FastAPI), in this order:

1. the ``Host`` header must be one this server answers to (the bind address, or for loopback ``localhost``,
   ``127.0.0.1`` and ``[::1]``, or ``--allowed-hosts``): a web page that rebinds its DNS name to 127.0.0.1 cannot
   drive a loopback server through the visitor's browser (400);
2. with an API key, every path but ``/health`` needs one ``Authorization: Bearer KEY`` header, compared in constant
   time (401; 400 for several such headers); a key no client could send is refused at start (``api_key_problem``);
3. a POST must say ``Content-Type: application/json`` (415): a browser's cross-site "simple" request cannot;
4. a body above ``max_body_bytes`` is refused (413) from its ``Content-Length`` before a byte is read; a POST body
   is read here (counted, up to the limit) before the app sees it, so one without a length is refused alike;
5. the body must arrive within ``read_timeout_s`` (408); the head's own deadline is the server's
   (``luvc.serve.server.head_deadline_protocol``).

Every refusal is an OpenAI-style error body naming the limit and the fix, counted in ``/metrics`` by reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from luvc.errors import critical

API_KEY_ENV = "LUVC_API_KEY"
DEFAULT_MAX_BODY_BYTES = 50 * 2**20  # OpenAI's payload limit for image requests; a noisy 10 MP PNG is 24 MiB
DEFAULT_READ_TIMEOUT_S = 10.0  # a request head, then its body, must arrive within this (slow clients hold sockets)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/health",)  # load balancers probe it without a key

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    """What the server lets in: ``hosts`` the ``Host`` header may name (``()``: any), the ``api_key`` (``None``: no
    key), the largest body, whether FastAPI's ``/docs`` are served, and the seconds a body may take to arrive."""

    hosts: tuple[str, ...] = LOOPBACK_NAMES
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    docs: bool = False
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    @classmethod
    def for_bind(
        cls,
        host: str,
        api_key: str | None = None,
        allowed_hosts: tuple[str, ...] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        docs: bool = False,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> AccessPolicy:
        """The policy of a server bound to ``host``: its own name (and loopback's, when it is loopback) plus
        ``allowed_hosts``; any host when bound to every interface without ``allowed_hosts``. The key is ``api_key``,
        else ``$LUVC_API_KEY`` (``configured_api_key``); one no client could send is refused."""
        own = (*LOOPBACK_NAMES, host) if is_loopback(host) else (host,)
        hosts = () if is_wildcard(host) and not allowed_hosts else tuple(dict.fromkeys((*own, *allowed_hosts)))
        key, where = configured_api_key(api_key)
        if key is not None and (problem := api_key_problem(key)) is not None:
            critical(f"The API key in {where} cannot be sent by any client: {problem}; use printable ASCII, no spaces.")
        return cls(hosts, key, max_body_bytes, docs, read_timeout_s)


def configured_api_key(flag: str | None) -> tuple[str | None, str]:
    """The key the server requires and where it came from: ``--api-key``, else ``$LUVC_API_KEY`` (unset or empty:
    no key)."""
    if flag is not None:
        return flag, "--api-key"
    return os.environ.get(API_KEY_ENV) or None, f"${API_KEY_ENV}"


def api_key_problem(key: str) -> str | None:
    """Why no client can send ``key`` as ``Authorization: Bearer KEY``, or ``None`` when one can: HTTP header values
    are ASCII, and a bearer token holds no spaces (surrounding ones would be stripped by the client or proxy)."""
    if not key.strip():
        return "it is empty"
    if key != key.strip() or " " in key or "\t" in key:
        return "it holds spaces, which a bearer token cannot carry"
    if not key.isascii() or not key.isprintable():
        return "it holds characters other than printable ASCII, which HTTP headers do not carry"
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` binds every interface (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a ``Host`` header without its port (``[::1]:8000`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class AccessMiddleware:
    """Enforces ``policy`` ahead of ``app`` (see the module docstring); ``refused(reason)`` counts each refusal."""

    def __init__(self, app, policy: AccessPolicy, refused: Callable[[str], None]) -> None:
        self.app = app
        self.policy = policy
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _error(send, *refusal)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(_read_body(receive, self.policy.max_body_bytes), self.policy.read_timeout_s)
        except asyncio.TimeoutError:  # noqa: UP041 - on Python 3.10 not yet the builtin TimeoutError
            self.refused("slow_body")
            await _error(send, 408, _too_slow(self.policy.read_timeout_s), "slow_body")
            return
        if body is None:
            self.refused("body_too_large")
            await _error(send, 413, _too_large(self.policy.max_body_bytes), "body_too_large")
            return
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:  # after the body, what the client does next (a disconnect)
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        """``(status, message, reason)`` of a request the policy refuses, else ``None``."""
        policy = self.policy
        host = host_name(headers.get("host", ""))
        if policy.hosts and not host:
            return self._refuse(
                400,
                f"The request has no Host header; send Host: {policy.hosts[0]} (HTTP/1.1 requires one).",
                "bad_host",
            )
        if policy.hosts and host not in policy.hosts:
            return self._refuse(
                400,
                f"The Host header {host!r} is not one this server answers to; call it as "
                f"{policy.hosts[0]} (or start it with --allowed-hosts {host}).",
                "bad_host",
            )
        if policy.api_key is not None and scope["path"] not in OPEN_PATHS:
            if sum(key.lower() == b"authorization" for key, _ in scope["headers"]) > 1:
                return self._refuse(400, "Send one Authorization header, not several.", "unauthorized")
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), policy.api_key.encode()):
                return self._refuse(401, "Missing or wrong API key; send Authorization: Bearer <key>.", "unauthorized")
        if scope["method"] == "POST":
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return self._refuse(
                    415, f"Content-Type {media_type or 'none'!r}: send the request as application/json.", "media_type"
                )
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > policy.max_body_bytes):
                return self._refuse(413, _too_large(policy.max_body_bytes), "body_too_large")
        return None

    def _refuse(self, status: int, message: str, reason: str) -> tuple[int, str, str]:
        self.refused(reason)
        return status, message, reason


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` once it grows past ``limit`` bytes (or the client leaves)."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_slow(timeout_s: float) -> str:
    return f"The request body did not arrive within {timeout_s:g} s (the server's --read-timeout); send it at once."


def _too_large(limit: int) -> str:
    return (
        f"The request body is over the server's {limit} bytes (--max-body-bytes); send a smaller image or ask the "
        "operator to raise the limit."
    )


async def _error(send: Send, status: int, message: str, reason: str) -> None:
    """An OpenAI-style error response (``WWW-Authenticate`` with a 401)."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": reason}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
