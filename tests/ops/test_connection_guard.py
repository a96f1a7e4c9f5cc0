"""The connection guard closes connections that stall before a request, and only those."""

from __future__ import annotations

import asyncio
import socket
import time

from aiohttp import web

from botyard.ops.connection_guard import ConnectionGuard, ConnectionLimits, GuardedSite

HEADER_TIMEOUT = 0.5


async def _serve(guard: ConnectionGuard) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await GuardedSite(runner, "127.0.0.1", 0, guard).start()
    port: int = runner.addresses[0][1]
    return runner, port


def _ask(port: int, request: bytes, send_after: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        time.sleep(send_after)
        client.sendall(request)
        answer = b""
        while b"hello" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


async def test_a_request_whose_headers_arrived_survives_a_stalled_loop() -> None:
    """Headers in while the loop is blocked past the timeout: answered, not closed.

    After the stall the timer and the read are due together; the handler's task
    runs after both, so only the headers' arrival can stop the timer in time.
    """
    guard = ConnectionGuard(ConnectionLimits(header_timeout=HEADER_TIMEOUT))
    runner, port = await _serve(guard)
    try:
        asking = asyncio.ensure_future(
            asyncio.to_thread(_ask, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.3)
        )
        await asyncio.sleep(0.2)  # the connection is accepted and its timer armed
        time.sleep(1.0)  # noqa: ASYNC251 - the stall under test: headers arrive meanwhile
        answer = await asking
    finally:
        await runner.cleanup()

    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert guard.timed_out == 0


async def test_a_connection_trickling_headers_is_still_closed() -> None:
    guard = ConnectionGuard(ConnectionLimits(header_timeout=HEADER_TIMEOUT))
    runner, port = await _serve(guard)
    try:
        answer = await asyncio.to_thread(_ask, port, b"GET / HTTP/1.1\r\nHost:", 0.0)
    finally:
        await runner.cleanup()

    assert answer == b""
    assert guard.timed_out == 1
