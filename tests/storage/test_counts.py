"""Records per bot and state, counted from the ``(namespace, state, _id)`` index.

Two counts: the exact one (``botyard states stats``, the sandbox) and the
metrics' sample, which stops at a limit per bot and state. Their plans are read
with ``explain``: index scans, never a collection scan; on MongoDB covered ones
(no record fetched), a distinct scan for the sample's states and a count scan
that stops at the limit. SecantusDB, the default test server, fetches the
record behind every index key (it has no covered plans) and runs ``explain``
without the ``$limit``, so there the tests hold it to index scans alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiogram.fsm.storage.base import StorageKey
from benchmarks.fsm_sampler import BOTS, STATES, measure, summary
from pydantic import SecretStr
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cli.states import _collect_stats
from botyard.database.roundtrips import RoundTripCounter
from botyard.registry.models import BotConfig
from botyard.sandbox.views import record_counts
from botyard.storage import prepare_database
from botyard.storage.records import FSMRecords, ImportedRecord

RECORDS = 1000
#: Below the 20 records each bot holds in each state: every sampled count stops at it.
LIMIT = 7


async def test_both_counts_go_through_the_state_index(mongo_uri: str, database_name: str) -> None:
    [result] = await measure(
        mongo_uri, (RECORDS,), runs=1, limit=LIMIT, database_name=database_name
    )  # measure itself checks every count against what it inserted
    exact, sample = result["exact"], result["sample"]
    assert (result["bots"], result["states"]) == (BOTS, len(STATES))
    assert exact["round_trips"] == 1
    assert sample["round_trips"] == 1 + BOTS * (1 + len(STATES)), "bots; per bot: states, counts"
    assert sample["limited_keys"] == BOTS * len(STATES) * LIMIT == sample["bound_keys"]
    for plan in (
        exact["plan"],
        sample["namespaces_plan"],
        sample["distinct_plan"],
        sample["count_plan"],
    ):
        assert plan, "explain names the plan's stages"
        assert "COLLSCAN" not in plan, plan
    assert exact["index"] == sample["count_index"] == "fsm_ns_state"
    assert exact["keys_examined"] == RECORDS, "one index key per record, nothing else"
    if exact["server"] == "secantus":
        assert exact["plan"].endswith("FETCH <- IXSCAN"), exact["plan"]
        assert sample["count_plan"].endswith("FETCH <- IXSCAN"), sample["count_plan"]
        assert sample["distinct_plan"].endswith("IXSCAN"), sample["distinct_plan"]
        assert sample["namespaces_plan"].endswith("IXSCAN"), sample["namespaces_plan"]
    else:
        assert "FETCH" not in exact["plan"], f"MongoDB covers the count: {exact['plan']}"
        assert exact["docs_examined"] == 0
        assert "DISTINCT_SCAN" in sample["distinct_plan"], sample["distinct_plan"]
        assert sample["distinct_index"] == "fsm_ns_state"
        assert sample["distinct_keys_examined"] <= 2 * len(STATES) + 2, "a few keys per state"
        assert "DISTINCT_SCAN" in sample["namespaces_plan"], sample["namespaces_plan"]
        assert sample["namespaces_keys_examined"] <= 2 * BOTS + 2, "a few keys per bot"
        assert "FETCH" not in sample["count_plan"], sample["count_plan"]
        assert sample["count_docs_examined"] == 0
        assert sample["count_keys_examined"] <= LIMIT + 1, "the scan stops at the limit"


async def test_the_sample_counts_each_state_up_to_the_limit(
    mongo_uri: str, database_name: str
) -> None:
    round_trips = RoundTripCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[round_trips]
    )
    try:
        database = client[database_name]
        await prepare_database(database)
        now = datetime.now(UTC)
        held = {
            ("quiz", "Quiz:q1"): 5,
            ("quiz", None): 2,
            ("shop", "Cart:pay"): 1,
            ("other", "X"): 9,
        }
        pairs = [pair for pair, count in held.items() for _ in range(count)]
        for chat, (namespace, state) in enumerate(pairs):
            await _write(database, namespace, chat, state, now)
        records = FSMRecords(database)
        namespaces = [f"idle{number}" for number in range(50)] + ["quiz", "shop"]
        round_trips.reset()
        assert await records.sample_per_state(namespaces, 3) == {
            ("quiz", "Quiz:q1"): 3,
            ("quiz", None): 2,
            ("shop", "Cart:pay"): 1,
        }
        assert round_trips.total == 1 + (1 + 2) + (1 + 1), "bots without records cost nothing"
        assert await records.sample_per_state(namespaces, 100) == {
            pair: count for pair, count in held.items() if pair[0] != "other"
        }
        assert await records.count_per_state(namespaces) == await records.sample_per_state(
            namespaces, 100
        )
    finally:
        await client.close()


class _Queries(monitoring.CommandListener):
    """The reading commands a client sends, as sent, for ``explain``."""

    READS = frozenset({"find", "aggregate", "distinct", "count"})
    #: Added by the driver; explain takes the command without them.
    DRIVER_FIELDS = frozenset({"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber"})

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in self.READS:
            command = {k: v for k, v in event.command.items() if k not in self.DRIVER_FIELDS}
            self.sent.append(command)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_stats_sandbox_and_sample_queries_read_no_record_through_a_scan(
    mongo_uri: str, database_name: str
) -> None:
    """Every query ``botyard states stats``, the sandbox and the metrics' sample send,
    captured as sent and explained: an index scan each, covered on MongoDB."""
    queries = _Queries()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[queries]
    )
    try:
        database = client[database_name]
        await prepare_database(database)
        now = datetime.now(UTC)
        for chat in range(30):
            await _write(database, "quiz", chat, ["Quiz:q1", "Quiz:q2", None][chat % 3], now)
        records = FSMRecords(database)
        queries.sent.clear()
        await _collect_stats(database, (_bot("quiz"),), now + timedelta(days=30))
        await record_counts(database, ["quiz"])
        await records.sample_per_state(["quiz"], 5)
        sent = list(queries.sent)
        assert {next(iter(command)) for command in sent} == {"aggregate", "find", "distinct"}
        for command in sent:
            explained = summary(
                await database.command("explain", command, verbosity="executionStats")
            )
            assert explained["index"] is not None, (command, explained)
            assert "COLLSCAN" not in explained["plan"], (command, explained)
            if explained["server"] != "secantus":
                assert explained["docs_examined"] == 0, (command, explained)
    finally:
        await client.close()


async def _write(
    database: AsyncDatabase[Any], namespace: str, chat: int, state: str | None, now: datetime
) -> None:
    """A record as botyard stores it (through the importer's path)."""
    key = StorageKey(bot_id=1, chat_id=chat, user_id=chat)
    record = ImportedRecord(key, 1, state, {})
    assert await FSMRecords(database).write_imported(namespace, [record], now=now, state_ttl=None)


def _bot(name: str) -> BotConfig:
    return BotConfig(name=name, token=SecretStr("123456789:AA" + "x" * 33), routers=("x:router",))
