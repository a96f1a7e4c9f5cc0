"""At most as many FSM operations at once as the client's connection pool can serve.

With 50 bots of 20 users each, a thousand updates read and write their FSM
records at the same time, and a PyMongo client has 100 connections
(``maxPoolSize``). The operations beyond that wait inside PyMongo's pool, on a
lock and condition modelled on asyncio's, whose every acquire scans all the
waiters: under that load about 5% of botyard's CPU went to waiting for a
connection. :class:`OperationGate` lets at most a little less than the pool's
size through and queues the rest itself, in order, at a constant cost each, so
the pool never has a waiter. The rest of the pool is left for the platform's
other work (the journal, heartbeats, the cleanup). :class:`asyncio.Semaphore`
would scan its waiters too: on Python 3.11 its ``locked()``, called by every
``acquire``, looks at each waiter for one not cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import math
import weakref
from types import TracebackType
from typing import Any

from pymongo import AsyncMongoClient

__all__ = ["OperationGate", "gate_for"]

#: Connections of a client's pool left to operations that do not pass a gate.
RESERVED_CONNECTIONS = 10

#: By the client's id (clients of one server compare equal), dropped when the client goes.
_GATES: dict[int, OperationGate] = {}


class OperationGate:
    """An async context manager letting ``limit`` holders in at once, the others in turn."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._free = limit
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def holders(self) -> int:
        return self.limit - self._free

    async def __aenter__(self) -> None:
        if self._free and not self._waiting:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed the place just as it was cancelled: pass it on
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter is skipped
                turn.set_result(None)  # the place goes straight to the next in line
                return
        self._free += 1


def gate_for(client: AsyncMongoClient[Any]) -> OperationGate | None:
    """The gate shared by every storage on ``client``; ``None`` when its pool has no limit."""
    gate = _GATES.get(id(client))
    if gate is None:
        size = client.options.pool_options.max_pool_size
        if not size or math.isinf(size):
            return None
        gate = _GATES[id(client)] = OperationGate(max(1, int(size) - RESERVED_CONNECTIONS))
        weakref.finalize(client, _GATES.pop, id(client), None)
    return gate
