"""Benchmark of the FSM record counts: their cost at 10,000, 100,000 and 1,000,000 records.

One collection is grown to each size in turn (records spread evenly over
:data:`BOTS` bots and :data:`STATES`, no TTL: nothing expires during the run),
and at each size both ways botyard counts records per bot and state are taken
``runs`` times:

- ``exact``: :meth:`~botyard.storage.records.FSMRecords.count_per_state`, what
  ``botyard states stats`` and the sandbox show. One aggregation over the
  ``(namespace, state, _id)`` index; MongoDB answers it from the index alone
  (no record read), but it visits one index key per record.
- ``sample``: :meth:`~botyard.storage.records.FSMRecords.sample_per_state`, what
  the ``botyard_fsm_records`` metric is made of, on a schedule. The bots
  holding records, then per bot its states, from the indexes, then one count
  per state that stops after ``limit`` keys: at most ``bots x states x limit``
  keys, however many records there are.

Reported per size and way: the median time, the commands sent (round trips),
and ``explain``'s plan with the keys and documents it says were examined. For
the sample, ``limited_keys`` is what a MongoDB count scan visits by
construction (the sum over states of ``min(records, limit)``): SecantusDB's
``explain`` runs the match without the ``$limit``, so its figures are the
states' full sizes. Not part of the test suite.

    python -m benchmarks.fsm_sampler                   # 10k, 100k, 1M (seeding takes long)
    python -m benchmarks.fsm_sampler --sizes 10000,100000 --runs 3
    python -m benchmarks.fsm_sampler --uri mongodb://localhost:27017

Without ``--uri`` (or ``MONGODB_URI``) a SecantusDB is started with its data
in a temporary directory on disk. It has no covered plans: it fetches the
record behind every index key, and its ``$limit`` does not stop the scan, so
its times grow with the records for both ways; MongoDB's do not for the sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.embedded import SecantusServer
from botyard.database.roundtrips import RoundTripCounter
from botyard.ops.metrics import FSM_SAMPLE_LIMIT
from botyard.storage import COLLECTION_NAME, prepare_database, utcnow
from botyard.storage.records import (
    STATE_INDEX,
    FSMRecords,
    count_per_state_pipeline,
    count_up_to_pipeline,
)

BOTS = 10
STATES = ("Form:name", "Form:age", "Form:city", "Quiz:q1", None)
SIZES = (10_000, 100_000, 1_000_000)
DATABASE = "botyard_bench_fsm_sampler"
#: insert_many of a few thousand: larger batches made SecantusDB fall over.
INSERT_BATCH = 5_000

Counts = dict[tuple[str, str | None], int]


def namespaces() -> list[str]:
    return [f"bench{index}" for index in range(BOTS)]


def records(start: int, stop: int) -> Iterator[dict[str, Any]]:
    now = utcnow()
    for number in range(start, stop):
        yield {
            "namespace": f"bench{number % BOTS}",
            "chat_id": number,
            "user_id": number,
            "thread_id": None,
            "business_connection_id": None,
            "destiny": "default",
            "bot_id": 1,
            "state": STATES[number // BOTS % len(STATES)],
            "data": {"answer": "x" * 40},
            "updated_at": now,
            "expires_at": None,
            "purge_at": None,
        }


async def seed(database: AsyncDatabase[Any], start: int, stop: int) -> float:
    """Insert records ``start`` to ``stop``; return the seconds it took."""
    collection = database[COLLECTION_NAME]
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for document in records(start, stop):
        batch.append(document)
        if len(batch) == INSERT_BATCH:
            await collection.insert_many(batch, ordered=False)
            batch = []
    if batch:
        await collection.insert_many(batch, ordered=False)
    return time.perf_counter() - started


async def timed(
    count: Callable[[], Awaitable[Counts]], round_trips: RoundTripCounter, runs: int
) -> tuple[Counts, dict[str, Any]]:
    """Run ``count`` ``runs`` times: its last result, median seconds and round trips per run."""
    seconds = []
    for _ in range(runs):
        round_trips.reset()
        started = time.perf_counter()
        counts = await count()
        seconds.append(time.perf_counter() - started)
    return counts, {"seconds_median": statistics.median(seconds), "round_trips": round_trips.total}


async def measure(
    uri: str,
    sizes: tuple[int, ...] = SIZES,
    runs: int = 3,
    *,
    limit: int = FSM_SAMPLE_LIMIT,
    database_name: str = DATABASE,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Grow the records on the server at ``uri`` to each of ``sizes``, count both ways
    ``runs`` times at each, explain once; ``report`` hears each size's result as it comes."""
    round_trips = RoundTripCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        uri, tz_aware=True, event_listeners=[round_trips]
    )
    results = []
    try:
        await client.drop_database(database_name)
        database = client[database_name]
        await prepare_database(database)
        fsm = FSMRecords(database)
        seeded = 0
        for size in sizes:
            seeding = await seed(database, seeded, size)
            seeded = size
            exact, exact_cost = await timed(
                lambda: fsm.count_per_state(namespaces()), round_trips, runs
            )
            sample, sample_cost = await timed(
                lambda: fsm.sample_per_state(namespaces(), limit), round_trips, runs
            )
            expected = _expected(size)
            if exact != expected:
                raise SystemExit(f"wrong exact counts at {size}: {exact} != {expected}")
            if sample != {pair: min(n, limit) for pair, n in expected.items()}:
                raise SystemExit(f"wrong sample at {size} (limit {limit}): {sample}")
            result = {
                "records": size,
                "bots": BOTS,
                "states": len(STATES),
                "limit": limit,
                "seed_seconds": seeding,
                "runs": runs,
                "exact": {**exact_cost, **await _explain_exact(database)},
                "sample": {
                    **sample_cost,
                    "limited_keys": sum(sample.values()),
                    "bound_keys": BOTS * len(STATES) * limit,
                    **await _explain_sample(database, limit),
                },
            }
            results.append(result)
            if report is not None:
                report(result)
    finally:
        await client.drop_database(database_name)
        await client.close()
    return results


def _expected(size: int) -> Counts:
    counts: Counts = {}
    for number in range(size):
        pair = (f"bench{number % BOTS}", STATES[number // BOTS % len(STATES)])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


async def _explain_exact(database: AsyncDatabase[Any]) -> dict[str, Any]:
    command = {
        "aggregate": COLLECTION_NAME,
        "pipeline": count_per_state_pipeline(namespaces()),
        "hint": STATE_INDEX,
        "cursor": {},
    }
    return summary(await database.command("explain", command, verbosity="executionStats"))


async def _explain_sample(database: AsyncDatabase[Any], limit: int) -> dict[str, Any]:
    """The plans of the sample's three kinds of query, for the first bot and state."""
    holding = {
        "distinct": COLLECTION_NAME,
        "key": "namespace",
        "query": {"namespace": {"$in": namespaces()}},
    }
    distinct = {
        "distinct": COLLECTION_NAME,
        "key": "state",
        "query": {"namespace": namespaces()[0]},
    }
    count = {
        "aggregate": COLLECTION_NAME,
        "pipeline": count_up_to_pipeline(namespaces()[0], STATES[0], limit),
        "cursor": {},
    }
    explained = [
        summary(await database.command("explain", query, verbosity="executionStats"))
        for query in (holding, distinct, count)
    ]
    return {
        f"{kind}_{name}": value
        for kind, e in zip(("namespaces", "distinct", "count"), explained, strict=True)
        for name, value in e.items()
    }


def summary(explained: dict[str, Any]) -> dict[str, Any]:
    """The winning plan (outermost stage first), its index, and what was examined."""
    stats = _execution_stats(explained)
    stages = _stages(explained)
    return {
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
    planner: dict[str, Any] = explained.get("queryPlanner") or next(
        (
            stage["$cursor"]["queryPlanner"]
            for stage in explained.get("stages", ())
            if "$cursor" in stage
        ),
        {},
    )
    stages: list[dict[str, Any]] = []
    stage: dict[str, Any] | None = planner.get("winningPlan")
    while stage is not None:
        if "stage" in stage:
            stages.append(stage)
        stage = stage.get("queryPlan") or stage.get("inputStage")
    return stages


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['records']:,} records ({result['bots']} bots x {result['states']} states), "
        f"seeded in {result['seed_seconds']:.0f}s",
        flush=True,
    )
    exact, sample = result["exact"], result["sample"]
    print(
        f"  exact:  {exact['seconds_median']:.3f}s, {exact['round_trips']} round trip(s), "
        f"plan {exact['plan']} ({exact['index']}), keys {exact['keys_examined']}, "
        f"docs {exact['docs_examined']}",
        flush=True,
    )
    print(
        f"  sample: {sample['seconds_median']:.3f}s, {sample['round_trips']} round trips, "
        f"keys up to the limit {sample['limited_keys']} (bound {sample['bound_keys']}); "
        f"bots {sample['namespaces_plan']} ({sample['namespaces_index']}) keys "
        f"{sample['namespaces_keys_examined']}; "
        f"states {sample['distinct_plan']} ({sample['distinct_index']}) keys "
        f"{sample['distinct_keys_examined']}; "
        f"count {sample['count_plan']} ({sample['count_index']}) keys "
        f"{sample['count_keys_examined']} docs {sample['count_docs_examined']}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    uri = args.uri or os.environ.get("MONGODB_URI")
    sizes = tuple(int(size) for size in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="fsm-sampler-") as data:
        server = None if uri else SecantusServer(storage_path=data).start()
        print(f"server: {'MongoDB at ' + uri if uri else 'SecantusDB, data on disk in ' + data}")
        try:
            results = await measure(
                uri or server.uri,  # type: ignore[union-attr]
                sizes,
                args.runs,
                limit=args.limit,
                report=_print,
            )
        finally:
            if server is not None:
                server.stop()
    if args.json:
        print(json.dumps(results, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=FSM_SAMPLE_LIMIT)
    parser.add_argument("--uri", help="MongoDB URI (default: MONGODB_URI, else SecantusDB)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
