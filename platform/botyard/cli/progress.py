"""The progress bar of the commands that work through many records (import, purge)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(
    label: str, total: int, *, console: Console, disable: bool
) -> Iterator[Callable[[int], None]]:
    """``label ━━━━ done/total elapsed`` on ``console``, gone when done; yields the function
    that advances it by a count."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=disable,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda count: progress.advance(task, count)
