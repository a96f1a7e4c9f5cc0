"""``botyard migrate``: the schema in migrations/, applied, rolled back or listed.

It connects to the registry's storage like ``botyard run`` does: the embedded
store when ``storage.uri`` is empty (only while no ``botyard run`` uses it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cli.database import run_on_database
from botyard.cli.options import RegistryGroup, load_quietly, logging_options, registry_argument
from botyard.database.documents import Document
from botyard.migrations_runner import (
    LockHolder,
    MigrationLock,
    Migrations,
    TransactionSupport,
    find_migrations,
)
from botyard.registry.models import Registry

T = TypeVar("T")


@click.group(cls=RegistryGroup)
@registry_argument
@click.pass_context
def migrate(context: click.Context, registry_path: Path) -> None:
    """Apply, roll back or list REGISTRY's schema migrations (Beanie migrations).

    Migrations run in a transaction when the server has them (a replica set, or
    SecantusDB) and one by one without otherwise; the output says which. A lock
    document makes a second concurrent run wait, then find nothing left to do.
    """
    context.obj = registry_path


_path_option = click.option(
    "--path",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="The migrations folder. Default: migrations/ beside REGISTRY, or one folder up "
    "(/app/migrations for the image's /app/config/botyard.yaml).",
)
_steps_help = "How many migrations to {}."
_transaction_option = click.option(
    "--no-transaction",
    is_flag=True,
    help="Do not use transactions even where the server supports them.",
)
_lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds to wait for another run's lock before giving up.",
)


@migrate.command()
@logging_options()
@click.option("--steps", type=click.IntRange(min=1), help=_steps_help.format("apply; default all"))
@_path_option
@_transaction_option
@_lock_timeout_option
@click.pass_obj
def up(
    registry_path: Path,
    steps: int | None,
    folder: Path | None,
    no_transaction: bool,
    lock_timeout: float,
) -> None:
    """Apply the pending migrations, oldest first."""
    _move(registry_path, folder, "up", steps, no_transaction, lock_timeout)


@migrate.command()
@logging_options()
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help=_steps_help.format("roll back"),
)
@_path_option
@_transaction_option
@_lock_timeout_option
@click.pass_obj
def down(
    registry_path: Path, steps: int, folder: Path | None, no_transaction: bool, lock_timeout: float
) -> None:
    """Roll back the last applied migration(s), newest first."""
    _move(registry_path, folder, "down", steps, no_transaction, lock_timeout)


@migrate.command()
@logging_options()
@_path_option
@click.pass_obj
def status(registry_path: Path, folder: Path | None) -> None:
    """List the migrations, applied and pending, in order."""
    registry, folder = _prepare(registry_path, folder)

    async def report(database: AsyncDatabase[Document]) -> None:
        states = await Migrations(database, folder).status()
        width = max(len(state.name) for state in states)
        for state in states:
            when = f"  {state.applied_at:%Y-%m-%d %H:%M:%S}" if state.applied_at else ""
            label = "applied" if state.applied else "pending"
            click.echo(f"{label:8} {state.name:{width}}{when}".rstrip())
        applied = sum(state.applied for state in states)
        click.echo(f"{applied} applied, {len(states) - applied} pending")

    _run(registry, report)


def _move(
    registry_path: Path,
    explicit: Path | None,
    direction: str,
    steps: int | None,
    no_transaction: bool,
    lock_timeout: float,
) -> None:
    registry, folder = _prepare(registry_path, explicit)

    def waiting(holder: LockHolder) -> None:
        click.echo(f"waiting for the migration lock held by {holder.describe()}")

    support = TransactionSupport(False, "--no-transaction was given")

    def applied(name: str, seconds: float, transaction: bool) -> None:
        verb = "applied" if direction == "up" else "rolled back"
        how = "" if transaction or not support.supported else " (it runs without a transaction)"
        click.echo(f"{verb} {name} in {seconds:.2f}s{how}")

    async def move(database: AsyncDatabase[Document]) -> None:
        nonlocal support
        migrations = Migrations(database, folder)
        if not no_transaction:
            support = await migrations.transaction_support()
        mode = "on" if support.supported else "off"
        click.echo(f"transactions: {mode} ({support.reason})")
        async with MigrationLock(database).held(lock_timeout, waiting) as lock:
            options: dict[str, Any] = {
                "lock": lock,
                "use_transaction": support.supported,
                "on_step": applied,
            }
            if direction == "up":
                done = await migrations.up(steps=steps, **options)
            else:
                done = await migrations.down(steps=steps or 1, **options)
        if direction == "up":
            click.echo(
                f"{len(done)} migration(s) applied; the database is up to date"
                if done
                else "nothing to apply: the database is up to date"
            )
        else:
            click.echo(f"{len(done)} migration(s) rolled back" if done else "nothing to roll back")

    _run(registry, move)


def _prepare(registry_path: Path, folder: Path | None) -> tuple[Registry, Path]:
    registry = load_quietly(registry_path)
    found = find_migrations(registry.path, folder)
    click.echo(f"migrations: {found} (database {registry.storage.database})")
    return registry, found


def _run(registry: Registry, action: Callable[[AsyncDatabase[Document]], Awaitable[T]]) -> T:
    return run_on_database(registry, action, appname="botyard-migrate")
