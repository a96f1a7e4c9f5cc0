"""Figure 2: throughput and latency with many users completing the questionnaire at once.

``bots`` bots (``bots.questionnaire:router``) times ``users`` users each; every
user sends ``/start`` and three answers, each after the reply to the previous
one, all users at the same time. Latency runs from injecting a message at the
emulator to the emulator storing the bot's reply (its ``message_sent`` event's
time). Throughput is updates handled per second of wall time, first injection
to last reply. The contender's own CPU time is read from ``/proc`` too: on a
shared machine it says what the work cost, whatever else ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import Contender, World
from botyard.testing import EmulatorEvent, Subscription

ROUTER = "bots.questionnaire:router"
ANSWERS = ("/start", "red", "cat", "pizza")
START_TIMEOUT = 120.0
REPLY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Load:
    bots: int
    users: int

    @property
    def updates(self) -> int:
        return self.bots * self.users * len(ANSWERS)


class ReplyClock:
    """Resolves a waiting user's future with the time the emulator stored the bot's reply."""

    def __init__(self, world: World, subscription: Subscription) -> None:
        self._subscription = subscription
        self._waiting: dict[tuple[int, int], asyncio.Future[float]] = {}

    def expect(self, token: str, chat_id: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[(token_id(token), chat_id)] = future
        return future

    async def run(self) -> None:
        async for event in self._subscription:
            self._observe(event)

    def _observe(self, event: EmulatorEvent) -> None:
        if event.kind != "message_sent":
            return
        future = self._waiting.pop((event.bot_id, event.payload["chat"]["id"]), None)
        if future is not None and not future.done():
            future.set_result(event.at)


def token_id(token: str) -> int:
    return int(token.split(":", 1)[0])


async def _user(
    world: World, clock: ReplyClock, token: str, user_id: int, latencies: list[float]
) -> None:
    for text in ANSWERS:
        reply = clock.expect(token, user_id)
        sent = time.time()
        world.emulator.send_message(token, user_id, text)
        async with asyncio.timeout(REPLY_TIMEOUT):
            replied = await reply
        latencies.append(replied - sent)


async def run_once(world: World, contender: Contender, load: Load, run: int) -> dict[str, Any]:
    """One contender, one run; returns its measurements."""
    database = f"bench_tp_{contender.name.replace('-', '_')}_{run}"
    await world.drop_database(database)
    world.add_bots(load.bots)
    tokens = world.tokens[: load.bots]
    before = world.polls_made(tokens)
    process = await world.launch(contender, load.bots, ROUTER, database)
    try:
        if not await world.wait_all_polling(process, tokens, before, START_TIMEOUT):
            raise RuntimeError(f"{contender.name}: bots not polling within {START_TIMEOUT:.0f}s")
        latencies: list[float] = []
        first_user = 1_000_000 * (run + 1)
        with world.emulator.subscribe(maxsize=1_000_000) as subscription:
            clock = ReplyClock(world, subscription)
            listener = asyncio.create_task(clock.run())
            cpu_before = process.cpu_seconds()
            server_before = world.server_cpu_seconds()
            harness_before = time.process_time()
            started = time.perf_counter()
            try:
                await asyncio.gather(
                    *(
                        _user(world, clock, token, first_user + b * load.users + u, latencies)
                        for b, token in enumerate(tokens)
                        for u in range(load.users)
                    )
                )
            except TimeoutError:
                process.check_alive()
                raise RuntimeError(
                    f"{contender.name}: a reply took over {REPLY_TIMEOUT:.0f}s; "
                    f"log tail:\n{process.tail()}"
                ) from None
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            seconds = time.perf_counter() - started
            cpu = process.cpu_seconds() - cpu_before
            harness = time.process_time() - harness_before
            server_after = world.server_cpu_seconds()
    finally:
        await process.stop()
        await world.drop_database(database)
    latencies.sort()
    return {
        "updates": load.updates,
        "seconds": seconds,
        "updates_per_second": load.updates / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "cpu_seconds_per_1000_updates": 1000 * cpu / load.updates,
        "server_cpu_seconds_per_1000_updates": (
            None
            if server_before is None or server_after is None
            else 1000 * (server_after - server_before) / load.updates
        ),
        "harness_cpu_seconds_per_1000_updates": 1000 * harness / load.updates,
    }


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


async def measure(
    world: World, contenders: tuple[Contender, ...], load: Load, runs: int
) -> dict[str, Any]:
    """``runs`` rounds, each running every contender once (order rotating each round)."""
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
    for run in range(runs):
        shift = run % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            results[contender.name].append(await run_once(world, contender, load, run))
    return {
        "bots": load.bots,
        "users_per_bot": load.users,
        "updates_per_run": load.updates,
        "runs": results,
        "median": {name: medians(rows) for name, rows in results.items()},
    }


def medians(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median of each measure; ``None`` where a measure was not taken."""
    return {
        key: None if rows[0][key] is None else statistics.median(row[key] for row in rows)
        for key in rows[0]
    }
