"""The event-loop watchdog never wakes the loop, wakes its own thread only when the loop
woke, and still names the first block after an idle spell, or in a busy loop."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest

from botyard.ops.metrics import PlatformMetrics
from botyard.ops.watchdog import LoopWatchdog
from botyard.runtime.view import PlatformView

#: A look every 100 ms observes the lag of a busy loop this many times a second.
LOOKS_PER_SECOND = 10


def lag_observations(metrics: PlatformMetrics) -> float:
    [family] = metrics.loop_lag.collect()
    [count] = [sample.value for sample in family.samples if sample.name.endswith("_count")]
    return count


async def idle(seconds: float) -> None:
    """Leave the loop asleep in its selector: no timer of this test's own wakes it."""
    await asyncio.to_thread(time.sleep, seconds)


def read_later(seconds: float, read: Callable[[], bool]) -> list[bool]:
    """``read()`` from a thread of its own after ``seconds``, without waking the loop."""
    found: list[bool] = []

    def later() -> None:
        time.sleep(seconds)
        found.append(read())

    threading.Thread(target=later).start()
    return found


def thread_wakes(watchdog: LoopWatchdog) -> int:
    """How many times the watchdog's thread went to sleep and woke up so far."""
    assert watchdog._thread is not None
    assert watchdog._thread.native_id is not None
    status = Path(f"/proc/self/task/{watchdog._thread.native_id}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")]
    return int(line.split()[1])


def block_after_idle() -> None:
    time.sleep(0.4)  # a synchronous call, right after an idle spell


def block_while_busy() -> None:
    time.sleep(0.3)


async def busy(seconds: float) -> None:
    """Work every 20 ms, as many bots' polls make."""
    for _ in range(round(seconds / 0.02)):
        await asyncio.sleep(0.02)


@pytest.fixture
async def watchdog() -> AsyncIterator[LoopWatchdog]:
    """A watchdog on the test's loop, with metrics of its own."""
    started = LoopWatchdog(asyncio.get_running_loop(), PlatformMetrics(cast(PlatformView, None)))
    started.start()
    yield started
    started.stop()


async def test_an_idle_loop_stays_asleep_and_the_next_block_is_still_named(
    watchdog: LoopWatchdog, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    metrics = watchdog._metrics
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)  # the thread has looked once since start
    looks, passes = lag_observations(metrics), watchdog.passes
    dormant = read_later(0.5, lambda: watchdog.dormant)
    await idle(1.0)  # the loop sleeps in its selector with no timer due
    assert len(loop._scheduled) == scheduled, "the watchdog schedules nothing on the loop"  # type: ignore[attr-defined]
    # The one wake is the thread's answer coming back; no look of the watchdog's own.
    assert watchdog.passes - passes <= 2
    assert lag_observations(metrics) - looks <= 2
    assert dormant == [True]

    with caplog.at_level(logging.WARNING, logger="botyard.watchdog"):
        # Nothing but this timer wakes the loop, and its callback blocks at once.
        dormant = read_later(0.3, lambda: watchdog.dormant)
        loop.call_later(0.5, block_after_idle)
        async with asyncio.timeout(30):
            while not caplog.records:
                await idle(1.0)
    assert dormant == [True], "asleep before the block"
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("event loop blocked for ")
    assert "in block_after_idle; every bot in this process waited" in line
    blocked = metrics.loop_blocked.family(per_bot=True).samples
    assert [(sample.labels, sample.value) for sample in blocked] == [
        ({"bot": "", "handler": ""}, 1.0)
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the thread's /proc status")
async def test_a_loop_woken_only_by_timers_wakes_the_thread_once_per_timer(
    watchdog: LoopWatchdog,
) -> None:
    """PyMongo's background tasks wake an idle process like this, every 0.5 s."""
    loop = asyncio.get_running_loop()
    ticks = 6
    ticked = loop.create_future()

    def tick(left: int) -> None:
        if left:
            loop.call_later(0.25, tick, left - 1)
        else:
            ticked.set_result(None)

    await asyncio.sleep(0.3)
    wakes, passes = thread_wakes(watchdog), watchdog.passes
    loop.call_later(0.25, tick, ticks - 1)
    await ticked
    # Each tick is one pass of the loop (none of the watchdog's), and the thread looks
    # once after it (a beat restarted by each wake made three passes and three looks).
    assert watchdog.passes - passes <= ticks + 1
    assert thread_wakes(watchdog) - wakes <= 2 * ticks


async def test_a_busy_loop_is_watched_and_a_block_in_it_named(
    watchdog: LoopWatchdog, caplog: pytest.LogCaptureFixture
) -> None:
    before = lag_observations(watchdog._metrics)
    await busy(1.0)
    assert lag_observations(watchdog._metrics) - before >= LOOKS_PER_SECOND / 2

    with caplog.at_level(logging.WARNING, logger="botyard.watchdog"):
        asyncio.get_running_loop().call_later(0.1, block_while_busy)
        await busy(1.0)
        async with asyncio.timeout(30):
            while not caplog.records:
                await idle(0.2)
    [line] = [record.getMessage() for record in caplog.records]
    assert "in block_while_busy; every bot in this process waited" in line


async def test_a_loop_without_a_selector_is_not_watched_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoSelectorLoop:
        pass

    watchdog = LoopWatchdog(
        cast(asyncio.AbstractEventLoop, NoSelectorLoop()),
        PlatformMetrics(cast(PlatformView, None)),
    )
    with caplog.at_level(logging.WARNING, logger="botyard.watchdog"):
        watchdog.start()
    watchdog.stop()
    assert watchdog._thread is None
    assert [record.getMessage() for record in caplog.records] == [
        "event-loop watchdog off: NoSelectorLoop has no selector to watch; a blocked loop "
        "will not be reported"
    ]
