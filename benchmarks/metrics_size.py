"""How big ``/metrics`` is, and what a scrape costs, with many idle bots, per bot and platform-wide.

    python -m benchmarks.metrics_size                      # 1,000 and 10,000 idle bots
    python -m benchmarks.metrics_size --bots 1000 --scrapes 3 --json out.json
    python -m benchmarks.metrics_size --bots 10000 --per-bot off

For each size, ``botyard run`` starts with that many idle echo bots, an ops
server (``ops.listen``) and ``metrics.per_bot: true``, then again with
``false``. Once every bot polls, ``/metrics`` is fetched ``--scrapes`` times:
its size in bytes, its series (sample lines), the series with a ``bot`` label,
and per scrape the median wall-clock seconds (from this process, localhost) and
the median CPU seconds of the botyard process (steadier on a shared machine).
``--active N`` first sends one message to each of the first N bots, so they
have handling-latency series too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.contenders import BOTYARD
from benchmarks.harness import ContenderProcess, World, open_world

ROUTER = "bots.echo:router"
START_TIMEOUT = 600.0
USER = 777


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _activate(world: World, tokens: list[str]) -> None:
    """One message to each bot, answered, so each has handled an update."""
    limit = asyncio.Semaphore(100)

    async def one(token: str) -> None:
        async with limit:
            world.emulator.send_message(token, USER, "ping")
            await world.emulator.wait_for_reply(token, USER, timeout=START_TIMEOUT)

    await asyncio.gather(*(one(token) for token in tokens))


async def _scrape(
    process: ContenderProcess, session: aiohttp.ClientSession, url: str
) -> tuple[str, float, float]:
    cpu = process.cpu_seconds()
    started = time.perf_counter()
    async with session.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status}")
        text = await response.text()
    return text, time.perf_counter() - started, process.cpu_seconds() - cpu


async def run_once(
    world: World, bots: int, per_bot: bool, scrapes: int, active: int
) -> dict[str, Any]:
    """One ``botyard run`` with ``bots`` bots and ``metrics.per_bot`` set to ``per_bot``."""
    world.add_bots(bots)
    tokens = world.tokens[:bots]
    port = _free_port()
    contender = replace(
        BOTYARD,
        sections=(
            f"ops:\n  listen: 127.0.0.1:{port}\n"
            f"metrics:\n  per_bot: {'true' if per_bot else 'false'}\n"
        ),
    )
    database = f"bench_metrics_{bots}_{'per_bot' if per_bot else 'platform'}"
    before = world.polls_made(tokens)
    started = time.perf_counter()
    process = await world.launch(contender, bots, ROUTER, database)
    try:
        if not await world.wait_all_polling(process, tokens, before, START_TIMEOUT):
            raise RuntimeError(f"{bots} bots not all polling after {START_TIMEOUT:.0f}s")
        start_seconds = time.perf_counter() - started
        await _activate(world, tokens[:active])
        url = f"http://127.0.0.1:{port}/metrics"
        seconds, cpu = [], []
        async with aiohttp.ClientSession() as session:
            for _ in range(scrapes):
                text, took, used = await _scrape(process, session, url)
                seconds.append(took)
                cpu.append(used)
        samples = [line for line in text.splitlines() if line and not line.startswith("#")]
        return {
            "bots": bots,
            "active_bots": active,
            "per_bot": per_bot,
            "seconds_to_all_polling": start_seconds,
            "bytes": len(text.encode()),
            "series": len(samples),
            "series_with_bot_label": sum('bot="' in line for line in samples),
            "scrape_seconds_median": statistics.median(seconds),
            "scrape_cpu_seconds_median": statistics.median(cpu),
            "rss_mb": process.rss_bytes() / 2**20,
        }
    finally:
        await process.stop()
        await world.drop_database(database)


async def measure(
    uri: str | None, sizes: list[int], modes: list[bool], scrapes: int, active: int
) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="botyard-metrics-") as workdir:
        async with open_world(Path(workdir), uri) as world:
            for bots in sizes:
                for per_bot in modes:
                    try:
                        result = await run_once(world, bots, per_bot, scrapes, active)
                    except RuntimeError as error:  # reported as not reached, like density
                        result = {"bots": bots, "per_bot": per_bot, "error": str(error)}
                    print(table([result]).splitlines()[-1], flush=True)
                    results.append(result)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| bots | active | per_bot | /metrics bytes | series | with bot label "
        "| scrape s (median) | scrape CPU s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if "error" in result:
            mode = "on" if result["per_bot"] else "off"
            lines.append(f"| {result['bots']:,} | | {mode} | not reached: {result['error']} |")
            continue
        lines.append(
            f"| {result['bots']:,} | {result['active_bots']:,} "
            f"| {'on' if result['per_bot'] else 'off'} | {result['bytes']:,} "
            f"| {result['series']:,} | {result['series_with_bot_label']:,} "
            f"| {result['scrape_seconds_median']:.3f} | {result['scrape_cpu_seconds_median']:.3f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    uri = args.uri or os.environ.get("MONGODB_URI")
    results = asyncio.run(measure(uri, args.bots, args.per_bot, args.scrapes, args.active))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _modes(text: str) -> list[bool]:
    modes = {"on": True, "off": False}
    unknown = [mode for mode in text.split(",") if mode not in modes]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: expected on and/or off")
    return [modes[mode] for mode in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bots",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[1000, 10000],
        help="comma-separated bot counts (default 1000,10000)",
    )
    parser.add_argument(
        "--per-bot",
        type=_modes,
        default=[True, False],
        help="comma-separated metrics.per_bot settings to run, on and/or off (default on,off)",
    )
    parser.add_argument("--scrapes", type=int, default=5, help="scrapes per run (default 5)")
    parser.add_argument("--active", type=int, default=0, help="bots sent one message first")
    parser.add_argument("--uri", help="MongoDB URI (default: MONGODB_URI, else SecantusDB)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.scrapes < 1 or args.active < 0 or args.active > min(args.bots):
        parser.error("--scrapes must be at least 1, --active between 0 and the smallest size")
    return args


if __name__ == "__main__":
    main(parse_args())
