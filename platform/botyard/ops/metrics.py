"""Prometheus metrics of the platform and of every bot, served at ``/metrics``.

Labels carry bot names only, never a token. Values the runners already keep
(updates received and handled, errors, in flight, status) and the outbound
counts (sends delayed by flood control, 429s, retried and given-up calls) are read when
Prometheus scrapes, so the update path pays nothing for them; the handling
latency histogram, webhook request outcomes, cleanup results and event-loop
measurements are recorded as they happen. FSM records by state come from a
sample taken every :data:`FSM_SAMPLE_INTERVAL` (one aggregation over the key
index for all bots), never from a scan per scrape.

Everything lives in a registry of its own (:attr:`PlatformMetrics.registry`),
not prometheus-client's global one, so several supervisors (tests, the
sandbox) in one process do not collide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo import monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.cleanup.sweep import BotSweep
from botyard.database.documents import Document
from botyard.database.roundtrips import RoundTripCounter
from botyard.registry.models import BotConfig
from botyard.runtime.outbound import OutboundStats
from botyard.runtime.runner import BotStatus
from botyard.runtime.view import PlatformView
from botyard.storage.records import FSMRecords

__all__ = ["FSM_SAMPLE_INTERVAL", "NO_STATE", "PlatformMetrics"]

logger = logging.getLogger("botyard.metrics")

FSM_SAMPLE_INTERVAL = 60.0
NO_STATE = "(none)"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        self.registry.register(_RunnerCollector(platform))
        self.registry.register(_SampledCollector(self))
        self.registry.register(_OutboundCollector(platform))
        self.fsm_samples = Counter(
            "botyard_fsm_samples",
            "FSM record samples this process took (with replicas, only the leader samples).",
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "botyard_update_handling_seconds",
            "Seconds from the start of an update's handling to its end, retries included.",
            ["bot"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_requests = Counter(
            "botyard_webhook_requests",
            "Webhook requests of known bots by outcome: accepted, duplicate (journaled "
            "already), unauthorized (wrong secret token), bad_request, unavailable.",
            ["bot", "outcome"],
            registry=self.registry,
        )
        self.webhook_unknown_path = Counter(
            "botyard_webhook_unknown_path_requests",
            "Webhook requests for an unknown bot or path secret (answered 404).",
            registry=self.registry,
        )
        self.cleanup_runs = Counter(
            "botyard_cleanup_runs", "Cleanup sweeps run per bot.", ["bot"], registry=self.registry
        )
        self.cleanup_removed = Counter(
            "botyard_cleanup_removed_records",
            "Stale FSM records the cleanup removed.",
            ["bot"],
            registry=self.registry,
        )
        self.cleanup_failures = Counter(
            "botyard_cleanup_failures",
            "Cleanup sweeps that stopped with an error.",
            ["bot"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "botyard_event_loop_lag_seconds",
            "How late the event loop ran a callback scheduled to run at once.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_blocked = Counter(
            "botyard_event_loop_blocked",
            "Times the event loop was blocked for longer than the watchdog threshold, "
            "by the bot and handler running then (empty when not in a handler).",
            ["bot", "handler"],
            registry=self.registry,
        )

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
            self.handling_seconds.labels(bot=bot).observe(seconds)

        return observe

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
            metric.remove_by_labels({"bot": bot})
        self.fsm_records = {key: n for key, n in self.fsm_records.items() if key[0] != bot}

    def count_webhook(self, bot: str, outcome: str) -> None:
        self.webhook_requests.labels(bot=bot, outcome=outcome).inc()

    def record_sweeps(self, sweeps: Iterable[BotSweep]) -> None:
        for sweep in sweeps:
            if sweep.dry_run:
                continue
            self.cleanup_runs.labels(bot=sweep.bot).inc()
            self.cleanup_removed.labels(bot=sweep.bot).inc(sweep.removed)
            if sweep.error is not None:
                self.cleanup_failures.labels(bot=sweep.bot).inc()

    async def sample_fsm_records(
        self, database: AsyncDatabase[Document], bots: Iterable[BotConfig]
    ) -> None:
        """Count every bot's records per state, in one aggregation through the key index."""
        by_namespace = {bot.namespace: bot.name for bot in bots}
        sample: dict[tuple[str, str], int] = {}
        for group in await FSMRecords(database).count_by_state(by_namespace):
            label = (by_namespace[group.namespace], group.state or NO_STATE)
            sample[label] = sample.get(label, 0) + group.records
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


class _RunnerCollector(Collector):
    """Per-bot values the runners keep, read at scrape time."""

    def __init__(self, platform: PlatformView) -> None:
        self._platform = platform

    def collect(self) -> Iterator[Metric]:
        families = {
            "received": CounterMetricFamily(
                "botyard_updates_received", "Updates accepted for handling.", labels=["bot"]
            ),
            "handled": CounterMetricFamily(
                "botyard_updates_handled", "Updates handled to the end.", labels=["bot"]
            ),
            "errors": CounterMetricFamily(
                "botyard_handler_errors",
                "Updates whose handler raised (logged and confirmed).",
                labels=["bot"],
            ),
            "retries": CounterMetricFamily(
                "botyard_update_retries",
                "Updates handled again, or their FSM writes stored again, after MongoDB "
                "or Telegram was unreachable.",
                labels=["bot"],
            ),
            "given_up": CounterMetricFamily(
                "botyard_updates_given_up",
                "Updates abandoned after update_retries or handling_timeout "
                "(each logged with its id, then confirmed).",
                labels=["bot"],
            ),
            "malformed": CounterMetricFamily(
                "botyard_malformed_updates",
                "Updates that do not parse as an aiogram Update (logged by id, skipped, "
                "confirmed).",
                labels=["bot"],
            ),
            "journaled": CounterMetricFamily(
                "botyard_updates_journaled",
                "Polled updates journaled in MongoDB so polling could go on past them "
                "while they waited.",
                labels=["bot"],
            ),
        }
        in_flight = GaugeMetricFamily(
            "botyard_updates_in_flight", "Updates queued or being handled.", labels=["bot"]
        )
        status = GaugeMetricFamily(
            "botyard_bot_status", "1 for the bot's current status.", labels=["bot", "status"]
        )
        for name, runner in sorted(self._platform.runners.items()):
            counters = runner.counters
            for field, family in families.items():
                family.add_metric([name], getattr(counters, field))
            in_flight.add_metric([name], runner.executor.pending)
            for value in BotStatus:
                status.add_metric([name, value.value], 1.0 if runner.status == value else 0.0)
        yield from families.values()
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

    def __init__(self, platform: PlatformView) -> None:
        self._platform = platform

    def collect(self) -> Iterator[Metric]:
        families = [
            (field, CounterMetricFamily(name, text, labels=["bot"]))
            for field, name, text in self.FAMILIES
        ]
        outbound: Mapping[str, OutboundStats] = self._platform.outbound
        for bot, stats in sorted(outbound.items()):
            for field, family in families:
                family.add_metric([bot], getattr(stats, field))
        for _, family in families:
            yield family

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
        records = GaugeMetricFamily(
            "botyard_fsm_records",
            f"FSM records per bot and state, sampled every {metrics.fsm_sample_interval:.0f}s.",
            labels=["bot", "state"],
        )
        for (bot, state), count in sorted(metrics.fsm_records.items()):
            records.add_metric([bot, state], count)
        yield records
        if metrics.fsm_sampled_at is not None:
            yield GaugeMetricFamily(
                "botyard_fsm_records_sampled_at_seconds",
                "Unix time of the FSM records sample.",
                value=metrics.fsm_sampled_at,
            )

    def describe(self) -> Iterator[Metric]:
        return iter(())
