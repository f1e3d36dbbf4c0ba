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

from luvc.serve.service import GenerationService

DEFAULT_DRAIN_TIMEOUT_S = 10.0
FLUSH_S = 5.0  # after the drain, how long the last events and [DONE] get to reach the clients


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains ``service`` for up to ``drain_timeout_s`` seconds before it shuts down."""

    def __init__(self, config: uvicorn.Config, service: GenerationService, drain_timeout_s: float) -> None:
        config.timeout_graceful_shutdown = int(drain_timeout_s + FLUSH_S) + 1
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections while the service drains
            server.close()
        await asyncio.get_running_loop().run_in_executor(None, self.service.drain, self.drain_timeout_s)
        await super().shutdown(sockets)
