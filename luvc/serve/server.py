"""``DrainingServer``: uvicorn's server with a gentle shutdown for a generation service.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits for the open ones; this server first drains
the service (``GenerationService.drain``): new requests get 503 "shutting down, retry", waiting ones get that answer
at once, the running batch has ``drain_timeout_s`` seconds to finish, and rows still running then end with an error
(a stream gets an ``error`` event and ``[DONE]``). Only then are the connections waited for, so no stream is cut
without a word.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from luvc.serve.access import DEFAULT_READ_TIMEOUT_S
from luvc.serve.service import GenerationService

DEFAULT_DRAIN_TIMEOUT_S = 10.0
FLUSH_S = 5.0  # after the drain, how long the last events and [DONE] get to reach the clients


def head_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for a request's head: a connection that has not sent a whole head
    ``timeout_s`` seconds after it opened (or after its previous answer) is closed, however it trickles bytes, so
    half-open connections cannot pile up (slowloris). uvicorn's own keep-alive timer restarts at every byte."""

    class HeadDeadlineProtocol(H11Protocol):
        head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.head_deadline = self.loop.call_later(timeout_s, self._overdue)

        def _disarm(self) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

        def _overdue(self) -> None:
            self.head_deadline = None
            waiting_for_a_head = self.cycle is None or self.cycle.response_complete
            if waiting_for_a_head and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains ``service`` for up to ``drain_timeout_s`` seconds before it shuts down, and
    closes connections that do not send a request head within ``read_timeout_s`` seconds."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: GenerationService,
        drain_timeout_s: float,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        config.timeout_graceful_shutdown = int(drain_timeout_s + FLUSH_S) + 1
        config.http = head_deadline_protocol(read_timeout_s)
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections while the service drains
            server.close()
        await asyncio.get_running_loop().run_in_executor(None, self.service.drain, self.drain_timeout_s)
        await super().shutdown(sockets)
