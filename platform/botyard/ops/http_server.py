"""The one HTTP server of a botyard process: webhooks, ``/healthz``, ``/readyz``, ``/metrics``.

It listens on ``webhook.listen`` when a bot of the registry uses webhooks, else
on ``ops.listen``; without either, there is none. It keeps no access log: the
webhook paths carry each bot's path secret.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from botyard.errors import BotyardError
from botyard.ops.connection_guard import ConnectionGuard, ConnectionLimits, GuardedSite
from botyard.ops.health import Readiness
from botyard.ops.metrics import PlatformMetrics
from botyard.registry.models import Registry
from botyard.webhook.endpoint import MAX_BODY_BYTES, WEBHOOK_PREFIX, WebhookEndpoint

__all__ = ["ListenError", "OpsServer", "connection_limits", "server_address"]

logger = logging.getLogger("botyard.http")


class ListenError(BotyardError, OSError):
    """The server cannot bind its address; the message names the address and the reason."""


def server_address(registry: Registry) -> tuple[str, int] | None:
    """Where the server listens for ``registry``, or ``None`` when it has no server."""
    if registry.webhook is not None and any(bot.mode == "webhook" for bot in registry.bots):
        return registry.webhook.address
    if registry.ops is not None:
        return registry.ops.address
    if registry.webhook is not None:
        return registry.webhook.address
    return None


def connection_limits(registry: Registry) -> ConnectionLimits:
    """The server's connection limits: the ``webhook`` section's, else the defaults."""
    webhook = registry.webhook
    if webhook is None:
        return ConnectionLimits()
    return ConnectionLimits(
        header_timeout=webhook.header_timeout.total_seconds(),
        body_timeout=webhook.body_timeout.total_seconds(),
        max_per_client=webhook.max_connections_per_client,
    )


class OpsServer:
    """Serves the endpoint, the probes and the metrics on one address."""

    def __init__(
        self,
        endpoint: WebhookEndpoint,
        readiness: Readiness,
        metrics: PlatformMetrics,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._readiness = readiness
        self._metrics = metrics
        self.guard = ConnectionGuard(limits or ConnectionLimits())
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def application(self) -> web.Application:
        # client_max_size: a larger body fails to read, and the endpoint answers 400.
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self.guard.middleware])
        app.router.add_post(WEBHOOK_PREFIX + "/{bot}/{secret}", self._endpoint.handle)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; :attr:`url` tells which)."""
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await GuardedSite(runner, host, port, self.guard).start()
        except OSError as error:
            await runner.cleanup()
            raise ListenError(
                f"cannot listen on {host}:{port} (webhook.listen or ops.listen): "
                f"{error.strerror or error}"
            ) from None
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        logger.info("http server listening on %s (webhooks, /healthz, /readyz, /metrics)", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = await self._readiness.check()
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        response = web.Response(body=await self._metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
