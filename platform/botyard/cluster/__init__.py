"""Several ``botyard run`` replicas sharing the bots of one registry through MongoDB.

- :mod:`~botyard.cluster.membership`: one document per replica, one heartbeat write per interval;
- :mod:`~botyard.cluster.assignment`: which live replica serves which bot (balanced, stable);
- :mod:`~botyard.cluster.claims`: compare-and-set claims, so a bot has one poller at a time;
- :mod:`~botyard.cluster.leader`: the lease of the replica that runs the cleanup and the samplers;
- :mod:`~botyard.cluster.replica`: the loop tying them together in each process;
- :mod:`~botyard.cluster.status`: what ``botyard status`` and ``/metrics`` show;
- :mod:`~botyard.cluster.memory`: a host without bots, to measure and test the coordination.
"""

from botyard.cluster.assignment import assign
from botyard.cluster.replica import BotHost, Replica
from botyard.cluster.status import ReplicaCollector, cluster_status

__all__ = ["BotHost", "Replica", "ReplicaCollector", "assign", "cluster_status"]
