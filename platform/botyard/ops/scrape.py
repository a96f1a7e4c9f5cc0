"""Rendering ``/metrics`` without holding the event loop, whatever the number of bots.

The numbers a scrape shows belong to the event loop: the runners, the
outbound limiters and the handlers change them as they run, and a thread
reading them could see a dict change size under it or half of an update. So
a render copies them on the loop first, :data:`SLICE` bots at a time with the
loop free to run other work between slices, in plain numbers, lists and dicts
(no metric objects); then a worker thread builds the metric families from that
copy alone and formats them, the costly part (about 190,000 series at 10,000
bots with ``metrics.per_bot``). Scrapes arriving while a render is under way
get its result: simultaneous scrapes do not multiply the work.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TypeAlias, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "SLICE",
    "Copying",
    "Families",
    "RegistryInOrder",
    "SharedRender",
    "SnapshotCollector",
    "in_slices",
]

#: Bots whose numbers are copied in one go on the event loop (at most a few ms of work).
SLICE = 500

T = TypeVar("T")
#: Builds metric families from a copy, in any thread.
Families: TypeAlias = Callable[[], Iterable[Metric]]
#: A copy taken on the loop: the loop may run other work at each ``yield``.
Copying: TypeAlias = Generator[None, None, T]


def in_slices(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), SLICE):
        yield items[start : start + SLICE]


def copy_at_once(copying: Copying[T]) -> T:
    try:
        while True:
            next(copying)
    except StopIteration as done:
        copied: T = done.value
        return copied


async def copy_in_slices(copying: Copying[T]) -> T:
    try:
        while True:
            next(copying)
            await asyncio.sleep(0)
    except StopIteration as done:
        copied: T = done.value
        return copied


class SnapshotCollector(Collector):
    """A collector of values the event loop owns: copied on the loop (:meth:`snapshot`),
    turned into families anywhere.

    ``collect()``, for a direct read of the registry (``get_sample_value``), copies
    at once; :class:`SharedRender` copies in slices.
    """

    def __init__(self, per_bot: Callable[[], bool]) -> None:
        self._per_bot = per_bot

    @abstractmethod
    def snapshot(self, per_bot: bool) -> Copying[Families]:
        """Copy the values now, on the event loop; the result builds their families."""

    def collect(self) -> Iterator[Metric]:
        yield from copy_at_once(self.snapshot(self._per_bot()))()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RegistryInOrder(CollectorRegistry):
    """A registry that also lists its collectors, in the order it collects them."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.collectors.remove(collector)


class _Copied(Collector):
    def __init__(self, parts: list[Families]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part()


def _ready(metrics: list[Metric]) -> Families:
    return lambda: metrics


class SharedRender:
    """The text exposition of ``registry``, one render at a time.

    A collector that is not a :class:`SnapshotCollector` (prometheus-client's own
    counters and histograms, the replica's gauges) must be cheap: it is collected
    on the loop at once. A render that fails fails every scrape waiting for it;
    the next scrape starts a new one.
    """

    def __init__(self, registry: RegistryInOrder, per_bot: Callable[[], bool]) -> None:
        self._registry = registry
        self._per_bot = per_bot
        self._rendering: asyncio.Task[bytes] | None = None

    async def render(self) -> bytes:
        if self._rendering is None:
            self._rendering = asyncio.create_task(self._render())
            self._rendering.add_done_callback(self._rendered)
        # A scrape given up (its client left) must not cancel the others' render.
        return await asyncio.shield(self._rendering)

    def _rendered(self, rendering: asyncio.Task[bytes]) -> None:
        self._rendering = None

    async def _render(self) -> bytes:
        per_bot = self._per_bot()
        parts: list[Families] = []
        for collector in list(self._registry.collectors):
            if isinstance(collector, SnapshotCollector):
                parts.append(await copy_in_slices(collector.snapshot(per_bot)))
            else:
                parts.append(_ready(list(collector.collect())))
        return await asyncio.to_thread(generate_latest, _Copied(parts))
