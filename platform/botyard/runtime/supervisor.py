"""The supervisor: starts every bot of the registry, reloads it, and stops it.

It only supervises. Each bot's behaviour lives in its :class:`BotRunner`; the
supervisor owns what bots share (one MongoDB client, pooled HTTP sessions, the
event loop's signal handlers) and decides which runners exist. Metrics,
readiness, cleanup and webhooks read it through one read-only
:class:`~botyard.runtime.view.PlatformView` (the supervisor itself), never
changing it.

Log records of what happens to bots carry ``extra`` fields for programs that
watch the log (the sandbox's page): ``event`` (``cannot_start``, ``handler_failed``,
``update_given_up``, ``reload_rejected``), ``bot_name`` and, about an update, ``user_id``
(the chat's id; never the update, whose text is the user's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.exceptions import TelegramAPIError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.cleanup.schedule import CleanupScheduler
from botyard.cleanup.sweep import backstop_grace
from botyard.cluster import Replica, ReplicaCollector
from botyard.database.client import mongo_client
from botyard.database.documents import Clock, utcnow
from botyard.database.errors import DatabaseUnavailable
from botyard.database.location import open_store
from botyard.logs import TokenRedactingFilter
from botyard.migrations_runner import MigrationError, pending_migrations
from botyard.ops.health import Readiness
from botyard.ops.http_server import OpsServer, connection_limits, server_address
from botyard.ops.metrics import FSM_SAMPLE_INTERVAL, PlatformMetrics
from botyard.ops.watchdog import LoopWatchdog
from botyard.registry.diff import diff_registries
from botyard.registry.loader import RegistryError, load_registry
from botyard.registry.models import BotConfig, Registry
from botyard.runtime.http_sessions import SessionPool
from botyard.runtime.outbound import OutboundPolicy, OutboundStats
from botyard.runtime.routers import BotRouters, RouterResolver
from botyard.runtime.runner import BotRunner, BotSpec, BotStatus
from botyard.storage import BeanieStorage, prepare_database
from botyard.webhook.endpoint import WebhookEndpoint
from botyard.webhook.journal import HEARTBEAT_INTERVAL, UpdateJournal
from botyard.webhook.secrets import SecretStore

logger = logging.getLogger("botyard.supervisor")

WATCH_INTERVAL = 1.0
#: Runners made between two passes of the event loop while bots start. Made all at
#: once, 10,000 runners each took every step before any sent its first request (made,
#: request built, connected, sent), and the Bot API then received all of them in the
#: last seconds of the start.
START_BATCH = 200

RegistryLoader = Callable[[Path], Registry]


class Supervisor:
    """Runs the bots of one registry file until SIGINT or SIGTERM."""

    def __init__(
        self,
        registry: Registry,
        *,
        shutdown_timeout: float = 25.0,
        watch: bool = True,
        redactor: TokenRedactingFilter | None = None,
        loader: RegistryLoader = load_registry,
        bot_factory: Callable[[BotConfig, SessionPool], Bot] | None = None,
        serve_http: bool = True,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        fsm_sample_interval: float = FSM_SAMPLE_INTERVAL,
        clock: Clock = utcnow,
        before_polling: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        #: Called once at the first start, before any bot is made.
        self._before_polling = before_polling
        #: Given to the storage, the cleanup and the webhook journal.
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.watch = watch
        self.runners: dict[str, BotRunner] = {}
        self._redactor = redactor
        self._loader = loader
        self._bot_factory = bot_factory or _make_bot
        self.metrics = PlatformMetrics(self, fsm_sample_interval=fsm_sample_interval)
        self._sessions = SessionPool(meter=self.metrics)
        self._routers = RouterResolver(registry.base_dir)
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        #: Set once every bot of the first start polls or is serving webhooks, or failed.
        self.started = asyncio.Event()
        self._starting: set[str] = set()
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self.database: AsyncDatabase[dict[str, Any]] | None = None
        self.cleanup: CleanupScheduler | None = None
        #: Seconds between webhook maintenance rounds (orphans, rotated secrets).
        self.heartbeat_interval = heartbeat_interval
        #: With a ``cluster`` section: this process as one replica of several.
        self.cluster: Replica | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.webhooks: WebhookEndpoint | None = None
        #: Where accepted webhook updates, and polled ones that wait, are kept until handled.
        self.journal: UpdateJournal | None = None
        #: The webhook, health and metrics server, when the registry asks for one.
        self.http: OpsServer | None = None
        #: False: no HTTP server even if the registry has webhook: or ops: (the sandbox).
        self.serve_http = serve_http
        self._remember_tokens(registry)
        #: The storages' ``purge_at - expires_at``, from ``cleanup.schedule`` (cron
        #: arithmetic: worked out once per registry, not once per bot).
        self._ttl_grace = backstop_grace(registry.cleanup)

    # the whole life

    async def run(self) -> int:
        """Run until asked to stop; the exit code is 0 after a clean shutdown.

        Every router and hook is imported before anything starts: a registry
        naming an unimportable router raises :class:`RegistryError` and no bot runs.
        """
        routers = self._routers.resolve_all(self.registry.enabled_bots)
        async with self._shared_resources(), self._operations():
            self._install_signal_handlers()
            assert self.database is not None
            self.cleanup = CleanupScheduler(
                self.database, self, on_sweeps=self.metrics.record_sweeps, clock=self.clock
            )
            tasks = [asyncio.create_task(self._watch_registry(), name="botyard-watch")]
            if self.registry.cluster is None:
                self._starting = {config.name for config in self.registry.enabled_bots}
                if self._before_polling is not None:
                    self._before_polling()  # no bot is made yet
                if not self._starting:
                    self.started.set()
                await self._start_bots(self.registry.enabled_bots, routers)
                await self.lead(True)
            else:
                for name in routers:  # checked; each is resolved again when this replica starts it
                    self._routers.release(name)
                self.cluster = Replica(self.database, self.registry.cluster, self)
                self.metrics.registry.register(ReplicaCollector(self.cluster))
                tasks.append(asyncio.create_task(self.cluster.run(), name="botyard-cluster"))
                tasks.append(asyncio.create_task(self._started_when_settled(self.cluster)))
            try:
                await self._stop.wait()
            finally:
                if self.cluster is not None:
                    self.cluster.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.lead(False)
                if self.cluster is not None:
                    await self.cluster.leave()
                await self._stop_bots(list(self.runners))
                self._remove_signal_handlers()
        logger.info("botyard stopped")
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Asked to stop: the process is draining and no longer ready."""
        return self._stop.is_set()

    @property
    def outbound(self) -> Mapping[str, OutboundStats]:
        """Each running bot's outbound counts (flood control, retries), by name."""
        return self._sessions.outbound.stats()

    def request_reload(self) -> None:
        self._reload_requested.set()

    @contextlib.asynccontextmanager
    async def _shared_resources(self) -> AsyncIterator[None]:
        async with open_store(self.registry) as uri:
            self.client = mongo_client(
                uri,
                timeout=self.registry.storage.timeout,
                appname="botyard",
                event_listeners=self.metrics.mongo_listeners,
            )
            self.database = self.client[self.registry.storage.database]
            try:
                try:
                    await prepare_database(self.database)
                except PyMongoError as error:
                    raise DatabaseUnavailable.of(uri, error) from None
                await self._warn_of_pending_migrations()
                yield
            finally:
                await self._sessions.close()
                await self.client.close()

    async def _warn_of_pending_migrations(self) -> None:
        """Say so when ``botyard migrate`` has work left: e.g. the TTL index still deletes
        records before their ``on_state_expired`` hook until its migration ran."""
        assert self.database is not None
        try:
            pending = await pending_migrations(self.database, self.registry.path)
        except (MigrationError, PyMongoError) as error:
            logger.warning("could not tell whether migrations are pending: %s", error)
            return
        if pending:
            logger.warning(
                "%d schema migration(s) not applied to database %s (%s): run "
                "`botyard migrate %s up` (botyard keeps running meanwhile)",
                len(pending),
                self.registry.storage.database,
                ", ".join(pending),
                self.registry.path,
            )

    @contextlib.asynccontextmanager
    async def _operations(self) -> AsyncIterator[None]:
        """The journal, the HTTP server, the watchdog and the samplers, around the bots."""
        assert self.database is not None
        journal = self.journal = UpdateJournal(
            self.database, clock=self.clock, shared=self.registry.cluster is not None
        )
        await journal.prepare()
        self.webhooks = WebhookEndpoint(
            journal,
            SecretStore(self.database, on_read=self._remember_secrets),
            self,
            self.metrics,
        )
        watchdog = LoopWatchdog(asyncio.get_running_loop(), self.metrics)
        watchdog.start()
        database = self.database
        tasks = [asyncio.create_task(self._maintain_webhooks(), name="botyard-webhooks")]
        if journal.shared:
            tasks.append(asyncio.create_task(self.webhooks.pick_up(), name="botyard-pick-up"))
        try:
            address = server_address(self.registry) if self.serve_http else None
            if address is not None:
                readiness = Readiness(database, self)
                self.http = OpsServer(
                    self.webhooks, readiness, self.metrics, connection_limits(self.registry)
                )
                await self.http.start(*address)
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.http is not None:
                await self.http.stop()
            watchdog.stop()
            await journal.close()

    async def _maintain_webhooks(self) -> None:
        """Every heartbeat: recover orphaned updates (of every bot), apply rotated secrets,
        when there is anything to recover or any webhook bot (see ``WebhookEndpoint.upkeep``)."""
        assert self.webhooks is not None
        # Not only cancelled: Python 3.11's wait_for (inside PyMongo's server selection)
        # can swallow a cancellation, and the task must still end at shutdown.
        while not self.stopping:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.webhooks.upkeep()
            except (PyMongoError, TelegramAPIError) as error:
                logger.warning("webhook maintenance failed, retrying later: %s", error)

    # what runs once: here, or on the cluster's leader

    @property
    def share(self) -> frozenset[str] | None:
        """The bots this process serves: every enabled one, or its share as a replica."""
        if self.registry.cluster is None:
            return frozenset(bot.name for bot in self.registry.enabled_bots)
        return None if self.cluster is None else self.cluster.share

    @property
    def leading(self) -> bool:
        """Whether the cleanup schedule and the samplers may run here now."""
        return self.registry.cluster is None or (
            self.cluster is not None and self.cluster.may_lead()
        )

    async def lead(self, leading: bool) -> None:
        """Start or stop the cleanup schedule and the FSM sampler (one replica runs them)."""
        assert self.cleanup is not None
        assert self.database is not None
        if leading and self._sampler is None:
            self.cleanup.start()
            self._sampler = asyncio.create_task(
                self.metrics.sample_fsm_records_forever(self.database),
                name="botyard-fsm-sample",
            )
        elif not leading and self._sampler is not None:
            sampler, self._sampler = self._sampler, None
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            await self.cleanup.shutdown()

    # the cluster's view of the bots (botyard.cluster.BotHost)

    def wanted_bots(self) -> Collection[str]:
        return [bot.name for bot in self.registry.enabled_bots]

    def held_bots(self) -> Collection[str]:
        return self.runners.keys()

    async def start_bots(self, names: Collection[str]) -> None:
        async with self._reload_lock:  # not halfway through a reload, with the old config
            bots = [bot for bot in self.registry.enabled_bots if bot.name in names]
            routers: dict[str, BotRouters] = {}
            for bot in bots:
                try:
                    routers[bot.name] = self._routers.resolve(bot)
                except RegistryError as error:  # this bot stays down here; the others go on
                    logger.error("bot=%s cannot start:\n%s", bot.name, error)
            await self._start_bots([bot for bot in bots if bot.name in routers], routers)

    async def stop_bots(self, names: Collection[str]) -> None:
        await self._stop_bots(list(names))

    async def store_finished(self) -> None:
        if self.journal is not None:
            await self.journal.flush()

    async def _started_when_settled(self, cluster: Replica) -> None:
        await cluster.settled.wait()
        self.started.set()

    # bots

    async def _start_bots(self, bots: Iterable[BotConfig], routers: dict[str, BotRouters]) -> None:
        """Make and start a runner for each bot, :data:`START_BATCH` at a time: the first
        bots poll while the next are being made."""
        for index, config in enumerate(bots):
            if index and index % START_BATCH == 0:
                await asyncio.sleep(0)
                if self._stop.is_set():
                    return
            try:
                runner = self._make_runner(config, routers[config.name])
            except Exception as error:  # a bot that cannot be built must not stop the others
                logger.error(
                    "bot=%s cannot start: %s",
                    config.name,
                    error,
                    extra={"event": "cannot_start", "bot_name": config.name},
                )
                self._routers.release(config.name)
                self._started(config.name)  # failed: not awaited any longer
                continue
            self.runners[config.name] = runner
            runner.start()
            logger.info("bot=%s started", config.name)

    def _make_runner(self, config: BotConfig, routers: BotRouters) -> BotRunner:
        assert self.database is not None
        storage = BeanieStorage(
            self.database,
            config.namespace,
            state_ttl=config.state_ttl,
            ttl_grace=self._ttl_grace,
            clock=self.clock,
        )
        spec = BotSpec(
            name=config.name,
            token=config.token_value,
            routers=routers,
            storage=storage,
            fsm_strategy=config.fsm_strategy.to_aiogram(),
            max_concurrent_updates=config.max_concurrent_updates,
            polling=config.mode == "polling",
            workflow_data={"bot_config": config, "database": self.database},
            webhook=(
                self.webhooks.binding(config.name)
                if config.mode == "webhook" and self.webhooks is not None
                else None
            ),
            observe_handling=self.metrics.observer(config.name),
            handling_timeout=(
                None if config.handling_timeout is None else config.handling_timeout.total_seconds()
            ),
            update_retries=config.update_retries,
            journal=self.journal,
            claim_left=None if self.cluster is None else self.cluster.remaining,
        )
        bot = self._bot_factory(config, self._sessions)
        self._sessions.outbound.register(bot, config.name, OutboundPolicy.from_config(config))
        return BotRunner(spec, bot, on_status=self._on_status)

    def _on_status(self, runner: BotRunner, status: BotStatus, detail: str) -> None:
        level = (
            logging.ERROR
            if status in {BotStatus.UNAUTHORIZED, BotStatus.CONFLICT}
            else logging.INFO
        )
        logger.log(level, "bot=%s status=%s %s", runner.name, status.value, detail)
        if status not in {BotStatus.STARTING, BotStatus.STOPPED}:
            self._started(runner.name)

    def _started(self, name: str) -> None:
        if name in self._starting:
            self._starting.discard(name)
            if not self._starting:
                self.started.set()

    async def _stop_bots(self, names: list[str]) -> None:
        runners = [self.runners.pop(name) for name in names if name in self.runners]
        results = await asyncio.gather(
            *(runner.stop(self.shutdown_timeout) for runner in runners), return_exceptions=True
        )
        for runner, result in zip(runners, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("bot=%s did not stop cleanly: %s", runner.name, result)
            self._sessions.outbound.unregister(runner.bot)
            await self._sessions.release(runner.name, runner.bot)
            self._routers.release(runner.name)
            self._started(runner.name)
            logger.info("bot=%s stopped", runner.name)

    # reload

    async def reload(self) -> bool:
        """Apply the registry file as it is now; keep the running one if it is invalid."""
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(self._loader, self.registry.path)
            except RegistryError as error:
                logger.error(
                    "reload rejected, the running registry stays:\n%s",
                    error,
                    extra={"event": "reload_rejected"},
                )
                return False
            # Comparing two large registries takes long: not on the loop every bot shares.
            diff = await asyncio.to_thread(diff_registries, self.registry, new)
            if "storage" in diff.sections:
                logger.warning("storage settings changed: they take effect after a restart")
            if server_address(new) != server_address(self.registry):
                logger.warning(
                    "the HTTP server's address (webhook.listen / ops.listen) changed: "
                    "it takes effect after a restart"
                )
            to_stop = [name for name in (*diff.removed, *diff.changed) if name in self.runners]
            await self._stop_bots(to_stop)
            if self.cluster is not None:
                self.cluster.stopped(to_stop)
            self._remember_tokens(new)
            for name in {bot.name for bot in self.registry.bots} - {bot.name for bot in new.bots}:
                self.metrics.forget(name)
                if self.webhooks is not None:
                    self.webhooks.forget(name)
            self.registry = new
            self._ttl_grace = backstop_grace(new.cleanup)
            routers: dict[str, BotRouters] = {}
            for bot in new.enabled_bots:
                if bot.name in self.runners:
                    continue
                try:
                    routers[bot.name] = self._routers.resolve(bot)
                except RegistryError as error:  # this bot stays down; the others go on
                    logger.error(
                        "bot=%s cannot start:\n%s",
                        bot.name,
                        error,
                        extra={"event": "cannot_start", "bot_name": bot.name},
                    )
            if self.cluster is None:
                to_start = [bot for bot in new.enabled_bots if bot.name in routers]
                await self._start_bots(to_start, routers)
            else:  # the cluster starts this replica's share of them
                for name in routers:
                    self._routers.release(name)
                self.cluster.wake()
            if self.cleanup is not None:
                self.cleanup.rebuild()
            logger.info(
                "registry reloaded: %d added, %d removed, %d changed, %d unchanged",
                len(diff.added),
                len(diff.removed),
                len(diff.changed),
                len(diff.unchanged),
            )
            return True

    async def _watch_registry(self) -> None:
        """Reload on SIGHUP, and when the YAML (or the .env beside it) changes.

        The watch looks at the files' ``stat`` (size, times, inode) every
        :data:`WATCH_INTERVAL`: a few microseconds on the loop, no read and no
        thread. Only when that changed are the files read (in a thread) and
        compared by content, so a save that changes nothing reloads nothing.
        """
        fingerprint = await asyncio.to_thread(_fingerprint, self.registry.path)
        stamp = _stamp(self.registry.path)
        # Without watching, nothing ticks: only SIGHUP wakes this task.
        interval = WATCH_INTERVAL if self.watch else None
        while not self._stop.is_set():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
            # cancellation that arrives as the event is set (SIGHUP with SIGTERM).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._reload_requested.wait()
            requested = self._reload_requested.is_set()
            self._reload_requested.clear()
            current_stamp = _stamp(self.registry.path)
            if not requested and current_stamp == stamp:
                continue
            stamp = current_stamp
            current = await asyncio.to_thread(_fingerprint, self.registry.path)
            if requested or current != fingerprint:
                fingerprint = current
                await self.reload()

    # process plumbing

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    def _on_stop_signal(self, signum: int) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        self.request_stop()

    def _remember_secrets(self, secrets: Iterable[str]) -> None:
        if self._redactor is not None:
            self._redactor.remember_secrets(secrets)

    def _remember_tokens(self, registry: Registry) -> None:
        if self._redactor is not None:
            self._redactor.remember(bot.token_value for bot in registry.bots if bot.token)


def _make_bot(config: BotConfig, sessions: SessionPool) -> Bot:
    return Bot(
        config.token_value,
        session=sessions.acquire(config.name, config.api_server),
        default=DefaultBotProperties(**config.bot_properties.given()),
    )


def _stamp(path: Path) -> tuple[tuple[int, ...], ...]:
    """What ``stat`` says of the registry and its ``.env``; it changes when either is written
    or replaced (an editor's rename, a Kubernetes ConfigMap's symlink swap)."""
    stamps: list[tuple[int, ...]] = []
    for candidate in (path, path.with_name(".env")):
        try:
            found = candidate.stat()
        except OSError:
            stamps.append(())
            continue
        stamps.append((found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns))
    return tuple(stamps)


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for candidate in (path, path.with_name(".env")):
        with contextlib.suppress(OSError):
            digest.update(candidate.read_bytes())
    return digest.hexdigest()
