"""Replicas against a real database: balance, handover, failover, fencing, the leader.

Each test drives the replicas' ticks itself (no background loop), with a fake
host standing for the supervisor, so every intermediate state can be checked:
at no point may two hosts run the same bot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from botyard.cluster import Replica, cluster_status
from botyard.cluster.claims import CLAIMS_COLLECTION, Claims
from botyard.cluster.membership import REPLICAS_COLLECTION
from botyard.cluster.memory import MemoryHost
from botyard.registry.models import ClusterConfig

#: Lapse 1.8 s, fence 1.2 s: short enough to wait for in real time, long enough
#: that four replicas ticking in turn on a loaded machine do not lapse.
CONFIG = ClusterConfig(heartbeat_interval=0.6, failover_time=2.4)


class FakeHost(MemoryHost):
    """The supervisor's side, whose bots take a moment to stop (in-flight updates)."""

    async def stop_bots(self, names: Collection[str]) -> None:
        await asyncio.sleep(0.01)
        await super().stop_bots(names)


@pytest.fixture
async def database(mongo_uri: str, database_name: str) -> AsyncIterator[AsyncDatabase[Any]]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield client[database_name]
    await client.drop_database(database_name)
    await client.close()


BOTS = [f"bot{i}" for i in range(12)]


def _replica(database: AsyncDatabase[Any], name: str, bots: list[str] = BOTS) -> Replica:
    return Replica(database, CONFIG, FakeHost(bots), replica_id=name)


def _host(replica: Replica) -> FakeHost:
    host = replica._host
    assert isinstance(host, FakeHost)
    return host


def _assert_one_poller(replicas: list[Replica]) -> None:
    seen: dict[str, str] = {}
    for replica in replicas:
        for bot in _host(replica).running:
            assert bot not in seen, f"{bot} runs on {seen[bot]} and {replica.id}"
            seen[bot] = replica.id


async def _rounds(replicas: list[Replica], rounds: int) -> None:
    """Tick every replica, then let handovers finish; check the invariant all along."""
    for _ in range(rounds):
        for replica in replicas:
            await replica.tick()
            _assert_one_poller(replicas)
        await asyncio.sleep(0.03)
        _assert_one_poller(replicas)


async def _settle(replicas: list[Replica], bots: list[str] = BOTS) -> None:
    for _ in range(20):
        await _rounds(replicas, 1)
        if sorted(b for r in replicas for b in _host(r).running) == sorted(bots):
            return
    raise AssertionError({r.id: sorted(_host(r).running) for r in replicas})


async def test_one_replica_serves_every_bot_and_leads(database: AsyncDatabase[Any]) -> None:
    alone = _replica(database, "a")
    await alone.tick()
    assert _host(alone).running == set(), "nothing is claimed at the first heartbeat"
    await alone.tick()
    assert _host(alone).running == set(BOTS)
    assert _host(alone).leading
    assert alone.share == frozenset(BOTS)
    claims = {doc["_id"]: doc["holder"] async for doc in database[CLAIMS_COLLECTION].find()}
    assert claims == dict.fromkeys(BOTS, "a")
    await alone.tick()  # the heartbeat lists what it serves, for botyard status
    doc = await database[REPLICAS_COLLECTION].find_one({"_id": "a"})
    assert doc is not None
    assert doc["bots"] == sorted(BOTS)


async def test_three_replicas_split_the_bots_evenly_without_overlap(
    database: AsyncDatabase[Any],
) -> None:
    replicas = [_replica(database, name) for name in ("a", "b", "c")]
    await _settle(replicas)
    assert sorted(len(_host(r).running) for r in replicas) == [4, 4, 4]
    assert sum(_host(r).leading for r in replicas) == 1
    await _rounds(replicas, 1)  # the next heartbeats list the bots
    status = await cluster_status(database, CONFIG.lapse)
    assert [m.id for m in status.members] == ["a", "b", "c"]
    assert sorted(len(m.bots) for m in status.members) == [4, 4, 4]
    text = status.render()
    assert "3 live replica(s), 0 gone" in text
    assert "(leader)" in text


async def test_join_and_leave_hand_bots_over_one_poller_at_a_time(
    database: AsyncDatabase[Any],
) -> None:
    replicas = [_replica(database, name) for name in ("a", "b", "c")]
    await _settle(replicas)
    before = {r.id: set(_host(r).running) for r in replicas}
    replicas.append(_replica(database, "d"))
    for _ in range(6):
        await _rounds(replicas, 1)
    assert sorted(len(_host(r).running) for r in replicas) == [3, 3, 3, 3]
    moved = sum(len(before[r.id] - _host(r).running) for r in replicas[:3])
    assert 3 <= moved <= 6  # d's three, and a few for the shifted capacities
    assert all(
        bot in _host(r).stops for r in replicas[:3] for bot in before[r.id] - _host(r).running
    )

    leaving, replicas = replicas[0], replicas[1:]
    task = asyncio.create_task(leaving.leave())
    while not task.done():
        await _rounds(replicas, 1)
        _assert_one_poller([leaving, *replicas])
    await _settle(replicas)
    assert sorted(len(_host(r).running) for r in replicas) == [4, 4, 4]
    assert await database[REPLICAS_COLLECTION].find_one({"_id": leaving.id}) is None


async def test_a_silent_replica_is_taken_over_after_the_lapse_and_fences_itself(
    database: AsyncDatabase[Any],
) -> None:
    a, b = _replica(database, "a"), _replica(database, "b")
    await _settle([a, b])
    a_bots = set(_host(a).running)
    # a is paused (no ticks): b waits for the lapse on the server's clock
    await b.tick()
    assert _host(b).running.isdisjoint(a_bots), "taken over before the lapse"
    await asyncio.sleep(CONFIG.fence + 0.05)
    assert a.remaining() <= 0, "a's own deadline passes before the others' lapse"
    await asyncio.sleep(CONFIG.lapse - CONFIG.fence)
    await b.tick()
    assert _host(b).running == set(BOTS)
    assert b.leading
    # a wakes up: it stops its bots before anything else, and gets no claim back by force
    await a.tick()
    assert _host(a).running == set()
    assert not _host(a).leading
    assert a.handovers["fenced"] == len(a_bots)
    await _settle([a, b])
    assert sorted(len(_host(r).running) for r in (a, b)) == [6, 6]


async def test_a_replica_cut_off_from_mongodb_stops_polling_before_the_lapse(
    database: AsyncDatabase[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _replica(database, "a"), _replica(database, "b")
    await _settle([a, b])

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection refused (injected)")

    monkeypatch.setattr(a.membership, "heartbeat", unreachable)
    cut_off = asyncio.get_running_loop().time()
    while _host(a).running:
        await a.tick()
        await asyncio.sleep(0.05)
    stopped_after = asyncio.get_running_loop().time() - cut_off
    assert stopped_after < CONFIG.lapse
    assert a.remaining() <= 0
    monkeypatch.undo()
    # MongoDB is back before anyone took a's bots: a takes its own claims back
    await _settle([a, b])
    assert sorted(len(_host(r).running) for r in (a, b)) == [6, 6]


async def test_of_two_replicas_racing_for_a_bot_one_wins(database: AsyncDatabase[Any]) -> None:
    now = (await database.command("hello"))["localTime"]
    first, second = Claims(database, "a"), Claims(database, "b")
    won = await asyncio.gather(first.take({"x": None}, now), second.take({"x": None}, now))
    assert sorted(map(len, won)) == [0, 1]
    holder = "a" if won[0] else "b"
    claim = (await first.read(["x"]))["x"]
    assert claim.holder == holder
    # a holder that re-took its claim (new epoch) cannot be overtaken with the old one
    again = Claims(database, holder)
    assert await again.take({"x": claim}, now) == {"x"}
    thief = Claims(database, "c")
    assert await thief.take({"x": claim}, now) == set()
    await again.release(["x"])
    released = (await thief.read(["x"]))["x"]
    assert released.holder is None
    assert await thief.take({"x": released}, now) == {"x"}


async def test_a_bot_added_to_the_registry_starts_on_exactly_one_replica(
    database: AsyncDatabase[Any],
) -> None:
    replicas = [_replica(database, name) for name in ("a", "b", "c")]
    await _settle(replicas)
    for replica in replicas:
        _host(replica).bots.append("newcomer")
    await _settle(replicas, [*BOTS, "newcomer"])
    assert sum("newcomer" in _host(r).running for r in replicas) == 1


async def test_the_leader_forgets_replicas_that_died_long_ago(
    database: AsyncDatabase[Any],
) -> None:
    alone = _replica(database, "a")
    await alone.tick()
    ghost = {"_id": "ghost", "heartbeat_at": datetime.now(UTC) - timedelta(hours=2), "bots": []}
    await database[REPLICAS_COLLECTION].insert_one(ghost)
    await alone.tick()
    assert alone.leading
    remaining = [doc["_id"] async for doc in database[REPLICAS_COLLECTION].find()]
    assert remaining == ["a"]


async def test_close_ends_the_loop_without_a_cancellation(database: AsyncDatabase[Any]) -> None:
    replica = _replica(database, "a")
    loop = asyncio.create_task(replica.run())
    await asyncio.sleep(CONFIG.heartbeat_interval * 2.5)
    assert _host(replica).running == set(BOTS)
    replica.close()
    await asyncio.wait_for(loop, timeout=30)
    await replica.leave()
    assert _host(replica).running == set()
    assert await database[REPLICAS_COLLECTION].find_one({"_id": "a"}) is None
    assert (await Claims(database, "b").read(BOTS)).keys() == set(BOTS)
    assert {claim.holder for claim in (await Claims(database, "b").read(BOTS)).values()} == {None}


class StoringHost(FakeHost):
    """Records, each time the replica asks it to store what stopped bots finished,
    which of them the replica still held a claim on at that moment."""

    def __init__(self, bots: list[str], claims: Claims) -> None:
        super().__init__(bots)
        self.claims = claims
        self.stored_while_held: list[set[str]] = []

    async def store_finished(self) -> None:
        self.stored_while_held.append(await self.claims.held(self.stops))


async def test_what_stopped_bots_finished_is_stored_before_their_claims_go(
    database: AsyncDatabase[Any],
) -> None:
    """A handover deletes the handled journal entries before the next holder may start
    the bot and claim them; else it would handle them a second time."""
    host = StoringHost(BOTS, Claims(database, "a"))
    a = Replica(database, CONFIG, host, replica_id="a")
    await _settle([a])
    b = _replica(database, "b")
    for _ in range(8):
        await _rounds([a, b], 1)
    moved = set(host.stops)
    assert len(moved) == 6
    assert moved == set(_host(b).running)
    assert host.stored_while_held, "store_finished was never called"
    assert set().union(*host.stored_while_held) == moved, "stored while still held"
    assert await host.claims.held(moved) == set()
