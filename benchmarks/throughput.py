"""Figure 2: throughput and latency with many users completing the questionnaire at once.

``bots`` bots (``bots.questionnaire:router``) times ``users`` users each; every
user sends ``/start`` and three answers, each after the reply to the previous
one, all users at the same time. Latency runs from injecting a message at the
emulator to the harness noticing the bot's reply there. Throughput is updates
handled per second of wall time, first injection to last reply. The CPU time of
the contender, the database server and the harness (emulator and users) is read
too: on a shared machine it says what the work cost, whatever else ran.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import Contender, World
from botyard.emulator import EmulatedBot

ROUTER = "bots.questionnaire:router"
ANSWERS = ("/start", "red", "cat", "pizza")
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Load:
    bots: int
    users: int

    @property
    def updates(self) -> int:
        return self.bots * self.users * len(ANSWERS)


class ReplyWatcher:
    """Notices, for one bot, which waiting users got their reply, and when.

    It reads the emulator's state of the bot directly, waking on the bot's own
    change signal: the emulator's public ways (``wait_for_reply`` per user, or an
    event subscription, which deep-copies every event) cost the harness more
    CPU than the bots being measured get, on a machine where they share cores.
    A user waits for one reply at a time, so any message after theirs is it.
    """

    def __init__(self, bot: EmulatedBot) -> None:
        self._bot = bot
        self._waiting: dict[int, tuple[int, asyncio.Future[float]]] = {}

    def expect(self, chat_id: int, after_message_id: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[chat_id] = (after_message_id, future)
        return future

    async def run(self) -> None:
        while True:
            await self._bot.changed.wait(None)
            now = time.perf_counter()
            for chat_id, (after, future) in list(self._waiting.items()):
                chat = self._bot.chats.get(chat_id)
                if chat is not None and chat.last_message_id > after:
                    del self._waiting[chat_id]
                    future.set_result(now)


async def _user(
    world: World, watcher: ReplyWatcher, token: str, user_id: int, latencies: list[float]
) -> None:
    for text in ANSWERS:
        sent = time.perf_counter()
        update = world.emulator.send_message(token, user_id, text)
        replied = await watcher.expect(user_id, update["message"]["message_id"])
        latencies.append(replied - sent)


async def run_once(
    world: World, contender: Contender, load: Load, run: int, deadline: float
) -> dict[str, Any]:
    """One contender, one run; returns its measurements.

    A contender that has not answered everything after ``deadline`` seconds is
    stopped there: its rates count what it answered by then, and
    ``answered_percent`` says how much that was.
    """
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
        first_user, users = 1_000_000 * (run + 1), load.users
        watchers = {token: ReplyWatcher(world.emulator.bot(token)) for token in tokens}
        listeners = [asyncio.create_task(watcher.run()) for watcher in watchers.values()]
        cpu_before = process.cpu_seconds()
        server_before = world.server_cpu_seconds()
        harness_before = time.process_time()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(
                    *(
                        _user(world, watchers[token], token, first_user + b * users + u, latencies)
                        for b, token in enumerate(tokens)
                        for u in range(users)
                    )
                )
        except TimeoutError:
            process.check_alive()  # a crash is an error; slowness is a result
        finally:
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
        seconds = time.perf_counter() - started
        cpu = process.cpu_seconds() - cpu_before
        harness = time.process_time() - harness_before
        server_after = world.server_cpu_seconds()
    finally:
        await process.stop()
        await world.drop_database(database)
    latencies.sort()
    answered = len(latencies)
    if not answered:
        raise RuntimeError(f"{contender.name} answered nothing within {deadline:.0f}s")
    return {
        "updates": load.updates,
        "answered": answered,
        "answered_percent": 100 * answered / load.updates,
        "seconds": seconds,
        "updates_per_second": answered / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "cpu_seconds_per_1000_updates": 1000 * cpu / answered,
        "server_cpu_seconds_per_1000_updates": (
            None
            if server_before is None or server_after is None
            else 1000 * (server_after - server_before) / answered
        ),
        "harness_cpu_seconds_per_1000_updates": 1000 * harness / answered,
    }


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


async def measure(
    world: World, contenders: tuple[Contender, ...], load: Load, runs: int, deadline: float
) -> dict[str, Any]:
    """``runs`` rounds, each running every contender once (order rotating each round)."""
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
    for run in range(runs):
        shift = run % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            results[contender.name].append(await run_once(world, contender, load, run, deadline))
    return {
        "bots": load.bots,
        "users_per_bot": load.users,
        "updates_per_run": load.updates,
        "deadline_seconds": deadline,
        "runs": results,
        "median": {name: medians(rows) for name, rows in results.items()},
    }


def medians(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median of each measure; ``None`` where a measure was not taken."""
    return {
        key: None if rows[0][key] is None else statistics.median(row[key] for row in rows)
        for key in rows[0]
    }
