"""Prometheus metrics of the platform and of every bot, served at ``/metrics``.

Labels carry bot names only, never a token. Values the runners already keep
(updates received and handled, errors, in flight, status) and the outbound
counts (sends delayed by flood control, 429s, retried and given-up calls) are read when
Prometheus scrapes, so the update path pays nothing for them; the handling
latency histogram, webhook request outcomes, cleanup results and event-loop
measurements are recorded as they happen. FSM records by state come from a
sample taken every :data:`FSM_SAMPLE_INTERVAL` from the state index, counting
at most :data:`FSM_SAMPLE_LIMIT` records per bot and state, never from a scan
per scrape.

Series by bot or platform-wide (``metrics.per_bot``, decided at each scrape
from the registry in force): per bot, every bot's series carry a ``bot``
label; platform-wide, the same metric names are sums over the bots (bots by
status, updates, errors, latency, FSM records by state, cleanup) and no series
has a ``bot`` label, so ``/metrics`` stays the same size whatever the number of
bots. Outbound Bot API calls are timed and their failures counted by method
only, in both modes.

Everything lives in a registry of its own (:attr:`PlatformMetrics.registry`),
not prometheus-client's global one, so several supervisors (tests, the
sandbox) in one process do not collide. A scrape copies the values on the
event loop in slices and builds and formats the families in a worker thread
(:mod:`botyard.ops.scrape`), so it never holds the bots for long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from operator import attrgetter, itemgetter

from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pymongo import monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.cleanup.sweep import BotSweep
from botyard.database.documents import Document
from botyard.database.roundtrips import RoundTripCounter
from botyard.ops.scrape import (
    Copying,
    Families,
    RegistryInOrder,
    SharedRender,
    SnapshotCollector,
    in_slices,
)
from botyard.ops.series import Counts, Histograms, RunningTotals
from botyard.registry.models import BotConfig
from botyard.runtime.runner import BotStatus
from botyard.runtime.view import PlatformView
from botyard.storage.records import FSMRecords

__all__ = ["FSM_SAMPLE_INTERVAL", "FSM_SAMPLE_LIMIT", "NO_STATE", "PlatformMetrics"]

logger = logging.getLogger("botyard.metrics")

#: The sample costs a few round trips per bot; every five minutes keeps that
#: out of the way of the bots.
FSM_SAMPLE_INTERVAL = 300.0
#: The sample counts a bot's records in one state up to this many: it visits at
#: most this many index keys per bot and state, whatever the number of records.
FSM_SAMPLE_LIMIT = 10_000
NO_STATE = "(none)"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
API_CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def api_error_kind(error: TelegramAPIError) -> str:
    """How a Bot API call failed, for ``botyard_api_call_errors_total{kind}``."""
    if isinstance(error, TelegramRetryAfter):
        return "429"
    if isinstance(error, TelegramServerError):
        return "5xx"
    if isinstance(error, TelegramNetworkError):
        return "network"
    return "other"


class _HeartbeatFailures(monitoring.ServerHeartbeatListener):
    """Counts failed heartbeats: with MongoDB down, no command even starts."""

    def __init__(self) -> None:
        self.failures = 0

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        self.failures += 1


class PlatformMetrics:
    """The platform's metrics; ``platform`` gives the running bots when scraped and the
    bots to sample every ``fsm_sample_interval`` seconds."""

    def __init__(
        self, platform: PlatformView, *, fsm_sample_interval: float = FSM_SAMPLE_INTERVAL
    ) -> None:
        self._platform = platform
        self.fsm_sample_interval = fsm_sample_interval
        self.registry = RegistryInOrder()
        self._render = SharedRender(self.registry, lambda: self.per_bot)
        self.round_trips = RoundTripCounter()
        self.heartbeats = _HeartbeatFailures()
        self.fsm_records: dict[tuple[str, str], int] = {}
        self.fsm_sampled_at: float | None = None
        self.fsm_samples = Counter(
            "botyard_fsm_samples",
            "FSM record samples this process took (with replicas, only the leader samples).",
            registry=self.registry,
        )
        self.handling_seconds = Histograms(
            "botyard_update_handling_seconds",
            "Seconds from the start of an update's handling to its end, retries included.",
            "bot",
            LATENCY_BUCKETS,
        )
        self.webhook_requests = Counts(
            "botyard_webhook_requests",
            "Webhook requests of known bots by outcome: accepted, duplicate (journaled "
            "already), unauthorized (wrong secret token), bad_request, unavailable.",
            ["bot", "outcome"],
        )
        self.cleanup_runs = Counts("botyard_cleanup_runs", "Cleanup sweeps run per bot.", ["bot"])
        self.cleanup_removed = Counts(
            "botyard_cleanup_removed_records", "Stale FSM records the cleanup removed.", ["bot"]
        )
        self.cleanup_failures = Counts(
            "botyard_cleanup_failures", "Cleanup sweeps that stopped with an error.", ["bot"]
        )
        self.loop_blocked = Counts(
            "botyard_event_loop_blocked",
            "Times the event loop was blocked for longer than the watchdog threshold, "
            "by the bot and handler running then (empty when not in a handler).",
            ["bot", "handler"],
        )
        self.api_call_seconds = Histograms(
            "botyard_api_call_seconds",
            "Seconds one attempt of a Bot API call took, by method (getUpdates, a long "
            "poll, left out), failed attempts included.",
            "method",
            API_CALL_BUCKETS,
        )
        self.api_call_errors = Counts(
            "botyard_api_call_errors",
            "Failed attempts of Bot API calls by method and kind: 429, 5xx, network "
            "(a lost connection or a timeout), other (any other error answer).",
            ["method", "kind"],
        )
        self.registry.register(_RunnerCollector(self))
        self.registry.register(_SampledCollector(self))
        self.registry.register(_OutboundCollector(self))
        self.registry.register(_RecordedCollector(self))
        self.webhook_unknown_path = Counter(
            "botyard_webhook_unknown_path_requests",
            "Webhook requests for an unknown bot or path secret (answered 404).",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "botyard_event_loop_lag_seconds",
            "How long the event loop had been busy in its current pass (the callbacks between "
            "two waits in its selector) when the watchdog looked: 0 while it waited.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    @property
    def platform(self) -> PlatformView:
        return self._platform

    @property
    def per_bot(self) -> bool:
        """Whether series carry a ``bot`` label now (``metrics.per_bot`` in the registry)."""
        registry = self._platform.registry
        return registry.metrics.labels_bots(len(registry.enabled_bots))

    @property
    def mongo_listeners(self) -> list[monitoring._EventListener]:
        """For ``AsyncMongoClient(event_listeners=...)``."""
        return [self.round_trips, self.heartbeats]

    async def render(self) -> bytes:
        """The text exposition format, for ``/metrics``; scrapes that ask while a render is
        under way share it."""
        return await self._render.render()

    def observer(self, bot: str) -> Callable[[float], None]:
        """What a runner calls with each update's handling time.

        The bot's series are made on its first update, not at start: an idle
        bot then costs nothing here (making them for 10,000 bots took 3 s).
        """

        def observe(seconds: float) -> None:
            self.handling_seconds.observe(bot, seconds)

        return observe

    def api_call_finished(self, api_method: str, seconds: float) -> None:
        """An attempt of a Bot API call ended, answered or not."""
        if api_method != "getUpdates":
            self.api_call_seconds.observe(api_method, seconds)

    def api_call_failed(self, api_method: str, error: TelegramAPIError) -> None:
        self.api_call_errors.inc(api_method, api_error_kind(error))

    def forget(self, bot: str) -> None:
        """Drop every series of ``bot``, which left the registry (reloads must not pile them up)."""
        for metric in (
            self.handling_seconds,
            self.webhook_requests,
            self.cleanup_runs,
            self.cleanup_removed,
            self.cleanup_failures,
            self.loop_blocked,
        ):
            metric.forget(bot)
        self.fsm_records = {key: n for key, n in self.fsm_records.items() if key[0] != bot}

    def count_webhook(self, bot: str, outcome: str) -> None:
        self.webhook_requests.inc(bot, outcome)

    def record_sweeps(self, sweeps: Iterable[BotSweep]) -> None:
        for sweep in sweeps:
            if sweep.dry_run:
                continue
            self.cleanup_runs.inc(sweep.bot)
            self.cleanup_removed.inc(sweep.bot, amount=sweep.removed)
            if sweep.error is not None:
                self.cleanup_failures.inc(sweep.bot)

    async def sample_fsm_records(
        self, database: AsyncDatabase[Document], bots: Iterable[BotConfig]
    ) -> None:
        """Count every bot's records per state, up to :data:`FSM_SAMPLE_LIMIT` each, from
        the ``(namespace, state, _id)`` index alone."""
        by_namespace = {bot.namespace: bot.name for bot in bots}
        sample: dict[tuple[str, str], int] = {}
        counts = await FSMRecords(database).sample_per_state(by_namespace, FSM_SAMPLE_LIMIT)
        for (namespace, state), count in counts.items():
            label = (by_namespace[namespace], state or NO_STATE)
            sample[label] = sample.get(label, 0) + count
        self.fsm_records = sample
        self.fsm_sampled_at = time.time()

    async def sample_fsm_records_forever(self, database: AsyncDatabase[Document]) -> None:
        """Resample the registry's bots every ``fsm_sample_interval``; a failed sample keeps
        the previous one. With replicas only the leader samples (``PlatformView.leading``)."""
        while True:
            try:
                if self._platform.leading:
                    await self.sample_fsm_records(database, self._platform.registry.bots)
                    self.fsm_samples.inc()
            except PyMongoError as error:
                logger.warning("metrics: FSM records not sampled: %s", type(error).__name__)
            await asyncio.sleep(self.fsm_sample_interval)


#: A count by bot, as copied: the bot, what its counts were read from, the counts.
_CountsRow = tuple[str, object, Sequence[float]]
_Described = tuple[tuple[str, str, str], ...]


def _counters(
    described: _Described, rows: list[_CountsRow], per_bot: bool, totals: RunningTotals
) -> Iterator[CounterMetricFamily]:
    """One family per count in ``described`` (field, name, help): a series per bot, or
    the running total over the bots."""
    if not per_bot:
        sums = totals.totals({bot: (source, counts) for bot, source, counts in rows})
        for (_, name, text), total in zip(described, sums, strict=True):
            yield CounterMetricFamily(name, text, value=total)
        return
    rows = sorted(rows, key=itemgetter(0))
    for index, (_, name, text) in enumerate(described):
        family = CounterMetricFamily(name, text, labels=["bot"])
        for bot, _, counts in rows:
            family.add_metric([bot], counts[index])
        yield family


class _RunnerCollector(SnapshotCollector):
    """Values the runners keep, read at scrape time."""

    COUNTERS: _Described = (
        ("received", "botyard_updates_received", "Updates accepted for handling."),
        ("handled", "botyard_updates_handled", "Updates handled to the end."),
        (
            "errors",
            "botyard_handler_errors",
            "Updates whose handler raised (logged and confirmed).",
        ),
        (
            "retries",
            "botyard_update_retries",
            "Updates handled again, or their FSM writes stored again, after MongoDB "
            "or Telegram was unreachable.",
        ),
        (
            "given_up",
            "botyard_updates_given_up",
            "Updates abandoned after update_retries or handling_timeout "
            "(each logged with its id, then confirmed).",
        ),
        (
            "malformed",
            "botyard_malformed_updates",
            "Updates that do not parse as an aiogram Update (logged by id, skipped, confirmed).",
        ),
        (
            "journaled",
            "botyard_updates_journaled",
            "Polled updates journaled in MongoDB so polling could go on past them while they "
            "waited.",
        ),
    )

    def __init__(self, metrics: PlatformMetrics) -> None:
        super().__init__(lambda: metrics.per_bot)
        self._metrics = metrics
        self._totals = RunningTotals(len(self.COUNTERS))
        self._read = attrgetter(*(field for field, _, _ in self.COUNTERS))

    def snapshot(self, per_bot: bool) -> Copying[Families]:
        rows: list[_CountsRow] = []
        in_flight: list[int] = []
        statuses: list[BotStatus] = []
        for part in in_slices(list(self._metrics.platform.runners.items())):
            for bot, runner in part:
                counters = runner.counters
                rows.append((bot, counters, self._read(counters)))
                in_flight.append(runner.executor.pending)
                statuses.append(runner.status)
            yield
        return partial(self._families, rows, in_flight, statuses, per_bot)

    def _families(
        self,
        rows: list[_CountsRow],
        in_flight_by_bot: list[int],
        statuses: list[BotStatus],
        per_bot: bool,
    ) -> Iterator[Metric]:
        yield from _counters(self.COUNTERS, rows, per_bot, self._totals)
        labels = ["bot"] if per_bot else []
        in_flight = GaugeMetricFamily(
            "botyard_updates_in_flight", "Updates queued or being handled.", labels=labels
        )
        status = GaugeMetricFamily(
            "botyard_bot_status",
            "1 for the bot's current status (per bot); bots in each status (platform-wide).",
            labels=[*labels, "status"],
        )
        if per_bot:
            bots = [bot for bot, _, _ in rows]
            by_bot = sorted(zip(bots, in_flight_by_bot, statuses, strict=True), key=itemgetter(0))
            for bot, pending, now in by_bot:
                in_flight.add_metric([bot], pending)
                for value in BotStatus:
                    status.add_metric([bot, value.value], 1.0 if now == value else 0.0)
        else:
            in_flight.add_metric([], sum(in_flight_by_bot))
            by_status = Counter_(statuses)
            for value in BotStatus:
                status.add_metric([value.value], by_status[value])
        yield in_flight
        yield status


class _OutboundCollector(SnapshotCollector):
    """Each bot's outbound counts (:class:`OutboundStats`), read at scrape time."""

    FAMILIES: _Described = (
        (
            "sends_delayed",
            "botyard_api_sends_delayed",
            "Sends that waited for a slot under the bot's flood limits (or a 429 pause).",
        ),
        (
            "send_delay_seconds",
            "botyard_api_send_delay_seconds",
            "Seconds sends waited under the flood limits, in all.",
        ),
        ("too_many_requests", "botyard_api_too_many_requests", "429 answers received."),
        ("retries", "botyard_api_call_retries", "Bot API calls retried after a transient failure."),
        (
            "given_up",
            "botyard_api_calls_given_up",
            "Bot API calls whose error reached the handler after api_retry_for of retries.",
        ),
    )

    def __init__(self, metrics: PlatformMetrics) -> None:
        super().__init__(lambda: metrics.per_bot)
        self._metrics = metrics
        self._totals = RunningTotals(len(self.FAMILIES))
        self._read = attrgetter(*(field for field, _, _ in self.FAMILIES))

    def snapshot(self, per_bot: bool) -> Copying[Families]:
        rows: list[_CountsRow] = []
        for part in in_slices(list(self._metrics.platform.outbound.items())):
            rows.extend((bot, stats, self._read(stats)) for bot, stats in part)
            yield
        return partial(_counters, self.FAMILIES, rows, per_bot, self._totals)


class _RecordedCollector(SnapshotCollector):
    """The series recorded as things happen (latency, webhooks, cleanup, Bot API calls)."""

    def __init__(self, metrics: PlatformMetrics) -> None:
        super().__init__(lambda: metrics.per_bot)
        self._metrics = metrics

    def snapshot(self, per_bot: bool) -> Copying[Families]:
        metrics = self._metrics
        families: list[Callable[[], Metric]] = []
        for recorded in (
            metrics.handling_seconds,
            metrics.webhook_requests,
            metrics.cleanup_runs,
            metrics.cleanup_removed,
            metrics.cleanup_failures,
            metrics.loop_blocked,
            metrics.api_call_seconds,
            metrics.api_call_errors,
        ):
            families.append((yield from recorded.snapshot(per_bot)))
        return lambda: (family() for family in families)


class _SampledCollector(SnapshotCollector):
    """MongoDB round trips and errors, and the latest FSM sample."""

    def __init__(self, metrics: PlatformMetrics) -> None:
        super().__init__(lambda: metrics.per_bot)
        self._metrics = metrics

    def snapshot(self, per_bot: bool) -> Copying[Families]:
        metrics = self._metrics
        copied = partial(
            self._families,
            dict(metrics.round_trips.commands),
            metrics.round_trips.failures + metrics.heartbeats.failures,
            dict(metrics.fsm_records),
            metrics.fsm_sampled_at,
            metrics.fsm_sample_interval,
            per_bot,
        )
        yield
        return copied

    def _families(
        self,
        commands: dict[str, int],
        errors: int,
        fsm_records: dict[tuple[str, str], int],
        fsm_sampled_at: float | None,
        fsm_sample_interval: float,
        per_bot: bool,
    ) -> Iterator[Metric]:
        round_trips = CounterMetricFamily(
            "botyard_mongodb_round_trips",
            "Commands sent to MongoDB by botyard (driver housekeeping excluded).",
            labels=["command"],
        )
        for command, count in sorted(commands.items()):
            round_trips.add_metric([command], count)
        yield round_trips
        yield CounterMetricFamily(
            "botyard_mongodb_errors",
            "Commands MongoDB failed, plus failed server heartbeats (MongoDB unreachable).",
            value=errors,
        )
        records = GaugeMetricFamily(
            "botyard_fsm_records",
            "FSM records per state (and per bot when per_bot), sampled every "
            f"{fsm_sample_interval:.0f}s, counted up to {FSM_SAMPLE_LIMIT} per bot "
            "and state.",
            labels=["bot", "state"] if per_bot else ["state"],
        )
        if per_bot:
            for (bot, state), count in sorted(fsm_records.items()):
                records.add_metric([bot, state], count)
        else:
            by_state: Counter_[str] = Counter_()
            for (_, state), count in fsm_records.items():
                by_state[state] += count
            for state, count in sorted(by_state.items()):
                records.add_metric([state], count)
        yield records
        if fsm_sampled_at is not None:
            yield GaugeMetricFamily(
                "botyard_fsm_records_sampled_at_seconds",
                "Unix time of the FSM records sample.",
                value=fsm_sampled_at,
            )
