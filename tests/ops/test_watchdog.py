"""The event-loop watchdog costs an idle loop nothing, and still catches the first block after."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from botyard.ops.metrics import PlatformMetrics
from botyard.ops.watchdog import LoopWatchdog
from botyard.runtime.view import PlatformView

#: A beat every 100 ms would observe the lag this many times a second.
BEATS_PER_SECOND = 10


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


def block_after_idle() -> None:
    time.sleep(0.4)  # a synchronous call, right after an idle spell


@pytest.fixture
async def watchdog() -> AsyncIterator[LoopWatchdog]:
    """A watchdog on the test's loop, with metrics of its own."""
    started = LoopWatchdog(asyncio.get_running_loop(), PlatformMetrics(cast(PlatformView, None)))
    started.start()
    yield started
    started.stop()


async def test_an_idle_loop_stops_beating_and_the_next_block_is_still_named(
    watchdog: LoopWatchdog, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    metrics = watchdog._metrics
    before = lag_observations(metrics)
    dormant = read_later(0.5, lambda: watchdog.dormant)
    await idle(1.0)  # the loop sleeps; the beat after its last wake finds nothing to do
    beats = lag_observations(metrics) - before
    assert beats <= 2, f"{beats} beats in an idle second (a running beat makes 10)"
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


async def test_a_busy_loop_keeps_beating(watchdog: LoopWatchdog) -> None:
    loop = asyncio.get_running_loop()
    before = lag_observations(watchdog._metrics)
    deadline = loop.time() + 1.0
    while loop.time() < deadline:  # work every 20 ms, as many bots' polls make
        await asyncio.sleep(0.02)
        assert not watchdog.dormant
    assert lag_observations(watchdog._metrics) - before >= BEATS_PER_SECOND / 2
