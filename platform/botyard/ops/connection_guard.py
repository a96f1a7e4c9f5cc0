"""Limits on the HTTP server's connections, against clients that hold them open (slowloris).

aiohttp waits as long as a client likes for a request's headers, so a few hundred
connections trickling header bytes hold as many descriptors for ever. The guard
gives each connection :attr:`ConnectionLimits.header_timeout` to send a request's
headers (from when it opened, or since the previous response), and each client
address at most :attr:`ConnectionLimits.max_per_client` connections at once;
the endpoint bounds reading the body itself. A connection over a limit is
closed without an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["ConnectionGuard", "ConnectionLimits", "GuardedSite"]

logger = logging.getLogger("botyard.http")

END_OF_HEADERS = b"\r\n\r\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionLimits:
    """What each connection and each client address may hold (``webhook.*`` keys)."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_per_client: int = 200


class ConnectionGuard:
    """Counts connections per client address and closes those that stall before a request."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._clients: Counter[str] = Counter()
        self._timers: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}
        #: Connections refused for the per-address cap, and closed for stalling.
        self.refused = 0
        self.timed_out = 0

    def protocols(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory putting each of ``make``'s protocols behind this guard."""
        return lambda: _GuardedProtocol(self, make())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The headers arrived: stop the clock until the response is on its way."""
        transport = request.transport
        timer = self._timers.pop(transport, None) if transport is not None else None
        if timer is not None:
            timer.cancel()
        try:
            return await handler(request)
        finally:
            if transport is not None and not transport.is_closing():
                self._arm(transport)

    def opened(self, transport: asyncio.BaseTransport) -> bool:
        client = _client(transport)
        if self._clients[client] >= self.limits.max_per_client:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                logger.warning(
                    "http: %s holds %d connections, the most webhook.max_connections_per_client "
                    "allows; further ones are closed (%d so far)",
                    client,
                    self._clients[client],
                    self.refused,
                )
            return False
        self._clients[client] += 1
        self._arm(transport)
        return True

    def closed(self, transport: asyncio.BaseTransport) -> None:
        timer = self._timers.pop(transport, None)
        if timer is not None:
            timer.cancel()
        client = _client(transport)
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]

    def headers_arrived(self, transport: asyncio.BaseTransport) -> None:
        """Stop the clock: a stalled loop may run the timer before the request's handler."""
        timer = self._timers.pop(transport, None)
        if timer is not None:
            timer.cancel()

    def _arm(self, transport: asyncio.BaseTransport) -> None:
        previous = self._timers.pop(transport, None)
        if previous is not None:
            previous.cancel()
        self._timers[transport] = asyncio.get_running_loop().call_later(
            self.limits.header_timeout, self._expire, transport
        )

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        self._timers.pop(transport, None)
        self.timed_out += 1
        transport.close()


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, which the guard may refuse or close."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        #: The last bytes received, to see a header block's end split across reads.
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.opened(transport):
            transport.abort() if isinstance(transport, asyncio.Transport) else transport.close()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if END_OF_HEADERS in data or END_OF_HEADERS in self._tail + data[:3]:
            self._guard.headers_arrived(self._transport)
        self._tail = (self._tail + data[-3:])[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._transport is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._guard.closed(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every connection behind a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server: Any = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocols(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = (
            self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
        )


def _client(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
