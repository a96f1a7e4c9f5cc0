"""Benchmark of the metrics' FSM sampler: the cost of one sample at 1,000,000 records.

Seeds N FSM records over 100 bots and 5 states (no TTL: nothing expires during
the run), then takes the sample ``botyard_fsm_records`` is made of
(:meth:`botyard.storage.records.FSMRecords.count_per_state`) several times, and reports its
median time, the server's plan (index, covered or not) and the keys and
documents it examined, from ``explain``. Not part of the test suite.

    python -m benchmarks.fsm_sampler                       # N=1,000,000 (seeding takes minutes)
    python -m benchmarks.fsm_sampler --records 100000
    python -m benchmarks.fsm_sampler --uri mongodb://localhost:27017

Without ``--uri`` (or ``MONGODB_URI``) an in-memory SecantusDB is started. It
always fetches the documents behind an index scan (no covered plans), so there
the sample reads every record; MongoDB answers from the index alone
(``totalDocsExamined: 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from pymongo import AsyncMongoClient

from botyard.database.embedded import SecantusServer
from botyard.storage import COLLECTION_NAME, prepare_database, utcnow
from botyard.storage.records import STATE_INDEX, FSMRecords, count_per_state_pipeline

BOTS = 100
STATES = ("Form:name", "Form:age", "Form:city", "Quiz:q1", None)
DATABASE = "botyard_bench_fsm_sampler"
INSERT_BATCH = 10_000


def records(count: int) -> Iterator[dict[str, Any]]:
    now = utcnow()
    for number in range(count):
        yield {
            "namespace": f"bench{number % BOTS}",
            "chat_id": number,
            "user_id": number,
            "thread_id": None,
            "business_connection_id": None,
            "destiny": "default",
            "bot_id": 1,
            "state": STATES[number % len(STATES)],
            "data": {"answer": "x" * 40},
            "updated_at": now,
            "expires_at": None,
            "purge_at": None,
        }


async def seed(collection: Any, count: int) -> float:
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for document in records(count):
        batch.append(document)
        if len(batch) == INSERT_BATCH:
            await collection.insert_many(batch, ordered=False)
            batch = []
    if batch:
        await collection.insert_many(batch, ordered=False)
    return time.perf_counter() - started


async def measure(uri: str, count: int, runs: int, database_name: str = DATABASE) -> dict[str, Any]:
    """Seed ``count`` records on the server at ``uri``, sample ``runs`` times, explain once."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, tz_aware=True)
    try:
        await client.drop_database(database_name)
        database = client[database_name]
        await prepare_database(database)
        collection = database[COLLECTION_NAME]
        seeding = await seed(collection, count)
        namespaces = [f"bench{index}" for index in range(BOTS)]
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            counts = await FSMRecords(database).count_per_state(namespaces)
            seconds.append(time.perf_counter() - started)
        if sum(counts.values()) != count:
            raise SystemExit(f"wrong sample: {sum(counts.values())} records, expected {count}")
        explained = await database.command(
            "explain",
            {
                "aggregate": COLLECTION_NAME,
                "pipeline": count_per_state_pipeline(namespaces),
                "hint": STATE_INDEX,
                "cursor": {},
            },
            verbosity="executionStats",
        )
    finally:
        await client.drop_database(database_name)
        await client.close()
    stats = _execution_stats(explained)
    stages = _stages(explained)
    return {
        "records": count,
        "bots": BOTS,
        "states": len(STATES),
        "seed_seconds": seeding,
        "runs": runs,
        "sample_seconds_median": statistics.median(seconds),
        "plan": " <- ".join(str(stage.get("stage")) for stage in stages),
        "index": next((stage.get("indexName") for stage in stages if "indexName" in stage), None),
        "server": explained.get("serverInfo", {}).get("host"),
        "keys_examined": stats.get("totalKeysExamined"),
        "docs_examined": stats.get("totalDocsExamined"),
    }


def _execution_stats(explained: dict[str, Any]) -> dict[str, Any]:
    if "executionStats" in explained:
        return dict(explained["executionStats"])
    for stage in explained.get("stages", ()):
        if "$cursor" in stage:
            return dict(stage["$cursor"].get("executionStats", {}))
    return {}


def _stages(explained: dict[str, Any]) -> list[dict[str, Any]]:
    """The winning plan's stages, outermost first (``PROJECTION_COVERED``, ``IXSCAN``)."""
    planner = explained.get("queryPlanner") or next(
        stage["$cursor"]["queryPlanner"] for stage in explained["stages"] if "$cursor" in stage
    )
    stages: list[dict[str, Any]] = []
    stage: dict[str, Any] | None = planner["winningPlan"]
    while stage is not None:
        if "stage" in stage:
            stages.append(stage)
        stage = stage.get("queryPlan") or stage.get("inputStage")
    return stages


async def main(args: argparse.Namespace) -> None:
    uri = args.uri or os.environ.get("MONGODB_URI")
    server = None if uri else SecantusServer().start()
    try:
        result = await measure(uri or server.uri, args.records, args.runs)  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.stop()
    print(f"server: {'MongoDB at ' + uri if uri else 'SecantusDB (in memory)'}")
    print(f"{result['records']:,} records, {BOTS} bots, {len(STATES)} states")
    print(f"seeding: {result['seed_seconds']:.1f}s")
    print(f"sample: median {result['sample_seconds_median']:.3f}s over {args.runs} run(s)")
    print(f"plan: {result['plan']} (index {result['index']})")
    print(
        f"keys examined: {result['keys_examined']}, documents examined: {result['docs_examined']}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uri", help="MongoDB URI (default: MONGODB_URI, else SecantusDB)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
