"""``botyard cleanup`` and ``botyard states``: the FSM records, seen and pruned by hand.

They connect to the registry's storage like ``botyard run`` does (the embedded
store when ``storage.uri`` is empty) and query through the indexes the sweep
uses; no command loads records to count them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import click
from pymongo.asynchronous.database import AsyncDatabase
from rich.console import Console
from rich.table import Table

from botyard.cleanup.sweep import BotSweep, Sweeper
from botyard.cli.database import run_on_database
from botyard.cli.options import (
    RegistryGroup,
    command_clock,
    load_quietly,
    logging_options,
    registry_argument,
)
from botyard.cli.progress import progress_bar
from botyard.database.documents import Document
from botyard.errors import BotyardError
from botyard.registry.durations import format_duration, parse_duration
from botyard.registry.models import BotConfig, Registry
from botyard.storage import prepare_database
from botyard.storage.records import FSMRecords

T = TypeVar("T")

NO_STATE = "(no state)"


# --- cleanup -----------------------------------------------------------------------


@click.command()
@registry_argument
@logging_options()
@click.option("--bot", "bot_name", metavar="NAME", help="Sweep only this bot.")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; delete nothing.")
def cleanup(registry_path: Path, bot_name: str | None, dry_run: bool) -> None:
    """Sweep the stale FSM state of REGISTRY's bots now, and print per-bot counts.

    The same sweep `botyard run` runs on cleanup.schedule: records idle longer
    than their bot's state_ttl are removed (after its on_state_expired hook,
    which gets a Bot made from the registry's token), and expiry times are
    brought in line with the current state_ttl. Exits 1 if any bot's sweep failed.
    """
    registry = load_quietly(registry_path)
    bots = [registry.bot(bot_name)] if bot_name else list(registry.bots)
    clock = command_clock()

    async def sweep(database: AsyncDatabase[Document]) -> list[BotSweep]:
        sweeper = Sweeper.for_registry(database, registry, clock=clock)
        return await sweeper.run(bots, dry_run=dry_run)

    results = _run(registry, sweep)
    console = _console()
    console.print(_sweep_table(results, dry_run))
    removed = sum(result.removed for result in results)
    if dry_run:
        console.print(f"dry run: {removed} stale record(s) would be removed; nothing was deleted")
    else:
        seconds = sum(result.seconds for result in results)
        console.print(f"removed {removed} stale record(s) in {seconds:.2f}s")
    failed = [result.bot for result in results if result.error]
    if failed:
        raise BotyardError(f"the sweep failed for {', '.join(failed)} (see above)")


def _sweep_table(results: list[BotSweep], dry_run: bool) -> Table:
    title = "cleanup (dry run: nothing deleted)" if dry_run else "cleanup"
    table = Table(title=title, title_justify="left")
    table.add_column("bot")
    table.add_column("state_ttl")
    table.add_column("stale" if dry_run else "removed", justify="right")
    table.add_column("to realign" if dry_run else "realigned", justify="right")
    if not dry_run:
        table.add_column("hook errors", justify="right")
        table.add_column("seconds", justify="right")
    table.add_column("problem")
    for result in results:
        row = [result.bot, format_duration(result.state_ttl), str(result.removed)]
        row.append(str(result.realigned))
        if not dry_run:
            row += [str(result.hook_errors), f"{result.seconds:.2f}"]
        row.append(result.error or "")
        table.add_row(*row)
    return table


# --- states ------------------------------------------------------------------------


@click.group(cls=RegistryGroup)
@registry_argument
@click.pass_context
def states(context: click.Context, registry_path: Path) -> None:
    """Inspect or delete the FSM records of REGISTRY's bots."""
    context.obj = registry_path


@states.command()
@logging_options()
@click.pass_obj
def stats(registry_path: Path) -> None:
    """Per bot: records, records per state, expired but not yet removed, oldest activity.

    "expired" counts records idle longer than the bot's state_ttl, which the
    next cleanup removes.
    """
    registry = load_quietly(registry_path)
    now = command_clock()()

    async def gather(database: AsyncDatabase[Document]) -> list[_BotStats]:
        return await _collect_stats(database, registry.bots, now)

    table = Table(title=f"FSM state in {registry.storage.database}", title_justify="left")
    table.add_column("bot")
    table.add_column("state_ttl")
    table.add_column("records", justify="right")
    table.add_column("expired", justify="right")
    table.add_column("oldest activity")
    table.add_column("states")
    for entry in _run(registry, gather):
        table.add_row(
            entry.bot.name,
            format_duration(entry.bot.state_ttl),
            str(entry.records),
            str(entry.expired),
            f"{entry.oldest:%Y-%m-%d %H:%M:%S} UTC" if entry.oldest else "-",
            ", ".join(f"{state} {count}" for state, count in entry.per_state) or "-",
        )
    _console().print(table)


class _BotStats:
    def __init__(self, bot: BotConfig) -> None:
        self.bot = bot
        self.records = 0
        self.expired = 0
        self.oldest: datetime | None = None
        self.per_state: list[tuple[str, int]] = []


async def _collect_stats(
    database: AsyncDatabase[Document], bots: tuple[BotConfig, ...], now: datetime
) -> list[_BotStats]:
    """Counted from the indexes, no record read: one count per bot and state for all
    bots, then per bot with records its expired ones and its oldest activity."""
    records = FSMRecords(database)
    by_namespace = {bot.namespace: _BotStats(bot) for bot in bots}
    for (namespace, state), count in (await records.count_per_state(by_namespace)).items():
        entry = by_namespace[namespace]
        entry.records += count
        entry.per_state.append((state or NO_STATE, count))
    for entry in by_namespace.values():
        # The most common state first, then by name.
        entry.per_state.sort(key=lambda item: (-item[1], item[0]))
        if entry.records:
            entry.expired = await records.count_stale(entry.bot.namespace, entry.bot.state_ttl, now)
            entry.oldest = await records.oldest_activity(entry.bot.namespace)
    return list(by_namespace.values())


@states.command()
@logging_options()
@click.option("--bot", "bot_name", metavar="NAME", required=True, help="Whose records.")
@click.option("--state", metavar="STATE", help="Only records in this FSM state.")
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=lambda _context, _param, value: _duration(value),
    help="Only records idle for longer than this (30s, 15m, 12h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Count the selected records; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(
    registry_path: Path,
    bot_name: str,
    state: str | None,
    older_than: timedelta | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete the selected FSM records of one bot, after confirmation.

    Without --yes the command asks first, and refuses when there is no terminal
    to ask on. The bot's on_state_expired hook is not called: a purge is not an
    expiry. A bot that keeps running sees its users start over.
    """
    registry = load_quietly(registry_path)
    bot = registry.bot(bot_name)
    now = command_clock()()
    idle_before = None if older_than is None else now - older_than
    selection = _describe_selection(bot, state, older_than)
    console = _console()

    async def purge_selected(database: AsyncDatabase[Document]) -> None:
        records = FSMRecords(database)
        count = await records.count_selected(bot.namespace, state=state, idle_before=idle_before)
        if count == 0:
            console.print(f"no records match: {selection}")
            return
        if dry_run:
            console.print(f"dry run: would delete {count} record(s): {selection}")
            return
        if not yes:
            await _confirm(f"Delete {count} record(s): {selection}?")
        with progress_bar(
            "deleting", count, console=console, disable=count <= registry.cleanup.batch_size
        ) as advance:
            deleted = await records.delete_selected(
                bot.namespace,
                registry.cleanup.batch_size,
                state=state,
                idle_before=idle_before,
                on_batch=advance,
            )
        console.print(f"deleted {deleted} record(s): {selection}")

    _run(registry, purge_selected)


def _describe_selection(bot: BotConfig, state: str | None, older_than: timedelta | None) -> str:
    parts = [f"bot {bot.name}"]
    if state is not None:
        parts.append(f"state {state}")
    if older_than is not None:
        parts.append(f"idle for more than {format_duration(older_than)}")
    return ", ".join(parts)


async def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise BotyardError(
            "purge asks for confirmation, and stdin is not a terminal; "
            "pass --yes to delete without asking"
        )
    # click.confirm blocks on the terminal: keep it off the event loop.
    await asyncio.to_thread(click.confirm, question, abort=True)


def _duration(value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value, allow_never=False)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


# --- shared ------------------------------------------------------------------------


def _run(registry: Registry, action: Callable[[AsyncDatabase[Document]], Awaitable[T]]) -> T:
    """Run ``action`` on the registry's database, with the indexes these commands rely on."""

    async def prepared(database: AsyncDatabase[Document]) -> T:
        await prepare_database(database)
        return await action(database)

    return run_on_database(registry, prepared, appname="botyard-cli")


def _console() -> Console:
    """Rich output on stdout; not a terminal (a pipe, a test) gets wide, plain lines."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200, color_system=None)
    return console
