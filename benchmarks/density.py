"""Figures 3 and 5: many idle bots in one process, and the time to the first answer.

For each size, the contender starts with that many bots (``bots.echo:router``)
while one message already waits for the last bot of the list. Measured from
spawning the process: seconds until that bot answered (figure 5), seconds
until every bot has called ``getUpdates`` (figure 3); then resident memory, and
CPU (as a percentage of one core) and wakeups per second over an idle window.

The idle window starts ``settle_seconds`` after every bot polled, so the tail of
the start (botyard's one full garbage collection once every bot polls) is not
counted as idle, and by default lasts one long-poll timeout of the contender:
botyard's 30 s, aiogram's ``polling_timeout`` of 10 s. An idle process's work is
periodic with that period (each bot's long poll returns once per timeout, empty,
and is sent again), so a window of one period counts each bot's poll exactly
once, wherever it falls; a shorter window would count all or none of the polls
of bots that started together.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import time
from pathlib import Path
from typing import Any

from aiogram import Dispatcher

from benchmarks.harness import Contender, ContenderProcess, World
from botyard.runtime.runner import POLLING_TIMEOUT

ROUTER = "bots.echo:router"
PROBE_USER = 777
#: Sizes up to this many bots run ``runs`` times (medians); larger ones once, for time.
REPEATED_UP_TO = 1
#: How long a start may take before the size is reported as not reached.
START_TIMEOUT = 300.0
#: aiogram's ``start_polling`` default, which the plain-aiogram contenders keep.
AIOGRAM_POLLING_TIMEOUT: int = (
    inspect.signature(Dispatcher.start_polling).parameters["polling_timeout"].default
)


def long_poll_seconds(contender: Contender) -> float:
    """The ``getUpdates`` timeout the contender asks Telegram for."""
    return float(POLLING_TIMEOUT if contender.name == "botyard" else AIOGRAM_POLLING_TIMEOUT)


def cpu_and_wakeups(process: ContenderProcess) -> tuple[float, int]:
    """CPU seconds (nanosecond precision, from ``schedstat``) and voluntary context
    switches (each one a sleep the thread woke from), summed over the process's threads."""
    cpu_ns = wakeups = 0
    for task in Path(f"/proc/{process.process.pid}/task").iterdir():
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    wakeups += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return cpu_ns / 1e9, wakeups


async def run_once(
    world: World,
    contender: Contender,
    bots: int,
    idle_seconds: float | None,
    settle_seconds: float = 0.0,
) -> dict[str, Any]:
    """One contender at one size."""
    world.add_bots(bots)
    tokens = world.tokens[:bots]
    before = world.polls_made(tokens)
    database = f"bench_density_{contender.name.replace('-', '_')}"
    started = time.perf_counter()
    process = await world.launch(contender, bots, ROUTER, database)
    probe = tokens[-1]
    world.emulator.send_message(probe, PROBE_USER, "ping")  # after launch dropped leftovers

    async def first_answer() -> float | None:
        try:
            await world.emulator.wait_for_reply(probe, PROBE_USER, timeout=START_TIMEOUT)
        except TimeoutError:
            return None  # reported as not reached, like a start that never completes
        return time.perf_counter() - started

    try:
        answered = asyncio.create_task(first_answer())
        polling = await world.wait_all_polling(process, tokens, before, START_TIMEOUT)
        all_polling = time.perf_counter() - started
        result: dict[str, Any] = {
            "bots": bots,
            "all_polling": polling,
            "seconds_to_all_polling": all_polling if polling else None,
            "seconds_to_first_answer": await answered,
        }
        window = long_poll_seconds(contender) if idle_seconds is None else idle_seconds
        if window > 0:
            await asyncio.sleep(settle_seconds)
            cpu, wakeups = cpu_and_wakeups(process)
            await asyncio.sleep(window)
            process.check_alive()
            cpu_after, wakeups_after = cpu_and_wakeups(process)
            result["idle_seconds"] = window
            result["idle_cpu_percent"] = 100 * (cpu_after - cpu) / window
            result["idle_wakeups_per_second"] = (wakeups_after - wakeups) / window
        result["rss_mb"] = process.rss_bytes() / 2**20
    finally:
        await process.stop()
        await world.drop_database(database)
    return result


async def measure(
    world: World,
    contenders: tuple[Contender, ...],
    sizes: list[int],
    *,
    runs: int,
    idle_seconds: float | None,
    baseline_max_bots: int,
    settle_seconds: float = 0.0,
) -> dict[str, Any]:
    """Every size for every contender, alternating; only one bot is started ``runs`` times.

    Larger sizes run once, to keep the full run within fifteen minutes: their
    idle window alone takes ``settle_seconds`` and a long-poll timeout per
    contender. ``idle_seconds`` ``None``: each contender's long-poll timeout.

    Baselines run only up to ``baseline_max_bots``: with a session per bot they
    need about 0.7 MB per bot, so 10,000 of them would take gigabytes of a
    machine other work shares; their cost per bot is reported instead.
    """
    results: dict[str, dict[str, Any]] = {}
    for size in sizes:
        rows: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
        for run in range(runs if size <= REPEATED_UP_TO else 1):
            shift = run % len(contenders)
            # The idle window is long and steady: once per size is enough; none for one bot.
            idle = idle_seconds if run == 0 and size > 1 else 0.0
            for contender in contenders[shift:] + contenders[:shift]:
                if contender.name != "botyard" and size > baseline_max_bots:
                    continue
                found = await run_once(world, contender, size, idle, settle_seconds)
                rows[contender.name].append(found)
        results[str(size)] = {
            name: {"runs": found, "median": median_row(found)} if found else {"skipped": True}
            for name, found in rows.items()
        }
    return {
        "sizes": sizes,
        "idle_seconds": idle_seconds,
        "settle_seconds": settle_seconds,
        "results": results,
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(key for row in rows for key in row):
        values = [row[key] for row in rows if key in row]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        merged[key] = statistics.median(numbers) if len(numbers) == len(values) else values[0]
    merged["all_polling"] = all(row["all_polling"] for row in rows)
    return merged
