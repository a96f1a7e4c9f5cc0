"""The webhook journal tells live instances from dead ones by the database server's clock.

The journal's own clock only dates acceptances: hosts' clocks disagree, and a
replica whose clock runs ahead must not declare the others dead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.database.server_time import server_now
from botyard.webhook.journal import (
    DEAD_AFTER,
    INSTANCES_COLLECTION,
    JOURNAL_COLLECTION,
    Recorded,
    UpdateJournal,
)


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
    assert await other.record("shop", 1, {"update_id": 1}) is Recorded.ACCEPTED
    clock.now += DEAD_AFTER + timedelta(seconds=1)
    assert await me.claim(["shop"]) == [], "a host's clock running ahead does not count"
    silent_since = await server_now(database) - DEAD_AFTER - timedelta(seconds=1)
    await database[INSTANCES_COLLECTION].update_one(
        {"_id": other.instance}, {"$set": {"seen_at": silent_since}}
    )
    [entry] = await me.claim(["shop"])
    assert (entry.bot, entry.update_id) == ("shop", 1)
    stored = await database[JOURNAL_COLLECTION].find_one({"update_id": 1})
    assert stored is not None
    assert stored["owner"] == me.instance
    assert stored["accepted_at"] == datetime(2030, 1, 1, tzinfo=UTC), "dated by the clock"
