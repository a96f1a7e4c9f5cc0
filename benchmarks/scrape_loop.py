"""What a ``/metrics`` render costs the event loop, over a platform of many runners.

    python -m benchmarks.scrape_loop                   # 1,000 and 10,000 runners
    python -m benchmarks.scrape_loop --bots 10000 --renders 5

No bots run: :class:`~botyard.ops.metrics.PlatformMetrics` renders over stand-in
runners (counters, status, nothing queued), half of them with a latency
histogram and a webhook count, with ``metrics.per_bot`` on and off. The heap is
frozen out of the cycle collector first, as ``botyard run`` does once its bots
started. For each render: the CPU seconds of the loop's thread (the copy; the
worker thread's building and formatting left out), the longest the loop went
without running another task (its thread's CPU between two turns of a task
that only yields), and the CPU seconds of the whole process; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import cast

from botyard.ops.metrics import PlatformMetrics
from botyard.runtime.outbound import OutboundStats
from botyard.runtime.runner import BotCounters, BotStatus
from botyard.runtime.view import PlatformView


@dataclass
class _Executor:
    pending: int = 0


@dataclass
class _Runner:
    counters: BotCounters
    executor: _Executor = field(default_factory=_Executor)
    status: BotStatus = BotStatus.RUNNING


@dataclass
class _MetricsConfig:
    per_bot: bool

    def labels_bots(self, enabled_bots: int) -> bool:
        return self.per_bot


@dataclass
class _Registry:
    metrics: _MetricsConfig
    enabled_bots: tuple[()] = ()


@dataclass
class _Platform:
    registry: _Registry
    runners: dict[str, _Runner]
    outbound: dict[str, OutboundStats]
    leading: bool = True


def platform_metrics(bots: int, per_bot: bool) -> PlatformMetrics:
    names = [f"bot{index:05d}" for index in range(bots)]
    platform = _Platform(
        _Registry(_MetricsConfig(per_bot)),
        {name: _Runner(BotCounters(received=1, handled=1)) for name in names},
        {name: OutboundStats() for name in names},
    )
    metrics = PlatformMetrics(cast(PlatformView, platform))
    for index, name in enumerate(names[: bots // 2]):
        metrics.handling_seconds.observe(name, index % 50 / 100)
        metrics.webhook_requests.inc(name, "accepted")
    return metrics


async def _longest_turn(metrics: PlatformMetrics) -> tuple[float, float]:
    """The longest the loop's thread worked between two turns of a yielding task during one
    render, and the render's process CPU seconds."""
    turns = [0.0]
    rendering = True

    async def yielding() -> None:
        while rendering:
            started = time.thread_time()
            await asyncio.sleep(0)
            turns.append(time.thread_time() - started)

    task = asyncio.create_task(yielding())
    await asyncio.sleep(0)
    started = time.process_time()
    await metrics.render()
    cpu = time.process_time() - started
    rendering = False
    await task
    return max(turns), cpu


async def measure(bots: int, per_bot: bool, renders: int) -> dict[str, float | int | bool]:
    metrics = platform_metrics(bots, per_bot)
    gc.collect()
    gc.freeze()
    loop_cpu, longest, process_cpu = [], [], []
    size = 0
    for _ in range(renders):
        started = time.thread_time()
        size = len(await metrics.render())
        loop_cpu.append(time.thread_time() - started)
        turn, cpu = await _longest_turn(metrics)
        longest.append(turn)
        process_cpu.append(cpu)
    gc.unfreeze()
    return {
        "bots": bots,
        "per_bot": per_bot,
        "bytes": size,
        "loop_cpu_seconds": statistics.median(loop_cpu),
        "longest_loop_turn_seconds": statistics.median(longest),
        "process_cpu_seconds": statistics.median(process_cpu),
    }


async def run(sizes: list[int], renders: int) -> None:
    print("| bots | per_bot | bytes | loop CPU s | longest loop turn s | process CPU s |")
    print("|---|---|---|---|---|---|")
    for bots in sizes:
        for per_bot in (True, False):
            result = await measure(bots, per_bot, renders)
            print(
                f"| {bots:,} | {'on' if per_bot else 'off'} | {result['bytes']:,} "
                f"| {result['loop_cpu_seconds']:.4f} | {result['longest_loop_turn_seconds']:.4f} "
                f"| {result['process_cpu_seconds']:.3f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bots",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[1000, 10000],
        help="comma-separated numbers of runners (default 1000,10000)",
    )
    parser.add_argument("--renders", type=int, default=3, help="renders per size and mode")
    args = parser.parse_args()
    asyncio.run(run(args.bots, args.renders))


if __name__ == "__main__":
    main()
