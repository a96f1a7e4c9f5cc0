"""FSM operations beyond the connection pool wait in the storage's gate, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiogram.fsm.storage.base import StorageKey
from pymongo import AsyncMongoClient

from botyard.storage import BeanieStorage, prepare_database
from botyard.storage.gate import RESERVED_CONNECTIONS, OperationGate, gate_for


async def hold(gate: OperationGate, name: str, order: list[str], release: asyncio.Event) -> None:
    async with gate:
        order.append(name)
        await release.wait()


async def test_the_gate_lets_limit_holders_in_and_the_rest_in_order() -> None:
    gate = OperationGate(2)
    order: list[str] = []
    release = {name: asyncio.Event() for name in "abcde"}
    tasks = {name: asyncio.create_task(hold(gate, name, order, release[name])) for name in "abcde"}
    await asyncio.sleep(0.01)
    assert order == ["a", "b"]
    assert gate.holders == 2
    tasks["c"].cancel()  # a waiter that gives up is skipped
    release["b"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "d"]
    release["a"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "d", "e"]
    release["d"].set()
    release["e"].set()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert tasks["c"].cancelled()
    assert gate.holders == 0
    async with gate:  # free places are taken at once again
        assert gate.holders == 1


async def test_a_waiter_cancelled_as_its_turn_comes_passes_the_place_on() -> None:
    gate = OperationGate(1)
    order: list[str] = []
    second, third = asyncio.Event(), asyncio.Event()
    await gate.__aenter__()
    waiting = asyncio.create_task(hold(gate, "second", order, second))
    behind = asyncio.create_task(hold(gate, "third", order, third))
    await asyncio.sleep(0.01)
    await gate.__aexit__(None, None, None)  # hands the place to "second", not yet running
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert order == ["third"]
    third.set()
    await behind
    assert waiting.cancelled()
    assert gate.holders == 0


def test_a_gate_needs_a_place() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OperationGate(0)


class Concurrency:
    """A collection counting how many ``find_one`` calls run at once."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.now = self.most = self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        self.now += 1
        self.calls += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.01)
            return await self._collection.find_one(*args, **kwargs)
        finally:
            self.now -= 1


async def test_storages_on_one_client_share_a_gate_below_its_pool(
    mongo_uri: str, database_name: str
) -> None:
    pool = RESERVED_CONNECTIONS + 3
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, maxPoolSize=pool)
    try:
        await prepare_database(client[database_name])
        one = BeanieStorage(client[database_name], "one")
        other = BeanieStorage(client[database_name], "other")
        gate = gate_for(client)
        assert gate is not None
        assert gate.limit == 3
        counting = Concurrency(one.collection)
        one.collection = other.collection = counting  # type: ignore[assignment]
        keys = [StorageKey(bot_id=1, chat_id=user, user_id=user) for user in range(20)]
        states = await asyncio.gather(
            *(storage.get_state(key) for key in keys for storage in (one, other))
        )
        assert states == [None] * 40
        assert counting.calls == 40
        assert counting.most == 3
        assert gate.holders == 0
    finally:
        await client.drop_database(database_name)
        await client.close()


async def test_each_client_has_its_own_gate_and_one_without_a_pool_limit_none(
    mongo_uri: str,
) -> None:
    small: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, maxPoolSize=RESERVED_CONNECTIONS + 1)
    large: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri
    )  # clients of one server compare equal
    unlimited: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, maxPoolSize=0)
    try:
        small_gate, large_gate = gate_for(small), gate_for(large)
        assert small_gate is not None
        assert large_gate is not None
        assert (small_gate.limit, large_gate.limit) == (1, 100 - RESERVED_CONNECTIONS)
        assert gate_for(small) is small_gate
        assert gate_for(unlimited) is None
    finally:
        for client in (small, large, unlimited):
            await client.close()
