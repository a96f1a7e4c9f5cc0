"""Python's cycle collector while thousands of bots start.

Starting makes objects that live as long as their bots (about 130 per bot),
and while they pile up, each full collection walks all of them again: 10,000
bots spent 6 of their 24 seconds to start in full collections. So ``botyard
run`` pauses full collections (young ones go on, freeing the start's
short-lived garbage) until every bot polls, serves webhooks or failed; then
one full collection runs, the survivors are frozen out of later ones
(:func:`gc.freeze`), and the usual thresholds return.

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
    "pause_full_collections",
    "run_resuming_full_collections",
]

#: Full collections resume after this many seconds even if some bot is still starting.
PAUSE_LIMIT = 120.0
#: A threshold for the oldest generation that is never reached.
FULL_COLLECTIONS_PAUSED = 2**30

Thresholds = tuple[int, int, int]


def pause_full_collections() -> Thresholds:
    """Stop full collections; returns the thresholds to restore."""
    usual: Thresholds = gc.get_threshold()
    gc.set_threshold(usual[0], usual[1], FULL_COLLECTIONS_PAUSED)
    return usual


async def run_resuming_full_collections(
    main: Coroutine[Any, Any, int], started: asyncio.Event, usual: Thresholds
) -> int:
    """Run ``main``; once ``started`` is set, ``main`` ended, or :data:`PAUSE_LIMIT` passed,
    collect, freeze and resume full collections. Returns what ``main`` returns."""
    running = asyncio.create_task(main)
    waiting = asyncio.create_task(started.wait())
    try:
        await asyncio.wait(
            {running, waiting}, timeout=PAUSE_LIMIT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*usual)
    return await running
