"""The event-loop watchdog: who blocked the loop every bot shares, and for how long.

All bots run on one event loop, so one handler making a synchronous call (a blocking
database driver, ``time.sleep``, heavy CPU work) stalls every bot in the process. The
watchdog wraps the loop's selector, which notes when each pass of the loop starts (the
selector returned), when the loop waits in its selector again, and until when it will
wait at most (its next timer). A thread of its own reads those notes and never wakes the
loop. While the loop has work, the thread looks every :data:`CHECK_INTERVAL` and
observes how long the loop has been in its current pass (the loop lag). While the loop
waits in its selector, the thread sleeps until just after the loop's next timer is due,
or until the selector returns events (a poll's answer, a signal, a call from another
thread), which wake the thread before any callback of that pass runs. So a loop woken
only by timers (PyMongo's background tasks tick every 0.5 s) costs one wake of the thread
per tick and none of the loop, and a loop with nothing scheduled costs nothing.

Once a pass has lasted :data:`CHECK_INTERVAL`, the thread samples the loop thread's
Python stack (``sys._current_frames``) every :data:`SAMPLE_INTERVAL` until the pass
ends. One callback holding the loop shows the same frame in every sample (the aiogram
handler's, when in a handler); a pass that merely runs many short callbacks shows
different ones, and is only lag. When one frame held the loop for over
:data:`BLOCK_THRESHOLD`, the watchdog finds the bot (the runner handling the update) and
the handler, and once the loop is free logs one warning naming both, with the time and
the line, and counts it in ``botyard_event_loop_blocked_total``.
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
CHECK_INTERVAL = 0.1
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
    """The loop's selector, noting each pass of the loop for the watchdog's thread and
    waking that thread when a select it slept through returned events."""

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
        watchdog = self._watchdog
        if timeout is None:
            watchdog.wakes_by_itself = None
        else:  # a timer is due then (asyncio computed the timeout from it), or now
            watchdog.wakes_by_itself = time.monotonic() + timeout if timeout else 0.0
        watchdog.selecting = True
        events = self._select(timeout)
        # Written before ``selecting``: the thread reads ``selecting`` first.
        watchdog.pass_started = time.monotonic()
        watchdog.passes += 1
        watchdog.selecting = False
        if events and watchdog.dormant:
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
        #: The loop's passes (selector wakes) so far, counted by the wrapped selector.
        self.passes = 0
        #: When the loop's current (or last) pass started.
        self.pass_started = time.monotonic()
        #: The loop waits in its selector.
        self.selecting = False
        #: Until when at most (monotonic time; ``None``: until an event comes).
        self.wakes_by_itself: float | None = 0.0
        #: The thread sleeps until the loop's selector returns (see :meth:`wake`).
        self.dormant = False
        self._awake = threading.Event()
        self._sensing: _WakeSensingSelector | None = None

    def start(self) -> None:
        """Start watching; call it on the loop's own thread.

        A loop without a selector to wrap (not an asyncio selector loop) is not
        watched: a warning says so.
        """
        selector = getattr(self._loop, "_selector", None)
        if not isinstance(selector, selectors.BaseSelector):
            logger.warning(
                "event-loop watchdog off: %s has no selector to watch; a blocked loop "
                "will not be reported",
                type(self._loop).__name__,
            )
            return
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self.pass_started = time.monotonic()
        self._sensing = _WakeSensingSelector(selector, self)
        self._loop._selector = self._sensing  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._watch, name="botyard-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; call it on the loop's own thread."""
        self._stop.set()
        self._awake.set()
        if self._sensing is not None:
            self._loop._selector = self._sensing.wrapped  # type: ignore[attr-defined]
            self._sensing = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def wake(self) -> None:
        """The loop's selector returned events while the thread slept (on the loop's thread)."""
        self.dormant = False
        self._awake.set()

    def _watch(self) -> None:
        while not self._stop.is_set() and not self._loop.is_closed():
            if self.selecting:
                self._metrics.loop_lag.observe(0.0)
                self._sleep_until_the_loop_wakes()
                continue
            started, passes = self.pass_started, self.passes
            now = time.monotonic()
            # A loop that is not running (between run_until_complete calls) is idle, not blocked.
            if not self._loop.is_running():
                self._stop.wait(CHECK_INTERVAL)
                continue
            self._metrics.loop_lag.observe(now - started)
            if now - started < CHECK_INTERVAL:
                self._stop.wait(started + CHECK_INTERVAL + SAMPLE_INTERVAL - now)
                continue
            held = self._longest_hold(passes, started)
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

    def _sleep_until_the_loop_wakes(self) -> None:
        """Sleep until just after the loop's next timer is due, or until its selector
        returns events (:meth:`wake`), or :meth:`stop`."""
        self._awake.clear()
        self.dormant = True
        # Read after writing ``dormant``, while the selector writes ``selecting`` before
        # reading ``dormant``: either the loop is still waiting, or it saw ``dormant``.
        # stop() sets ``_stop`` before ``_awake``, which the clear() above may have undone.
        if not self.selecting or self._stop.is_set():
            self.dormant = False
            return
        wakes = self.wakes_by_itself
        if wakes is None:
            self._awake.wait()
        else:
            now = time.monotonic()
            self._awake.wait(max(wakes, now) + CHECK_INTERVAL + SAMPLE_INTERVAL - now)
        self.dormant = False

    def _longest_hold(self, passes: int, started: float) -> tuple[float, Culprit | None] | None:
        """Sample until the loop's pass number ``passes``, begun at ``started``, ended:
        the longest time one frame held the loop, and whose.

        ``None`` if the watchdog was stopped meanwhile. The frame of the first
        sample is counted from the start of the pass, so a hold is overcounted by
        what that pass ran before it, and by at most :data:`SAMPLE_INTERVAL` at
        its end.
        """
        anchor: FrameType | None = None
        since = started
        culprit: Culprit | None = None
        longest: tuple[float, Culprit | None] = (0.0, None)
        first = True
        while True:
            frame = sys._current_frames().get(self._loop_thread)
            if self.passes != passes or self.selecting:  # the pass ended: not its frame
                return longest
            current = _anchor(frame) if frame is not None else None
            if first or current is not anchor:
                since = started if first else time.monotonic()
                anchor = current
                culprit = find_culprit(frame) if current is not None else None
                first = False
            del frame, current
            if self._stop.wait(SAMPLE_INTERVAL):
                return None
            held = time.monotonic() - since
            if held > longest[0]:
                longest = (held, culprit)
