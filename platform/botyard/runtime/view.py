"""What the supervisor shows the code it runs: the one read-only view of the platform.

Metrics, readiness, the cleanup job and the webhook endpoint read the registry
in force and the running bots through a :class:`PlatformView` when they need
them (a scrape, a probe, a sweep, a ``setWebhook``), so a reload is seen
without telling each of them. They never change it: state flows down from the
supervisor, which is the only one to replace the registry or the runners.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from botyard.registry.models import Registry
from botyard.runtime.outbound import OutboundStats
from botyard.runtime.runner import BotRunner

__all__ = ["PlatformView"]


class PlatformView(Protocol):
    """The platform as it is now; :class:`~botyard.runtime.supervisor.Supervisor` is one."""

    @property
    def registry(self) -> Registry:
        """The registry in force (replaced as a whole by a reload)."""

    @property
    def runners(self) -> Mapping[str, BotRunner]:
        """The bots that were started, by name."""

    @property
    def outbound(self) -> Mapping[str, OutboundStats]:
        """Each running bot's outbound counts (flood control, retries), by name."""

    @property
    def stopping(self) -> bool:
        """Asked to stop: draining, no longer ready."""

    @property
    def share(self) -> frozenset[str] | None:
        """The bots this process serves: every enabled bot, or with replicas (a ``cluster``
        section) this replica's share once it joined and started it, ``None`` before."""

    @property
    def leading(self) -> bool:
        """Whether what runs once (the cleanup schedule, the samplers) may run here now:
        always in a single process, on the leader replica only with replicas."""
