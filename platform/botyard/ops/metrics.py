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
sandbox) in one process do not collide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator, Mapping

from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo import monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.cleanup.sweep import BotSweep
from botyard.database.documents import Document
from botyard.database.roundtrips import RoundTripCounter
from botyard.ops.series import Counts, Histograms, RunningTotal
from botyard.registry.models import BotConfig
from botyard.runtime.outbound import OutboundStats
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
        self.registry = CollectorRegistry(auto_describe=True)
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
            "How late the event loop ran a callback scheduled to run at once.",
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

    def render(self) -> bytes:
        """The text exposition format, for ``/metrics``."""
        return generate_latest(self.registry)

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


def _counter(
    name: str,
    documentation: str,
    by_bot: Mapping[str, float],
    sources: Mapping[str, object],
    per_bot: bool,
    total: RunningTotal,
) -> CounterMetricFamily:
    """A count read by bot (from its entry in ``sources``): one series per bot, or their
    running total."""
    if not per_bot:
        return CounterMetricFamily(name, documentation, value=total.total(by_bot, sources))
    family = CounterMetricFamily(name, documentation, labels=["bot"])
    for bot, count in sorted(by_bot.items()):
        family.add_metric([bot], count)
    return family


class _RunnerCollector(Collector):
    """Values the runners keep, read at scrape time."""

    COUNTERS = (
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
        self._metrics = metrics
        self._totals = {field: RunningTotal() for field, _, _ in self.COUNTERS}

    def collect(self) -> Iterator[Metric]:
        per_bot = self._metrics.per_bot
        runners = self._metrics.platform.runners
        sources = {bot: runner.counters for bot, runner in runners.items()}
        for field, name, text in self.COUNTERS:
            by_bot = {bot: getattr(counters, field) for bot, counters in sources.items()}
            yield _counter(name, text, by_bot, sources, per_bot, self._totals[field])
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
            for bot, runner in sorted(runners.items()):
                in_flight.add_metric([bot], runner.executor.pending)
                for value in BotStatus:
                    status.add_metric([bot, value.value], 1.0 if runner.status == value else 0.0)
        else:
            in_flight.add_metric([], sum(runner.executor.pending for runner in runners.values()))
            statuses = Counter_(runner.status for runner in runners.values())
            for value in BotStatus:
                status.add_metric([value.value], statuses[value])
        yield in_flight
        yield status

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _OutboundCollector(Collector):
    """Each bot's outbound counts (:class:`OutboundStats`), read at scrape time."""

    FAMILIES = (
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
        self._metrics = metrics
        self._totals = {field: RunningTotal() for field, _, _ in self.FAMILIES}

    def collect(self) -> Iterator[Metric]:
        per_bot = self._metrics.per_bot
        outbound: Mapping[str, OutboundStats] = self._metrics.platform.outbound
        for field, name, text in self.FAMILIES:
            by_bot = {bot: getattr(stats, field) for bot, stats in outbound.items()}
            yield _counter(name, text, by_bot, outbound, per_bot, self._totals[field])

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _RecordedCollector(Collector):
    """The series recorded as things happen (latency, webhooks, cleanup, Bot API calls)."""

    def __init__(self, metrics: PlatformMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        per_bot = metrics.per_bot
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
            yield recorded.family(per_bot)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _SampledCollector(Collector):
    """MongoDB round trips and errors, and the latest FSM sample."""

    def __init__(self, metrics: PlatformMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        round_trips = CounterMetricFamily(
            "botyard_mongodb_round_trips",
            "Commands sent to MongoDB by botyard (driver housekeeping excluded).",
            labels=["command"],
        )
        for command, count in sorted(metrics.round_trips.commands.items()):
            round_trips.add_metric([command], count)
        yield round_trips
        yield CounterMetricFamily(
            "botyard_mongodb_errors",
            "Commands MongoDB failed, plus failed server heartbeats (MongoDB unreachable).",
            value=metrics.round_trips.failures + metrics.heartbeats.failures,
        )
        per_bot = metrics.per_bot
        records = GaugeMetricFamily(
            "botyard_fsm_records",
            "FSM records per state (and per bot when per_bot), sampled every "
            f"{metrics.fsm_sample_interval:.0f}s, counted up to {FSM_SAMPLE_LIMIT} per bot "
            "and state.",
            labels=["bot", "state"] if per_bot else ["state"],
        )
        if per_bot:
            for (bot, state), count in sorted(metrics.fsm_records.items()):
                records.add_metric([bot, state], count)
        else:
            by_state: Counter_[str] = Counter_()
            for (_, state), count in metrics.fsm_records.items():
                by_state[state] += count
            for state, count in sorted(by_state.items()):
                records.add_metric([state], count)
        yield records
        if metrics.fsm_sampled_at is not None:
            yield GaugeMetricFamily(
                "botyard_fsm_records_sampled_at_seconds",
                "Unix time of the FSM records sample.",
                value=metrics.fsm_sampled_at,
            )

    def describe(self) -> Iterator[Metric]:
        return iter(())
