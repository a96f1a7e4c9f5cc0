"""A :class:`~botyard.cluster.replica.BotHost` whose bots are only names in a set.

For measuring and testing the coordination alone (``benchmarks/cluster.py``,
``tests/cluster``): starting or stopping a bot costs the cluster nothing more
than the calls this host records.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["MemoryHost"]


class MemoryHost:
    """Runs "bots" as names; ``starts`` and ``stops`` keep every call's names in order."""

    def __init__(self, bots: list[str]) -> None:
        self.bots = list(bots)
        self.running: set[str] = set()
        self.leading = False
        self.starts: list[str] = []
        self.stops: list[str] = []

    def wanted_bots(self) -> Collection[str]:
        return self.bots

    def held_bots(self) -> Collection[str]:
        return set(self.running)

    async def start_bots(self, names: Collection[str]) -> None:
        self.running |= set(names)
        self.starts.extend(names)

    async def stop_bots(self, names: Collection[str]) -> None:
        self.running -= set(names)
        self.stops.extend(names)

    async def store_finished(self) -> None:
        """Nothing to store: these bots handle no updates."""

    async def lead(self, leading: bool) -> None:
        self.leading = leading
