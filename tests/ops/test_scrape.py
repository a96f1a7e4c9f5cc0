"""A /metrics render over thousands of bots: the event loop keeps running while it works."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from botyard.ops.metrics import PlatformMetrics
from botyard.ops.scrape import SLICE, Copying, Families, SnapshotCollector
from botyard.runtime.outbound import OutboundStats
from botyard.runtime.runner import BotCounters, BotStatus
from botyard.runtime.view import PlatformView

BOTS = 5 * SLICE


class Ticker:
    """Counts the turns the event loop gives it; each is a moment the loop was free."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)


class _Executor:
    pending = 1


class _Runner:
    """What the metrics read of a runner, noting which thread read it and when."""

    def __init__(self, handled: int, ticker: Ticker, reads: list[tuple[int, int]]) -> None:
        self._counters = BotCounters(received=handled, handled=handled)
        self._ticker = ticker
        self._reads = reads
        self.executor = _Executor()
        self.status = BotStatus.RUNNING
        self.fail_next_read = False

    @property
    def counters(self) -> BotCounters:
        self._reads.append((threading.get_ident(), self._ticker.ticks))
        if self.fail_next_read:
            self.fail_next_read = False
            raise RuntimeError("counters unreadable")
        return self._counters


class _Metrics:
    def __init__(self, per_bot: bool) -> None:
        self.per_bot = per_bot

    def labels_bots(self, enabled_bots: int) -> bool:
        return self.per_bot


class _Registry:
    def __init__(self, per_bot: bool) -> None:
        self.metrics = _Metrics(per_bot)
        self.enabled_bots = ()


class _Platform:
    """A platform of ``bots`` idle runners, bot ``i`` having handled ``i`` updates."""

    def __init__(self, bots: int, per_bot: bool, ticker: Ticker) -> None:
        self.reads: list[tuple[int, int]] = []
        self.registry = _Registry(per_bot)
        self.runners = {f"bot{i:05d}": _Runner(i, ticker, self.reads) for i in range(bots)}
        self.outbound = {name: OutboundStats(retries=1) for name in self.runners}
        self.leading = True


class _Watching(SnapshotCollector):
    """Notes which thread builds its families, and whether the loop runs meanwhile."""

    def __init__(self, ticker: Ticker) -> None:
        super().__init__(lambda: True)
        self._ticker = ticker
        self.built_in: int | None = None
        self.loop_ran_meanwhile = False

    def snapshot(self, per_bot: bool) -> Copying[Families]:
        yield
        return self._families

    def _families(self) -> Iterable[Metric]:
        self.built_in = threading.get_ident()
        ticks = self._ticker.ticks
        deadline = time.monotonic() + 30  # the loop, if building here, never ticks
        while self._ticker.ticks == ticks and time.monotonic() < deadline:
            time.sleep(0.001)
        self.loop_ran_meanwhile = self._ticker.ticks > ticks
        return []


@pytest.fixture
async def ticker() -> AsyncIterator[Ticker]:
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    yield ticker
    task.cancel()


def _metrics(platform: _Platform) -> PlatformMetrics:
    metrics = PlatformMetrics(cast(PlatformView, platform))
    for index, bot in enumerate(platform.runners):
        metrics.handling_seconds.observe(bot, index / 1000)
        metrics.webhook_requests.inc(bot, "accepted")
    return metrics


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


@pytest.mark.parametrize("per_bot", [True, False])
async def test_a_render_copies_on_the_loop_in_slices_and_formats_in_a_thread(
    ticker: Ticker, per_bot: bool
) -> None:
    platform = _Platform(BOTS, per_bot, ticker)
    metrics = _metrics(platform)
    watching = _Watching(ticker)
    metrics.registry.register(watching)
    loop_thread = threading.get_ident()

    text = (await metrics.render()).decode()

    assert {thread for thread, _ in platform.reads} == {loop_thread}, "live values: loop only"
    assert len(platform.reads) == BOTS
    ticks_while_copying = {tick for _, tick in platform.reads}
    assert len(ticks_while_copying) >= BOTS // SLICE, "the loop ran between slices"
    assert watching.built_in not in {None, loop_thread}, "families built in a worker thread"
    assert watching.loop_ran_meanwhile
    if per_bot:
        assert _value(text, "botyard_updates_handled_total", bot="bot00007") == 7
        assert _value(text, "botyard_update_handling_seconds_count", bot="bot00007") == 1
    else:
        assert _value(text, "botyard_updates_handled_total") == sum(range(BOTS))
        assert _value(text, "botyard_updates_in_flight") == BOTS
        assert _value(text, "botyard_api_call_retries_total") == BOTS
        assert _value(text, "botyard_update_handling_seconds_count") == BOTS


async def test_simultaneous_scrapes_share_one_render(ticker: Ticker) -> None:
    platform = _Platform(BOTS, True, ticker)
    metrics = _metrics(platform)

    first, second, third = await asyncio.gather(*(metrics.render() for _ in range(3)))

    assert len(platform.reads) == BOTS, "the runners were read once"
    assert first == second == third
    await metrics.render()
    assert len(platform.reads) == 2 * BOTS, "a later scrape renders again"


async def test_a_render_shows_what_a_direct_read_of_the_registry_shows(ticker: Ticker) -> None:
    for per_bot in (True, False):
        metrics = _metrics(_Platform(SLICE + 1, per_bot, ticker))
        metrics.fsm_records = {("bot00001", "Form:name"): 3}
        metrics.loop_lag.observe(0.002)
        metrics.webhook_unknown_path.inc()
        assert await metrics.render() == generate_latest(metrics.registry)


async def test_a_failed_render_fails_the_scrapes_waiting_and_the_next_one_starts_afresh(
    ticker: Ticker,
) -> None:
    platform = _Platform(SLICE * 2, False, ticker)
    metrics = _metrics(platform)
    platform.runners[f"bot{SLICE + 3:05d}"].fail_next_read = True

    results = await asyncio.gather(metrics.render(), metrics.render(), return_exceptions=True)

    assert [type(result) for result in results] == [RuntimeError, RuntimeError]
    text = (await metrics.render()).decode()
    assert _value(text, "botyard_updates_handled_total") == sum(range(SLICE * 2))
