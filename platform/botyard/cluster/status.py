"""What the cluster looks like: ``botyard status`` and the replica's ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cluster.leader import LeaderLease
from botyard.cluster.membership import Member, Membership, server_time
from botyard.database.documents import Document

if TYPE_CHECKING:
    from botyard.cluster.replica import Replica

__all__ = ["ClusterStatus", "ReplicaCollector", "cluster_status"]


@dataclass(frozen=True)
class ClusterStatus:
    """Every replica document, the leader, and the server's time they are measured against."""

    members: list[Member]
    leader: str | None
    lapse: float
    now: Any

    def render(self) -> str:
        if not self.members:
            return "no replica has joined (is botyard run running with a cluster: section?)"
        lines = []
        live = [m for m in self.members if m.silent_for(self.now) < self.lapse]
        lines.append(f"{len(live)} live replica(s), {len(self.members) - len(live)} gone")
        for member in self.members:
            age = member.silent_for(self.now)
            marks = []
            if member.id == self.leader:
                marks.append("leader")
            if member.leaving:
                marks.append("leaving")
            if age >= self.lapse:
                marks.append("gone")
            suffix = f" ({', '.join(marks)})" if marks else ""
            lines.append(
                f"{member.id}{suffix}: heartbeat {age:.1f}s ago, serves {len(member.bots)} bot(s)"
            )
            if member.bots:
                lines.append("  " + ", ".join(member.bots))
        return "\n".join(lines)


async def cluster_status(database: AsyncDatabase[Document], lapse: float) -> ClusterStatus:
    """Read the replicas and the leader; heartbeat ages on the server's clock."""
    now = await server_time(database)
    members = await Membership(database, "").members()
    leader = await LeaderLease(database, "").holder()
    return ClusterStatus(members, leader, lapse, now)


class ReplicaCollector(Collector):
    """The replica's part, read at scrape time."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    def collect(self) -> Iterator[Metric]:
        replica = self._replica
        yield GaugeMetricFamily(
            "botyard_cluster_bots_served",
            "Bots this replica serves (running here, or being handed over).",
            value=len(replica.held),
        )
        yield GaugeMetricFamily(
            "botyard_cluster_bots_assigned",
            "Bots the assignment gives this replica.",
            value=len(replica.assigned),
        )
        yield GaugeMetricFamily(
            "botyard_cluster_replicas_live",
            "Live replicas this replica saw at its last heartbeat.",
            value=len(replica.live),
        )
        yield GaugeMetricFamily(
            "botyard_cluster_leader",
            "1 while this replica holds the leader lease (cleanup, samplers).",
            value=1.0 if replica.leading else 0.0,
        )
        handovers = CounterMetricFamily(
            "botyard_cluster_handovers",
            "Bots taken over from another replica or a released claim (taken), handed "
            "to another replica (released), or stopped for a lapsed heartbeat (fenced).",
            labels=["kind"],
        )
        for kind in ("taken", "released", "fenced"):
            handovers.add_metric([kind], replica.handovers[kind])
        yield handovers

    def describe(self) -> Iterator[Metric]:
        return iter(())
