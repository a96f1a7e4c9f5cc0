"""Coordination cost and failover time of replicas sharing the bots (``cluster:``).

Three :class:`~botyard.cluster.Replica` objects run their real heartbeat loops
against the database, each on its own client with a
:class:`~botyard.database.roundtrips.RoundTripCounter`; the supervisor is
replaced by a host that only records which bots it runs (starting a bot costs
the cluster nothing more). After the replicas settle, the commands of a
measurement window are counted: the writes per second must not depend on the
number of bots. Then one replica dies without a word (its loop is cancelled, as
by SIGKILL) and the time until the two others serve every bot is measured.

    python -m benchmarks.cluster --uri mongodb://localhost:27017 --bots 100,1000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from typing import Any

from pymongo import AsyncMongoClient

from botyard.cluster import Replica
from botyard.cluster.memory import MemoryHost
from botyard.database.embedded import SecantusServer
from botyard.database.roundtrips import RoundTripCounter
from botyard.registry.models import ClusterConfig

WRITES = frozenset({"insert", "update", "delete", "findAndModify"})
REPLICAS = 3


async def _until(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not reached within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def measure_one(uri: str, bots: int, config: ClusterConfig, window: float) -> dict[str, Any]:
    names = [f"bot{i}" for i in range(bots)]
    database_name = f"bench_cluster_{uuid.uuid4().hex[:8]}"
    counters = [RoundTripCounter() for _ in range(REPLICAS)]
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(uri, tz_aware=True, event_listeners=[counter]) for counter in counters
    ]
    hosts = [MemoryHost(names) for _ in range(REPLICAS)]
    replicas = [
        Replica(client[database_name], config, host)
        for client, host in zip(clients, hosts, strict=True)
    ]
    loops = [asyncio.create_task(replica.run()) for replica in replicas]

    def served(alive: list[MemoryHost]) -> bool:
        running = [bot for host in alive for bot in host.running]
        return len(running) == bots and len(set(running)) == bots

    try:
        settle = await _until(lambda: served(hosts), timeout=300)
        for counter in counters:
            counter.reset()
        await asyncio.sleep(window)
        commands: Counter[str] = Counter()
        for counter in counters:
            commands.update(counter.commands)
        writes = sum(count for name, count in commands.items() if name in WRITES)
        loops[0].cancel()  # SIGKILL: no leave, no release
        died = time.monotonic()
        await asyncio.gather(loops[0], return_exceptions=True)
        await _until(lambda: served(hosts[1:]), timeout=config.failover_time * 4)
        failover = time.monotonic() - died
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await clients[0].drop_database(database_name)
        for client in clients:
            await client.close()
    return {
        "bots": bots,
        "replicas": REPLICAS,
        "heartbeat_interval": config.heartbeat_interval,
        "failover_time": config.failover_time,
        "settle_seconds": round(settle, 2),
        "window_seconds": window,
        "writes_per_second": round(writes / window, 2),
        "commands_per_second": round(sum(commands.values()) / window, 2),
        "commands": dict(sorted(commands.items())),
        "failover_seconds": round(failover, 2),
    }


async def measure(
    uri: str, sizes: list[int], config: ClusterConfig, window: float
) -> list[dict[str, Any]]:
    return [await measure_one(uri, bots, config, window) for bots in sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--uri", help="MongoDB URI; default: a SecantusDB started for the run")
    parser.add_argument("--bots", default="100,1000,10000", help="comma-separated bot counts")
    parser.add_argument("--heartbeat", type=float, default=3.0, help="heartbeat_interval, s")
    parser.add_argument("--failover", type=float, default=15.0, help="failover_time, s")
    parser.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    args = parser.parse_args()
    config = ClusterConfig(heartbeat_interval=args.heartbeat, failover_time=args.failover)
    sizes = [int(size) for size in args.bots.split(",")]
    with contextlib.ExitStack() as stack:
        uri = args.uri
        if uri is None:
            server = SecantusServer().start()
            stack.callback(server.stop)
            uri = server.uri
        results = asyncio.run(measure(uri, sizes, config, args.window))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
