"""Benchmark of the cleanup sweep: records removed per second, round trips per 1,000 removed.

Seeds N stale and N live FSM records spread over 10 bots (``state_ttl: 1h``),
times one sweep of all bots, checks that exactly the stale records went, and
reports the median over several runs. Stale records are idle for 2 hours and
were written under an older 7-day TTL (so their ``expires_at`` is still ahead:
neither MongoDB's nor SecantusDB's TTL monitor can remove them first); live
ones are idle for 10 minutes.

    python benchmarks/cleanup.py                 # N=5,000, 5 runs
    python benchmarks/cleanup.py --quick         # N=1,000, 3 runs
    python benchmarks/cleanup.py --uri mongodb://localhost:27017 --records 100000

Without ``--uri`` (or ``MONGODB_URI``) an in-memory SecantusDB is started, whose
absolute speed says little about MongoDB's; the round-trip count does not
depend on the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from botyard.cleanup.sweep import Sweeper
from botyard.database.embedded import SecantusServer
from botyard.database.roundtrips import RoundTripCounter
from botyard.registry.models import BotConfig
from botyard.storage import COLLECTION_NAME, prepare_database, utcnow

BOTS = 10
TTL = timedelta(hours=1)
#: The TTL the stale records were written under: their expires_at is still ahead.
OLD_TTL = timedelta(days=7)
DATABASE = "botyard_bench_cleanup"


def bots() -> list[BotConfig]:
    return [
        BotConfig.model_validate(
            {"name": f"bench{index}", "routers": ["bench:router"], "state_ttl": "1h"},
            context={"require_tokens": False},
        )
        for index in range(BOTS)
    ]


def records(
    namespace: str, count: int, *, idle: timedelta, ttl: timedelta, first: int
) -> Iterator[dict[str, Any]]:
    now = utcnow()
    for chat in range(first, first + count):
        updated = now - idle
        yield {
            "namespace": namespace,
            "chat_id": chat,
            "user_id": chat,
            "thread_id": None,
            "business_connection_id": None,
            "destiny": "default",
            "bot_id": 1,
            "state": "Form:name",
            "data": {"answer": "x" * 40},
            "updated_at": updated,
            "expires_at": updated + ttl,
        }


async def seed(collection: Any, n: int) -> None:
    per_bot = n // BOTS
    for index in range(BOTS):
        namespace = f"bench{index}"
        documents = [
            *records(namespace, per_bot, idle=timedelta(hours=2), ttl=OLD_TTL, first=0),
            *records(namespace, per_bot, idle=timedelta(minutes=10), ttl=TTL, first=per_bot),
        ]
        for start in range(0, len(documents), 1000):
            await collection.insert_many(documents[start : start + 1000], ordered=False)


async def one_run(
    client: AsyncMongoClient[Any], counter: RoundTripCounter, n: int, batch_size: int
) -> tuple[float, int, dict[str, int]]:
    await client.drop_database(DATABASE)
    database = client[DATABASE]
    await prepare_database(database)
    await seed(database[COLLECTION_NAME], n)
    sweeper = Sweeper(database, base_dir=Path.cwd(), batch_size=batch_size)
    counter.reset()
    started = time.perf_counter()
    results = await sweeper.run(bots())
    seconds = time.perf_counter() - started
    trips = dict(counter.commands)
    removed = sum(result.removed for result in results)
    left = await database[COLLECTION_NAME].count_documents({})
    expected = n // BOTS * BOTS
    if removed != expected or left != expected or any(result.error for result in results):
        raise SystemExit(f"wrong sweep: removed {removed}, left {left}, expected {expected} each")
    return seconds, removed, trips


async def measure(uri: str, records: int, runs: int, batch_size: int) -> dict[str, Any]:
    """Sweep ``runs`` times on the server at ``uri``; medians of the time and round trips."""
    counter = RoundTripCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, tz_aware=True, event_listeners=[counter])
    try:
        results = [await one_run(client, counter, records, batch_size) for _ in range(runs)]
        await client.drop_database(DATABASE)
    finally:
        await client.close()
    seconds = statistics.median(run[0] for run in results)
    removed = results[0][1]
    trips = statistics.median(sum(run[2].values()) for run in results)
    return {
        "bots": BOTS,
        "stale_records": removed,
        "live_records": removed,
        "batch_size": batch_size,
        "runs": runs,
        "seconds": seconds,
        "removed_per_second": removed / seconds,
        "round_trips": trips,
        "round_trips_by_command": dict(sorted(results[0][2].items())),
        "round_trips_per_1000_removed": trips * 1000 / removed,
    }


async def main(args: argparse.Namespace) -> None:
    uri = args.uri or os.environ.get("MONGODB_URI")
    server = None if uri else SecantusServer().start()
    try:
        result = await measure(
            uri or server.uri,  # type: ignore[union-attr]
            args.records,
            args.runs,
            args.batch_size,
        )
    finally:
        if server is not None:
            server.stop()
    print(f"server: {'MongoDB at ' + uri if uri else 'SecantusDB (in memory)'}")
    removed = result["stale_records"]
    print(f"{BOTS} bots, {removed} stale + {removed} live records, batch_size {args.batch_size}")
    print(f"sweep: median {result['seconds']:.3f}s over {args.runs} run(s)")
    print(f"removed/s: {result['removed_per_second']:,.0f}")
    print(f"round trips: {result['round_trips']:.0f} ({result['round_trips_by_command']})")
    print(f"round trips per 1,000 removed: {result['round_trips_per_1000_removed']:.1f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5000, help="N stale (and N live) records")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--uri", help="MongoDB URI (default: MONGODB_URI, else SecantusDB)")
    parser.add_argument("--quick", action="store_true", help="N=1,000 and 3 runs")
    args = parser.parse_args()
    if args.quick:
        args.records, args.runs = 1000, 3
    if args.records < BOTS:
        parser.error(f"--records must be at least {BOTS} (one per bot)")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
