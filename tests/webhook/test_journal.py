"""The webhook journal tells live instances from dead ones by its clock's time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.webhook.journal import DEAD_AFTER, UpdateJournal


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def database(mongo_uri: str, database_name: str) -> AsyncIterator[AsyncDatabase[Document]]:
    client = mongo_client(mongo_uri)
    try:
        yield client[database_name]
    finally:
        await client.drop_database(database_name)
        await client.close()


async def test_an_instance_silent_for_longer_than_dead_after_is_taken_over(
    database: AsyncDatabase[Document],
) -> None:
    clock = Clock()
    other, me = UpdateJournal(database, clock=clock), UpdateJournal(database, clock=clock)
    other.instance, me.instance = "other-host:1:a", "this-host:2:b"
    await other.heartbeat()
    assert await other.record("shop", 1, {"update_id": 1})
    clock.now += DEAD_AFTER
    assert await me.claim(["shop"]) == [], "heard from within DEAD_AFTER: alive"
    clock.now += timedelta(seconds=1)
    [entry] = await me.claim(["shop"])
    assert (entry.bot, entry.update_id) == ("shop", 1)
    stored = await database["webhook_updates"].find_one({"update_id": 1})
    assert stored is not None
    assert stored["owner"] == me.instance
    assert stored["accepted_at"] == datetime(2030, 1, 1, tzinfo=UTC), "dated by the clock"
