"""What botyard's FSM reads and writes cost the bot's process, in the driver and around it.

    python -m benchmarks.driver_cost                  # an in-memory SecantusDB
    python -m benchmarks.driver_cost --uri mongodb://...  --operations 4000

A questionnaire step costs two storage round trips: one read, one write
(figure 1). This measures the client CPU of exactly those, made by
:class:`~botyard.storage.BeanieStorage` outside any update (``get_data``: one
``find``; ``set_data``: one ``update`` with its pipeline), ``--concurrency`` at
once, on a client with botyard's options (``timeoutMS`` included). Each round
times ``--operations`` reads, then as many writes, by the process's CPU clock;
the medians of ``--rounds`` are printed, with the commands sent per operation,
and the same read made by PyMongo's ``find_one`` alone (what the driver costs
without botyard) and by an ``AsyncMongoClient`` without ``timeoutMS`` (what the
operation timeout costs).
The database server's CPU is not counted: it is another process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram.fsm.storage.base import StorageKey
from pymongo import AsyncMongoClient

from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.database.embedded import SecantusServer
from botyard.database.roundtrips import RoundTripCounter
from botyard.storage import BeanieStorage, prepare_database
from botyard.storage.record import COLLECTION_NAME, record_filter

DATABASE = "bench_driver_cost"
CONVERSATIONS = 100


async def cpu_per_operation(
    operation: Callable[[int], Awaitable[Any]], operations: int, concurrency: int
) -> float:
    """Milliseconds of this process's CPU per call of ``operation``, ``concurrency`` at once."""
    places = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with places:
            await operation(index)

    started = time.process_time()
    await asyncio.gather(*(one(index) for index in range(operations)))
    return 1000 * (time.process_time() - started) / operations


async def measure(uri: str, operations: int, concurrency: int, rounds: int) -> dict[str, Any]:
    counter = RoundTripCounter()
    client = mongo_client(uri, event_listeners=[counter])
    untimed: AsyncMongoClient[Document] = AsyncMongoClient(
        uri, tz_aware=True, event_listeners=[counter]
    )
    try:
        await client.drop_database(DATABASE)
        database = client[DATABASE]
        await prepare_database(database)
        storage = BeanieStorage(database, "bench")
        keys = [StorageKey(bot_id=1, chat_id=user, user_id=user) for user in range(CONVERSATIONS)]
        for key in keys:
            await storage.set_data(key, {"q1": "red", "q2": "cat"})
        collection = database[COLLECTION_NAME]
        untimed_collection = untimed[DATABASE][COLLECTION_NAME]
        projection = {"_id": 0, "state": 1, "data": 1, "updated_at": 1, "expires_at": 1}

        def key_of(index: int) -> StorageKey:
            return keys[index % CONVERSATIONS]

        measures: dict[str, Callable[[int], Awaitable[Any]]] = {
            "storage_read": lambda i: storage.get_data(key_of(i)),
            "storage_write": lambda i: storage.set_data(key_of(i), {"q1": "red", "n": i}),
            "find_one": lambda i: collection.find_one(
                record_filter("bench", key_of(i)), projection
            ),
            "find_one_without_timeout_ms": lambda i: untimed_collection.find_one(
                record_filter("bench", key_of(i)), projection
            ),
        }
        for operation in measures.values():  # warm: connections open, code paths loaded
            await cpu_per_operation(operation, concurrency * 4, concurrency)
        runs: dict[str, list[float]] = {name: [] for name in measures}
        commands: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            for name, operation in measures.items():
                counter.reset()
                runs[name].append(await cpu_per_operation(operation, operations, concurrency))
                commands[name] = {
                    command: count / operations for command, count in counter.commands.items()
                }
        medians = {name: statistics.median(values) for name, values in runs.items()}
        return {
            "operations_per_round": operations,
            "concurrency": concurrency,
            "rounds": rounds,
            "cpu_ms_per_operation": medians,
            "commands_per_operation": commands,
            "runs": runs,
            "cpu_ms_per_step": medians["storage_read"] + medians["storage_write"],
        }
    finally:
        await client.drop_database(DATABASE)
        await client.close()
        await untimed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", help="MongoDB URI (default: an in-memory SecantusDB)")
    parser.add_argument("--operations", type=int, default=3000, help="operations per round")
    parser.add_argument("--concurrency", type=int, default=10, help="operations at once")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = None
    uri = args.uri
    if not uri:
        server = SecantusServer().start()
        uri = server.uri
    try:
        result = asyncio.run(measure(uri, args.operations, args.concurrency, args.rounds))
    finally:
        if server is not None:
            server.stop()
    for name, value in result["cpu_ms_per_operation"].items():
        print(f"{name:30s} {value:6.3f} ms CPU per operation")
    print(f"{'one step (read + write)':30s} {result['cpu_ms_per_step']:6.3f} ms CPU")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
