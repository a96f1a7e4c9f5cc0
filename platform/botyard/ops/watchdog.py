"""The event-loop watchdog: who blocked the loop every bot shares, and for how long.

All bots run on one event loop, so one handler making a synchronous call (a blocking
database driver, ``time.sleep``, heavy CPU work) stalls every bot in the process. The
loop itself beats: every :data:`BEAT_INTERVAL` a timer callback notes when the next beat
is due, and how late it ran, which is the loop lag. A thread of its own reads that time
once per beat (waking the loop never: no cross-thread ping). An idle loop does not beat:
a beat that finds the loop woke for nothing else since the beat before, and nothing else
to run, stops the beating, and the thread waits without a timeout; the loop's next wake
from its selector (a poll's answer, a timer, a signal) starts both again before any
callback of that pass runs, so a callback that blocks right after an idle spell is
caught as any other. Lag is therefore observed while the loop has work: an idle
process costs no wakeup of its own. While the beat is overdue, it samples the loop thread's Python
stack (``sys._current_frames``) every :data:`SAMPLE_INTERVAL`. One callback holding the
loop shows the same frame in every sample (the aiogram handler's, when in a handler); a
loop that is merely busy with many short callbacks shows different ones, and is only
lag. When one frame held the loop for over :data:`BLOCK_THRESHOLD`, the watchdog finds
the bot (the runner handling the update) and the handler, and once the loop is free logs
one warning naming both, with the time and the line, and counts it in
``botyard_event_loop_blocked_total``.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from aiogram.dispatcher.event.handler import CallableObject

from botyard.ops.metrics import PlatformMetrics
from botyard.runtime.runner import handling_runner

__all__ = ["BLOCK_THRESHOLD", "Culprit", "LoopWatchdog", "find_culprit"]

logger = logging.getLogger("botyard.watchdog")

BLOCK_THRESHOLD = 0.1
BEAT_INTERVAL = 0.1
SAMPLE_INTERVAL = 0.01

_CALL_CODE = CallableObject.call.__code__
_RUN_CODE = asyncio.Handle._run.__code__


@dataclass(frozen=True)
class Culprit:
    """What the loop thread was running: the bot and handler when inside one."""

    bot: str
    handler: str
    where: str

    def describe(self) -> str:
        if not self.bot:
            return f"outside any bot's handler, at {self.where}"
        handler = self.handler or "(not in a handler: a filter or middleware)"
        return f"bot={self.bot} handler={handler} at {self.where}"


def find_culprit(frame: FrameType | None) -> Culprit:
    """Read the bot and handler from a stack, innermost ``frame`` first.

    ``where`` is the handler's current line, followed by the innermost Python
    frame when the handler is blocked inside a library (a synchronous driver).
    """
    innermost = _location(frame) if frame is not None else "(no Python frame)"
    where = innermost
    bot = handler = ""
    child: FrameType | None = None
    while frame is not None:
        if frame.f_code is _CALL_CODE and child is not None and not handler:
            handler = f"{child.f_globals.get('__name__', '?')}.{child.f_code.co_qualname}"
            if _location(child) != innermost:
                where = f"{_location(child)}, blocked in {innermost}"
        elif (runner := handling_runner(frame)) is not None:
            bot = runner.name
            break
        child, frame = frame, frame.f_back
    return Culprit(bot, handler, where)


def _anchor(frame: FrameType) -> FrameType:
    """The frame that stays on the stack while one callback holds the loop.

    The handler's frame when inside an aiogram handler (a CPU-bound handler
    changes inner frames all the time), else the running callback's outermost
    frame, else (the loop is in no callback) the innermost one.
    """
    innermost = frame
    child: FrameType | None = None
    current: FrameType | None = frame
    while current is not None:
        if child is not None and current.f_code in (_CALL_CODE, _RUN_CODE):
            return child
        child, current = current, current.f_back
    return innermost


def _location(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"


class _WakeSensingSelector:
    """The loop's selector, counting the loop's passes and calling ``on_wake`` after a
    select that the watchdog slept through."""

    def __init__(self, selector: selectors.BaseSelector, watchdog: LoopWatchdog) -> None:
        self.wrapped = selector
        self._select = selector.select
        self._watchdog = watchdog
        # What the loop calls per connection, bound here rather than looked up each time.
        self.register = selector.register
        self.unregister = selector.unregister
        self.modify = selector.modify
        self.get_key = selector.get_key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._select(timeout)
        watchdog = self._watchdog
        watchdog.passes += 1
        if watchdog.dormant:
            watchdog.wake()
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class LoopWatchdog:
    """Measures the lag of ``loop`` and names whoever blocks it for over the threshold."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        metrics: PlatformMetrics,
        threshold: float = BLOCK_THRESHOLD,
    ) -> None:
        self._loop = loop
        self._metrics = metrics
        self._threshold = threshold
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_due = time.monotonic()
        self._next_beat: asyncio.TimerHandle | None = None
        #: The loop's passes (selector wakes) so far, counted by the wrapped selector.
        self.passes = 0
        self._passes_at_beat = 0
        #: The loop is idle: no beat is scheduled and the thread waits for :meth:`wake`.
        self.dormant = False
        self._awake = threading.Event()
        self._sensing: _WakeSensingSelector | None = None

    def start(self) -> None:
        """Start watching; call it on the loop's own thread."""
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        selector = getattr(self._loop, "_selector", None)
        if isinstance(selector, selectors.BaseSelector):  # an asyncio selector loop
            self._sensing = _WakeSensingSelector(selector, self)
            self._loop._selector = self._sensing  # type: ignore[attr-defined]
        self._schedule_beat()
        self._thread = threading.Thread(target=self._watch, name="botyard-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; call it on the loop's own thread."""
        self._stop.set()
        self._awake.set()
        if self._sensing is not None:
            self._loop._selector = self._sensing.wrapped  # type: ignore[attr-defined]
            self._sensing = None
        if self._next_beat is not None:
            self._next_beat.cancel()
            self._next_beat = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def wake(self) -> None:
        """The loop woke after an idle spell: beat again (on the loop's thread)."""
        self.dormant = False
        self._schedule_beat()
        self._awake.set()

    def _schedule_beat(self) -> None:
        self._passes_at_beat = self.passes
        self._beat_due = time.monotonic() + BEAT_INTERVAL
        self._next_beat = self._loop.call_later(BEAT_INTERVAL, self._beat)

    def _beat(self) -> None:
        self._metrics.loop_lag.observe(max(0.0, time.monotonic() - self._beat_due))
        if self._sensing is not None and self._idle():
            self._next_beat = None
            self._awake.clear()
            self.dormant = True  # the selector's next wake calls wake()
            return
        self._schedule_beat()

    def _idle(self) -> bool:
        """Only this beat's pass since the last beat, and nothing else left to run in it."""
        woke_for_beat_only = self.passes - self._passes_at_beat <= 1
        return woke_for_beat_only and not getattr(self._loop, "_ready", True)

    def _watch(self) -> None:
        due = self._beat_due
        # Look just after each beat is due; sleep longer while it is not.
        while not self._stop.wait(max(SAMPLE_INTERVAL, due + SAMPLE_INTERVAL - time.monotonic())):
            if self._loop.is_closed():
                return
            if self.dormant:  # no beat to watch: sleep until the loop wakes, or stop()
                self._awake.wait()
                due = self._beat_due
                continue
            due = self._beat_due
            # A loop that is not running (between run_until_complete calls) is idle, not blocked.
            if time.monotonic() < due + SAMPLE_INTERVAL or not self._loop.is_running():
                continue
            held = self._longest_hold(due)
            if held is None:
                return
            seconds, culprit = held
            if culprit is not None and seconds > self._threshold:
                self._metrics.loop_blocked.inc(culprit.bot, culprit.handler)
                logger.warning(
                    "event loop blocked for %.2fs by %s; every bot in this process waited",
                    seconds,
                    culprit.describe(),
                )
            due = self._beat_due

    def _longest_hold(self, due: float) -> tuple[float, Culprit | None] | None:
        """Sample until the beat due at ``due`` ran: the longest time one frame held the
        loop, and whose.

        ``None`` if the watchdog was stopped meanwhile. A frame seen from the
        first sample on is counted from when the beat was due: the loop was
        busy since then, though not necessarily since the beat before, so a hold
        is undercounted by at most :data:`BEAT_INTERVAL`, never overcounted.
        """
        anchor: FrameType | None = None
        since = due
        culprit: Culprit | None = None
        longest: tuple[float, Culprit | None] = (0.0, None)
        first = True
        while True:
            frame = sys._current_frames().get(self._loop_thread)
            current = _anchor(frame) if frame is not None else None
            if first or current is not anchor:
                since = due if first else time.monotonic()
                anchor = current
                culprit = find_culprit(frame) if current is not None else None
                first = False
            del frame, current
            stopped = self._stop.wait(SAMPLE_INTERVAL)
            held = time.monotonic() - since
            if held > longest[0]:
                longest = (held, culprit)
            if stopped:
                return None
            if self._beat_due != due or self.dormant:  # the beat ran
                return longest
