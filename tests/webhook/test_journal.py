"""The webhook journal tells live instances from dead ones by the database server's clock.

The journal's own clock only dates acceptances: hosts' clocks disagree, and a
replica whose clock runs ahead must not declare the others dead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson.errors import InvalidDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import InvalidOperation

from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.database.roundtrips import RoundTripCounter
from botyard.database.server_time import server_now
from botyard.webhook import journal as journal_module
from botyard.webhook.journal import (
    DEAD_AFTER,
    INSTANCES_COLLECTION,
    JOURNAL_COLLECTION,
    Recorded,
    UpdateJournal,
)

from webhook_harness import silence


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


async def test_bots_starting_together_share_one_claim(mongo_uri: str, database_name: str) -> None:
    counter = RoundTripCounter()
    client = mongo_client(mongo_uri, event_listeners=[counter])
    database = client[database_name]
    try:
        gone, me = UpdateJournal(database), UpdateJournal(database)
        gone.instance = "gone-host:1:a"
        bots = [f"bot{n}" for n in range(200)]
        for update_id, bot in enumerate(bots[:20]):
            assert await gone.record(bot, update_id, {"update_id": update_id}) is Recorded.ACCEPTED
        await silence(gone)
        await me.heartbeat()
        counter.reset()

        claimed = await asyncio.gather(*(me.claim_starting(bot, own=True) for bot in bots))

        assert [[(e.bot, e.update_id) for e in entries] for entries in claimed[:20]] == [
            [(bot, update_id)] for update_id, bot in enumerate(bots[:20])
        ]
        assert claimed[20:] == [[] for _ in bots[20:]]
        assert counter.commands == {"find": 2, "update": 1}, "one claim for 200 bots"
    finally:
        await client.drop_database(database_name)
        await client.close()


async def test_a_bot_stopped_while_its_claim_runs_leaves_its_entries_to_the_next_claim(
    database: AsyncDatabase[Document],
) -> None:
    gone, me = UpdateJournal(database), UpdateJournal(database)
    gone.instance = "gone-host:1:a"
    assert await gone.record("shop", 7, {"update_id": 7}) is Recorded.ACCEPTED
    await silence(gone)
    await me.heartbeat()

    starting = asyncio.create_task(me.claim_starting("shop"))
    await asyncio.sleep(0)  # the batched claim has begun
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    [entry] = await me.claim_starting("shop")  # not held by the stopped runner

    assert (entry.bot, entry.update_id) == ("shop", 7)


async def test_a_failed_claim_fails_every_bot_waiting_for_it(
    mongo_uri: str, database_name: str
) -> None:
    client = mongo_client(mongo_uri)
    me = UpdateJournal(client[database_name])
    await client.close()

    results = await asyncio.gather(
        me.claim_starting("a"), me.claim_starting("b"), return_exceptions=True
    )

    assert [type(result) for result in results] == [InvalidOperation, InvalidOperation]


async def test_handled_updates_left_in_the_journal_at_shutdown_are_logged(
    database: AsyncDatabase[Document],
    mongo_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """They are handled again after the restart: the log must say so, not swallow it."""
    client = mongo_client(mongo_uri)
    journal = UpdateJournal(client[database.name])
    assert await journal.record("shop", 3, {"update_id": 3}) is Recorded.ACCEPTED
    journal.finished("shop", 3)
    await client.close()  # MongoDB out of reach from now on

    with caplog.at_level(logging.WARNING, logger="botyard.journal"):
        await journal.close()

    assert (
        "journal: 1 handled update(s) not deleted at shutdown (InvalidOperation); "
        "they will be handled again" in caplog.messages
    )
    assert await database[JOURNAL_COLLECTION].count_documents({}) == 1


async def test_an_idle_journal_needs_no_upkeep_until_it_has_entries(
    database: AsyncDatabase[Document],
) -> None:
    """No webhook bots, nothing journaled: no heartbeat, no claim; one read says so."""
    me, other = UpdateJournal(database), UpdateJournal(database)
    me.instance, other.instance = "this-host:1:a", "other-host:2:b"
    assert not await me.needs_upkeep()
    await other.park("shop", [(5, {"update_id": 5})])
    assert await me.needs_upkeep(), "an entry another process may leave behind"
    await other.close()  # still holds it: the entry stays, its heartbeat goes
    assert await me.needs_upkeep()
    [entry] = await me.claim(["shop"])
    me.finished("shop", entry.update_id)
    assert await me.needs_upkeep(), "handled, its delete not yet made"
    await me.flush()
    assert not await me.needs_upkeep()


async def test_journaling_renews_a_heartbeat_too_old_to_vouch_for_the_entries(
    database: AsyncDatabase[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that wrote no heartbeat for long (nothing to serve) must not look gone
    to the others at the moment it journals: the entries would be taken from it."""
    me = UpdateJournal(database)
    instances = database[INSTANCES_COLLECTION]
    await me.park("shop", [(1, {"update_id": 1})])
    assert await instances.count_documents({"_id": me.instance}) == 1, "first journaling beats"

    await instances.delete_many({})
    monkeypatch.setattr(journal_module, "RENEW_AFTER", 3600.0)
    await me.park("shop", [(2, {"update_id": 2})])
    assert await me.record("hook", 3, {"update_id": 3}) is Recorded.ACCEPTED
    assert await instances.count_documents({}) == 0, "a recent heartbeat stands"

    monkeypatch.setattr(journal_module, "RENEW_AFTER", 0.0)
    assert await me.record("hook", 4, {"update_id": 4}) is Recorded.ACCEPTED
    assert await instances.count_documents({"_id": me.instance}) == 1
    await instances.delete_many({})
    assert await me.claim(["shop"]) == []
    assert await instances.count_documents({"_id": me.instance}) == 1, "so does a claim"


async def test_a_shared_journal_leaves_each_entry_to_whoever_holds_the_bot(
    mongo_uri: str, database: AsyncDatabase[Document]
) -> None:
    """With replicas: any replica journals, the bot's holder hands out in update_id order,
    one query per look, and what a holder let go of goes to the next one."""
    counter = RoundTripCounter()
    client = mongo_client(mongo_uri, event_listeners=[counter])
    try:
        elsewhere = UpdateJournal(database, shared=True)
        holder = UpdateJournal(client[database.name], shared=True)
        for update_id in (7, 5, 6):
            assert await elsewhere.record("shop", update_id, {"update_id": update_id}) is (
                Recorded.ACCEPTED
            )
        assert await elsewhere.record("shop", 5, {"update_id": 5}) is Recorded.DUPLICATE
        assert await elsewhere.record("cafe", 1, {"update_id": 1}) is Recorded.ACCEPTED
        owners = {doc["owner"] for doc in await database[JOURNAL_COLLECTION].find().to_list()}
        assert owners == {None}

        counter.reset()
        assert [e.update_id for e in await holder.pending(["shop"])] == [5, 6, 7]
        assert await holder.pending(["shop"]) == [], "held: not handed out twice"
        assert counter.commands == {"find": 2}

        holder.finished("shop", 5)
        counter.reset()
        await holder.flush()
        assert counter.commands == {"delete": 1}
        holder.release("shop")  # stopped with 6 and 7 unfinished: the next holder's
        following = UpdateJournal(database, shared=True)
        assert [e.update_id for e in await following.claim(["shop"])] == [6, 7]
        assert [e.bot for e in await following.pending(["cafe"])] == ["cafe"]
    finally:
        await client.close()


async def test_a_hand_out_never_repeats_an_entry_a_flush_is_deleting(
    database: AsyncDatabase[Document],
) -> None:
    journal = UpdateJournal(database, shared=True)
    for update_id in range(40):
        await journal.record("shop", update_id, {"update_id": update_id})
        [entry] = await journal.pending(["shop"])
        journal.finished("shop", entry.update_id)
        _, again = await asyncio.gather(journal.flush(), journal.pending(["shop"]))
        assert again == [], f"update {update_id} handed out again"


async def test_an_unexpected_error_deleting_handled_updates_is_logged_and_tried_again(
    database: AsyncDatabase[Document],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deletes run in a background task: an error it did not expect must not end it
    for good, unseen (every handled update would then be handled again after a restart)."""
    real_delete = AsyncCollection.delete_many
    failures = [InvalidDocument("cannot encode object")]

    async def delete_many(self: AsyncCollection[Document], *args: Any, **kwargs: Any) -> Any:
        if failures and self.name == JOURNAL_COLLECTION:
            raise failures.pop()
        return await real_delete(self, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, "delete_many", delete_many)
    journal = UpdateJournal(database)
    await journal.prepare()
    try:
        assert await journal.record("shop", 4, {"update_id": 4}) is Recorded.ACCEPTED
        with caplog.at_level(logging.ERROR, logger="botyard.journal"):
            journal.finished("shop", 4)
            async with asyncio.timeout(60):
                while await database[JOURNAL_COLLECTION].count_documents({}):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        assert "journal: could not delete handled updates yet" in caplog.text
        assert "InvalidDocument: cannot encode object" in caplog.text
    finally:
        await journal.close()
