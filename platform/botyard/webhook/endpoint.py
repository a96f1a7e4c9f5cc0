"""Webhook delivery for every webhook bot on one aiohttp server, plus the ops endpoints.

A bot's webhook URL is ``<webhook.base_url>/webhook/<bot name>/<path secret>``:
its name for the operator, a random secret so the URL cannot be guessed, and
never the token (aiogram's ``TokenBasedRequestHandler`` puts the token in the
path, where proxy and access logs keep it). Each request must also carry the
bot's ``secret_token`` in ``X-Telegram-Bot-Api-Secret-Token``; both secrets
are compared in constant time (see :mod:`botyard.webhook.secrets`).

Nothing reaches a handler unless the request passed every check:

- unknown bot or path secret: 404; wrong or missing secret token: 401 (counted);
- body over :data:`MAX_BODY_BYTES`, not JSON, or not an update: 400;
- bot stopping, or MongoDB unreachable: 503, so Telegram delivers it again.

An accepted update is written to the journal (:mod:`botyard.webhook.journal`), answered
200, and handled in the background by the bot's runner, with the same per-key
ordering, concurrency cap and fault isolation as a polled update.

With replicas (a ``cluster`` section, the journal shared) a load balancer may
send any bot's update to any replica. Every replica checks the secrets of
every webhook bot of the registry (read from MongoDB, refreshed every
heartbeat) and journals what passes, also while the bot is stopping here; the
bot's current holder takes its updates from the journal in ``update_id`` order
(:meth:`WebhookEndpoint.pick_up`, at once for an update it accepted itself,
every :data:`~botyard.webhook.journal.PICKUP_INTERVAL` for the others'), so one
chat's updates are handled in order whichever replica received them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from botyard.errors import BotyardError
from botyard.ops.metrics import PlatformMetrics
from botyard.registry.models import WebhookConfig
from botyard.runtime.runner import BotRunner
from botyard.runtime.view import PlatformView
from botyard.webhook.journal import PICKUP_INTERVAL, Recorded, UpdateJournal
from botyard.webhook.secrets import SecretStore, WebhookSecret

__all__ = [
    "MAX_BODY_BYTES",
    "SECRET_HEADER",
    "WEBHOOK_PREFIX",
    "WebhookEndpoint",
    "webhook_url",
]

logger = logging.getLogger("botyard.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PREFIX = "/webhook"
#: Telegram's updates are a few kilobytes; anything near this is not one.
MAX_BODY_BYTES = 1024 * 1024
#: Telegram's updates nest about a dozen levels (a reply inside a message inside an update).
MAX_UPDATE_NESTING = 64
#: Longest reading a body may take when the registry has no webhook section.
BODY_TIMEOUT = 10.0


def webhook_url(config: WebhookConfig, bot: str, secret: WebhookSecret) -> str:
    """The URL ``setWebhook`` is given for ``bot``."""
    return f"{config.base_url}{WEBHOOK_PREFIX}/{bot}/{secret.path}"


def _matching(candidates: list[WebhookSecret], path: str) -> WebhookSecret | None:
    found = None
    for candidate in candidates:  # no early exit: the time taken says nothing
        if secrets.compare_digest(candidate.path.encode(), path.encode()):
            found = candidate
    return found


@dataclass
class _Route:
    """Where one bot's requests go; during a rotation the previous secrets still work."""

    runner: BotRunner
    secrets: list[WebhookSecret] = field(default_factory=list)
    accepting: bool = True


class WebhookEndpoint:
    """The webhook bots' routes, and the :class:`~botyard.runtime.runner.WebhookBinding` of each."""

    def __init__(
        self,
        journal: UpdateJournal,
        secret_store: SecretStore,
        platform: PlatformView,
        metrics: PlatformMetrics,
    ) -> None:
        self.journal = journal
        self.secret_store = secret_store
        self._platform = platform
        self._metrics = metrics
        self._routes: dict[str, _Route] = {}
        #: Shared journal: the secrets of webhook bots running elsewhere (newest first;
        #: the previous ones still work until the next refresh after a rotation).
        self._elsewhere: dict[str, list[WebhookSecret]] = {}
        self._pick_up_now = asyncio.Event()

    def binding(self, bot: str) -> _Binding:
        """What the runner of ``bot`` calls to start and stop receiving updates."""
        return _Binding(self, bot)

    # requests

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /webhook/{bot}/{secret}``: check, journal, answer, hand to the runner."""
        name = request.match_info["bot"]
        route = self._routes.get(name)
        shared = self.journal.shared
        try:
            candidates = await self._secrets(name, route)
        except PyMongoError as error:
            self._metrics.count_webhook(name, "unavailable")
            logger.warning(
                "bot=%s webhook secrets unreadable (%s): 503", name, type(error).__name__
            )
            return _text(503, "storage unavailable; deliver again later")
        secret = _matching(candidates, request.match_info["secret"])
        if secret is None:
            self._metrics.webhook_unknown_path.inc()
            return _text(404, "unknown webhook")
        header = request.headers.get(SECRET_HEADER, "")
        if not secrets.compare_digest(header.encode(), secret.token.encode()):
            self._metrics.count_webhook(name, "unauthorized")
            return _text(401, "wrong secret token")
        if not shared and route is not None and not route.accepting:
            self._metrics.count_webhook(name, "unavailable")
            return _text(503, "bot is stopping; deliver again later")
        config = self._platform.registry.webhook
        body_timeout = config.body_timeout.total_seconds() if config else BODY_TIMEOUT
        try:
            bot = route.runner.bot if route is not None else None
            raw, parsed = await _read_update(request, bot, body_timeout)
        except _BadUpdate as problem:
            self._metrics.count_webhook(name, "bad_request")
            logger.warning("bot=%s webhook request rejected: %s", name, problem)
            response = _text(problem.status, str(problem))
            if problem.status == 408:
                response.force_close()
            return response
        try:
            recorded = await self.journal.record(name, parsed.update_id, raw)
        except PyMongoError as error:
            self._metrics.count_webhook(name, "unavailable")
            logger.warning(
                "bot=%s update=%s not accepted, the journal is unreachable (%s): 503",
                name,
                parsed.update_id,
                type(error).__name__,
            )
            return _text(503, "storage unavailable; deliver again later")
        if recorded is Recorded.DUPLICATE:  # held here or by another live instance
            self._metrics.count_webhook(name, "duplicate")
            return web.json_response({})
        if recorded is Recorded.TAKEN:
            self._metrics.count_webhook(name, "duplicate")
            logger.info(
                "bot=%s update=%s was journaled, but nothing held it (its acknowledgement "
                "was lost): handling it now",
                name,
                parsed.update_id,
            )
        else:
            self._metrics.count_webhook(name, "accepted")
        if shared:  # the holder hands it out in order with those accepted elsewhere
            if name in self._routes:
                self._pick_up_now.set()
            return web.json_response({})
        current = self._routes.get(name)  # a reload may have replaced the runner meanwhile
        if current is not None and current.accepting:
            self._submit(name, current.runner, parsed)
        else:  # the bot is stopping: the journal keeps the update for its next start
            self.journal.release(name, parsed.update_id)
        return web.json_response({})

    def _submit(self, name: str, runner: BotRunner, update: Update) -> None:
        runner.accept(update, on_done=lambda update_id: self.journal.finished(name, update_id))

    async def _secrets(self, name: str, route: _Route | None) -> list[WebhookSecret]:
        """The secrets a request for ``name`` may carry; none for an unknown bot.

        Shared, a webhook bot of the registry that runs elsewhere has its secrets
        read from MongoDB on its first request, then refreshed by :meth:`maintain`.
        """
        if route is not None:
            return route.secrets
        if not self.journal.shared or name not in self._webhook_bots():
            return []
        if name not in self._elsewhere:
            stored = await self.secret_store.current([name])
            self._elsewhere[name] = [stored[name]] if name in stored else []
        return self._elsewhere[name]

    def _webhook_bots(self) -> set[str]:
        return {bot.name for bot in self._platform.registry.enabled_bots if bot.mode == "webhook"}

    async def _refresh_elsewhere(self) -> None:
        """Re-read the known secrets of bots running elsewhere (one query): a rotation is
        seen within a heartbeat, and the secrets it replaced stay valid until the next one."""
        names = self._webhook_bots() - self._routes.keys()
        for name in set(self._elsewhere) - names:
            del self._elsewhere[name]
        if not self._elsewhere:
            return
        stored = await self.secret_store.current(self._elsewhere)
        for name, known in self._elsewhere.items():
            secret = stored.get(name)
            if secret is not None and (not known or secret.path != known[0].path):
                self._elsewhere[name] = [secret, *known[:1]]
            elif len(known) > 1:
                del known[1:]

    async def pick_up(self) -> None:
        """Shared journal: hand each running bot the updates journaled for it, in order.

        Runs until cancelled: at once after this replica accepted an update for
        a bot it runs, else every :data:`~botyard.webhook.journal.PICKUP_INTERVAL`.
        """
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PICKUP_INTERVAL):
                    await self._pick_up_now.wait()
            self._pick_up_now.clear()
            running = {name: route for name, route in self._routes.items() if route.accepting}
            try:
                entries = await self.journal.pending(running)
            except PyMongoError as error:
                if not failing:
                    logger.warning("journal: cannot look for updates to handle yet: %s", error)
                failing = True
                continue
            failing = False
            for entry in entries:
                route = self._routes.get(entry.bot)
                if route is not None and route.accepting and route is running.get(entry.bot):
                    route.runner.accept_journaled(entry)
                else:  # stopped meanwhile: the next holder takes it
                    self.journal.release(entry.bot, entry.update_id)

    # bots starting and stopping

    async def attach(self, name: str, runner: BotRunner, *, recover: bool) -> None:
        """Hand the bot's journaled updates to ``runner``, route its requests, set its webhook.

        Recovered updates are queued before the route exists, so they are
        handled before anything newer of the same conversation.
        """
        secret = await self.secret_store.get_or_create(name)
        if recover:
            entries = await self.journal.claim_starting(name)
            for entry in entries:
                runner.accept_journaled(entry)
            if entries:
                logger.info(
                    "bot=%s handling %d update(s) accepted earlier and not yet handled",
                    name,
                    len(entries),
                )
        self._routes[name] = _Route(runner, [secret])
        self._elsewhere.pop(name, None)
        await self._set_webhook(runner, secret)

    def detach(self, name: str, runner: BotRunner) -> None:
        """Answer the bot's requests with 503 from now on: Telegram keeps them for later."""
        route = self._routes.get(name)
        if route is not None and route.runner is runner:
            route.accepting = False
            # What it does not finish while stopping goes to the bot's next runner.
            self.journal.release(name)

    def forget(self, name: str) -> None:
        """The bot left the registry: its requests get 404, and its stopped runner is let go."""
        route = self._routes.get(name)
        if route is not None and not route.accepting:
            del self._routes[name]

    # what runs every heartbeat

    @property
    def serving(self) -> bool:
        """Some webhook bot is receiving updates here (shared: also for another replica)."""
        return bool(self._elsewhere) or any(route.accepting for route in self._routes.values())

    async def upkeep(self) -> None:
        """One heartbeat's round, when it serves anything: :meth:`maintain`.

        It does with webhook bots (their secrets may rotate, and each request
        journals) and when the journal asks for it
        (:meth:`~botyard.webhook.journal.UpdateJournal.needs_upkeep`); a process
        whose bots only poll and that journaled nothing skips it after one read.
        """
        if self.serving or await self.journal.needs_upkeep():
            await self.maintain()

    async def maintain(self) -> None:
        """Heartbeat, take over updates of processes that are gone, apply rotated secrets.

        The running polling bots' updates a gone process journaled (those that
        waited, see :mod:`botyard.runtime.runner`) are taken over in the same
        claim as the webhook bots' ones.
        """
        await self.journal.heartbeat()
        if self.journal.shared:
            await self._refresh_elsewhere()
        running = {name: route for name, route in self._routes.items() if route.accepting}
        runners = {name: bot for name, bot in self._platform.runners.items() if bot.spec.polling}
        runners.update((name, route.runner) for name, route in running.items())
        for entry in await self.journal.claim(runners):
            runners[entry.bot].accept_journaled(entry)
        if not running:
            return
        stored = await self.secret_store.current(running)
        for name, route in running.items():
            secret = stored.get(name)
            if secret is None or secret.path == route.secrets[0].path:
                continue
            try:
                await self._apply_rotation(route, secret)
            except TelegramAPIError as error:  # one bot's trouble must not hold the others
                logger.warning("bot=%s rotated secrets not applied yet: %s", name, error)

    async def _apply_rotation(self, route: _Route, secret: WebhookSecret) -> None:
        """Accept old and new secrets until Telegram has the new ones, then only the new."""
        route.secrets.insert(0, secret)
        try:
            await self._set_webhook(route.runner, secret)
        except BaseException:  # Telegram still has the old ones; the next heartbeat retries
            route.secrets.remove(secret)
            raise
        del route.secrets[1:]
        logger.info("bot=%s webhook secrets rotated; setWebhook called", route.runner.name)

    async def _set_webhook(self, runner: BotRunner, secret: WebhookSecret) -> None:
        config = self._platform.registry.webhook
        if config is None:
            raise RuntimeError("the registry has no webhook section")
        await runner.bot.set_webhook(
            url=webhook_url(config, runner.name, secret),
            secret_token=secret.token,
            allowed_updates=runner.allowed_updates,
            max_connections=config.max_connections,
            drop_pending_updates=False,
        )


class _Binding:
    """One webhook bot's side of the endpoint: a :class:`~botyard.runtime.runner.WebhookBinding`."""

    def __init__(self, endpoint: WebhookEndpoint, bot: str) -> None:
        self._endpoint = endpoint
        self._bot = bot
        self._recovered = False

    async def open(self, runner: BotRunner) -> None:
        # Recovery once per runner: a start retried after an error must not submit twice.
        await self._endpoint.attach(self._bot, runner, recover=not self._recovered)
        self._recovered = True

    async def close(self, runner: BotRunner) -> None:
        self._endpoint.detach(self._bot, runner)


class _BadUpdate(BotyardError, ValueError):
    """The body is not an update; the message says why (answered 400, or 408 when slow)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def _read_update(
    request: web.Request, bot: Bot | None, body_timeout: float
) -> tuple[dict[str, Any], Update]:
    """The body as JSON and as an aiogram ``Update`` (bound to ``bot`` if it runs here)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _BadUpdate(f"body of {request.content_length} bytes exceeds {MAX_BODY_BYTES}")
    try:
        async with asyncio.timeout(body_timeout):
            body = await request.read()  # the application's client_max_size is MAX_BODY_BYTES
    except web.HTTPRequestEntityTooLarge:
        raise _BadUpdate(f"body exceeds {MAX_BODY_BYTES} bytes") from None
    except TimeoutError:
        raise _BadUpdate(f"body not received within {body_timeout:g}s", status=408) from None
    try:
        raw = json.loads(body)
    except RecursionError:
        raise _BadUpdate("body is JSON nested too deeply to be an update") from None
    except ValueError as error:
        raise _BadUpdate(f"body is not JSON ({error})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("update_id"), int):
        raise _BadUpdate("body is not a Telegram update (no integer update_id)")
    _check_storable(raw)
    try:
        update = Update.model_validate(raw, context={"bot": bot})
    except ValidationError as error:
        raise _BadUpdate(f"body is not a valid update ({error.error_count()} errors)") from None
    return raw, update


def _check_storable(raw: dict[str, Any]) -> None:
    """Refuse what no update holds and the journal could not store: nesting deeper than
    :data:`MAX_UPDATE_NESTING`, integers outside 64 bits (``update_id`` above 2^63)."""
    pending: list[tuple[Any, int]] = [(raw, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > MAX_UPDATE_NESTING:
                raise _BadUpdate(f"body nests deeper than {MAX_UPDATE_NESTING} levels")
            items = value.values() if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)
        elif isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise _BadUpdate("body holds an integer outside 64 bits")


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n")
