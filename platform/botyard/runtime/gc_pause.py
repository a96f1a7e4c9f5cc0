"""Python's cycle collector while thousands of bots start, and while they run.

Starting makes objects that live as long as their bots (about 130 per bot),
and while they pile up, each full collection walks all of them again: 10,000
bots spent 6 of their 24 seconds to start in full collections. So ``botyard
run`` pauses full collections (young ones go on, freeing the start's
short-lived garbage) until every bot polls, serves webhooks or failed.

Twice a full collection runs and the survivors are frozen out of later ones
(:func:`gc.freeze`): once the registry is loaded and before any bot is made
(:func:`collect_and_freeze`: the imports and the registry, most of the heap,
are done with before the first update arrives, instead of pausing it), and once
every bot started (only what starting made since is walked: the runners).

Then collections resume with a young generation of :data:`YOUNG_THRESHOLD`
objects instead of Python's 700: each update allocates a few thousand
container objects, nearly all freed by reference counting, yet at 700 the
collector ran about every other update and took about 14% of botyard's CPU
under load (issue #18's profile); at :data:`YOUNG_THRESHOLD` it runs more than
ten times less often (the README's Performance section has the measurement).
What that keeps in memory is cyclic garbage waiting for the next young
collection: at most that many objects, a few MB.

Only a command owning its process does this: the collector is process-wide.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

__all__ = [
    "FULL_COLLECTIONS_PAUSED",
    "PAUSE_LIMIT",
    "YOUNG_THRESHOLD",
    "collect_and_freeze",
    "pause_full_collections",
    "run_resuming_full_collections",
    "running_thresholds",
]

#: Full collections resume after this many seconds even if some bot is still starting.
PAUSE_LIMIT = 120.0
#: A threshold for the oldest generation that is never reached.
FULL_COLLECTIONS_PAUSED = 2**30
#: Allocations (less deallocations) of container objects between young collections once running.
YOUNG_THRESHOLD = 10_000

Thresholds = tuple[int, int, int]


def pause_full_collections() -> Thresholds:
    """Stop full collections; returns the thresholds to restore."""
    usual: Thresholds = gc.get_threshold()
    gc.set_threshold(usual[0], usual[1], FULL_COLLECTIONS_PAUSED)
    return usual


def collect_and_freeze() -> None:
    """Collect everything, and keep the survivors out of later collections."""
    gc.collect()
    gc.freeze()


def running_thresholds(usual: Thresholds) -> Thresholds:
    """The thresholds once every bot started: ``usual``, with the young generation raised."""
    return (max(usual[0], YOUNG_THRESHOLD), usual[1], usual[2])


async def run_resuming_full_collections(
    main: Coroutine[Any, Any, int], started: asyncio.Event, usual: Thresholds
) -> int:
    """Run ``main``; once ``started`` is set, ``main`` ended, or :data:`PAUSE_LIMIT` passed,
    collect, freeze and resume collections (:func:`running_thresholds`). Returns what
    ``main`` returns."""
    running = asyncio.create_task(main)
    waiting = asyncio.create_task(started.wait())
    try:
        await asyncio.wait(
            {running, waiting}, timeout=PAUSE_LIMIT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
        collect_and_freeze()
        gc.set_threshold(*running_thresholds(usual))
    return await running
