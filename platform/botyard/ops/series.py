"""Series kept by bot and shown, when scraped, either by bot or summed over the bots.

``/metrics`` labels series by bot only while that stays affordable
(``metrics.per_bot``): at 10,000 bots the per-bot series alone are a quarter of
a million. The values are always kept by bot, so the choice is made at each
scrape and a reload that changes it takes effect at once.

Sums over bots never go down: a bot that leaves (or whose runner restarted and
counts from zero again) keeps its part in the sum. A Prometheus counter that went
down would read as a reset, and ``rate()`` would count the whole platform's
total once more as new.

A scrape copies the values on the event loop (``snapshot``) and builds the
families from the copy in a worker thread (see :mod:`botyard.ops.scrape`).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from operator import itemgetter

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from botyard.ops.scrape import Copying, in_slices

__all__ = ["Counts", "Histograms", "RunningTotals"]

BOT = "bot"


def _without_bot(labels: Sequence[str]) -> tuple[int, ...]:
    return tuple(index for index, label in enumerate(labels) if label != BOT)


class Counts:
    """A counter by label values; a ``bot`` label among them is dropped when not per bot."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._kept = _without_bot(self.labels)
        self._bot = self.labels.index(BOT) if BOT in self.labels else None
        self._counts: dict[tuple[str, ...], float] = {}
        #: By the labels but ``bot``: what bots that left had counted.
        self._left: dict[tuple[str, ...], float] = {}

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self._counts[values] = self._counts.get(values, 0.0) + amount

    def forget(self, bot: str) -> None:
        """Drop ``bot``'s series; its counts stay in the sums."""
        if self._bot is None:
            return
        for values in [values for values in self._counts if values[self._bot] == bot]:
            rest = tuple(values[index] for index in self._kept)
            self._left[rest] = self._left.get(rest, 0.0) + self._counts.pop(values)

    def family(self, per_bot: bool) -> CounterMetricFamily:
        """Their family now, read at once on the event loop."""
        return self._family(self._counts, self._left, per_bot)

    def snapshot(self, per_bot: bool) -> Copying[Callable[[], CounterMetricFamily]]:
        """Copy the counts (one dict copy); the result builds their family."""
        copied = partial(self._family, dict(self._counts), dict(self._left), per_bot)
        yield
        return copied

    def _family(
        self,
        counts: dict[tuple[str, ...], float],
        left: dict[tuple[str, ...], float],
        per_bot: bool,
    ) -> CounterMetricFamily:
        if per_bot or self._bot is None:
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            for values, count in sorted(counts.items()):
                family.add_metric(list(values), count)
            return family
        sums = dict(left)
        for values, count in counts.items():
            rest = tuple(values[index] for index in self._kept)
            sums[rest] = sums.get(rest, 0.0) + count
        labels = [self.labels[index] for index in self._kept]
        family = CounterMetricFamily(self.name, self.documentation, labels=labels)
        for rest, count in sorted(sums.items()):
            family.add_metric(list(rest), count)
        return family


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0

    def copy(self) -> _Histogram:
        copied = _Histogram(0)
        copied.counts = self.counts.copy()
        copied.total = self.total
        return copied

    def add(self, other: _Histogram) -> None:
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.total += other.total


class Histograms:
    """A histogram by one label (``bot``, or another such as a Bot API method).

    A plain list of bucket counts per label value: cheaper to observe than
    prometheus-client's ``Histogram`` (no lock, no object per bucket), and it can
    be summed over bots when scraped.
    """

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]):
        self.name = name
        self.documentation = documentation
        self.label = label
        self.buckets = tuple(buckets)
        self._les = [repr(float(bound)) for bound in self.buckets] + ["+Inf"]
        self._by: dict[str, _Histogram] = {}
        self._left = _Histogram(len(self.buckets))

    def observe(self, value: str, seconds: float) -> None:
        histogram = self._by.get(value)
        if histogram is None:
            histogram = self._by[value] = _Histogram(len(self.buckets))
        histogram.counts[bisect_left(self.buckets, seconds)] += 1
        histogram.total += seconds

    def forget(self, value: str) -> None:
        """Drop ``value``'s series; its observations stay in the sum."""
        histogram = self._by.pop(value, None)
        if histogram is not None:
            self._left.add(histogram)

    def snapshot(self, per_bot: bool) -> Copying[Callable[[], HistogramMetricFamily]]:
        """Copy the histograms, :data:`~botyard.ops.scrape.SLICE` at a time; the result builds
        their family."""
        by: list[tuple[str, _Histogram]] = []
        for part in in_slices(list(self._by.items())):
            by.extend((value, histogram.copy()) for value, histogram in part)
            yield
        return partial(self._family, by, self._left.copy(), per_bot)

    def _family(
        self, by: list[tuple[str, _Histogram]], left: _Histogram, per_bot: bool
    ) -> HistogramMetricFamily:
        if per_bot or self.label != BOT:
            family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
            for value, histogram in sorted(by, key=itemgetter(0)):
                family.add_metric([value], self._cumulative(histogram), histogram.total)
            return family
        family = HistogramMetricFamily(self.name, self.documentation)
        if by or left.total or any(left.counts):
            summed = _Histogram(len(self.buckets))
            summed.add(left)
            for _, histogram in by:
                summed.add(histogram)
            family.add_metric([], self._cumulative(summed), summed.total)
        return family

    def _cumulative(self, histogram: _Histogram) -> list[tuple[str, float]]:
        running = 0
        buckets = []
        for le, count in zip(self._les, histogram.counts, strict=True):
            running += count
            buckets.append((le, float(running)))
        return buckets


class RunningTotals:
    """The sums of a few counts read by bot at each scrape (a runner's), never going down.

    A bot whose counts are read from another object than at the last scrape
    (its runner restarted, and counts from zero) or that is gone keeps what it
    had counted then in the totals, as does a count that went down; what a
    restarted runner counted between that scrape and its restart is lost. One
    pass over the bots serves every count; safe to call from a worker thread.
    """

    def __init__(self, counts: int) -> None:
        #: By bot: what its counts were read from at the last scrape (a runner's counters), them.
        self._last: dict[str, tuple[object, Sequence[float]]] = {}
        self._kept = [0.0] * counts
        self._lock = threading.Lock()

    def totals(self, by_bot: Mapping[str, tuple[object, Sequence[float]]]) -> list[float]:
        """The totals of the counts in ``by_bot``: by bot, what they were read from, and them."""
        with self._lock:
            kept = self._kept
            for bot, (source_before, before) in self._last.items():
                now = by_bot.get(bot)
                if now is None or now[0] is not source_before:
                    for index, count in enumerate(before):
                        kept[index] += count
                    continue
                for index, (count, count_before) in enumerate(zip(now[1], before, strict=True)):
                    if count < count_before:
                        kept[index] += count_before
            self._last = dict(by_bot)
            columns = list(zip(*(counts for _, counts in by_bot.values()), strict=True))
            if not columns:
                columns = [()] * len(kept)
            return [total + sum(column) for total, column in zip(kept, columns, strict=True)]
