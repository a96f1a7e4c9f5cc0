"""Beanie's migration runner, driven one migration at a time under the lock.

Beanie builds the list (``MigrationNode.build``: the folder's modules sorted by
name, and the current one from ``migrations_log``) and runs each migration
(``run_forward``/``run_backward``: its ``Forward``/``Backward`` class, in a
transaction if asked, then the log entry). botyard adds what Beanie's own CLI
lacks: steps taken one by one so the lock is checked between them and each is
reported, ``status``, and a refusal when the database is at a migration the
folder does not have (Beanie would silently start again from the first).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from beanie.migrations.database import DBHandler
from beanie.migrations.models import MigrationLog
from beanie.migrations.runner import MigrationNode
from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.documents import Document
from botyard.errors import BotyardError
from botyard.migrations_runner.lock import MigrationLock
from botyard.migrations_runner.paths import MigrationsNotFound, find_migrations
from botyard.migrations_runner.transactions import TransactionSupport, transaction_support

logger = logging.getLogger("botyard.migrate")
#: Called after each migration with its file name, the seconds it took, and
#: whether it ran in a transaction.
StepReport = Callable[[str, float, bool], None]


class MigrationError(BotyardError, RuntimeError):
    """The migrations folder and the database disagree, a file is no migration, or one failed."""


@dataclass(frozen=True)
class MigrationState:
    """One migration file and whether the database has it applied."""

    name: str
    applied: bool
    #: When it was last applied (Beanie's log time), if it is applied.
    applied_at: datetime | None = None


class Migrations:
    """The migrations of ``folder`` against ``database``."""

    def __init__(self, database: AsyncDatabase[Document], folder: Path) -> None:
        self.database = database
        self.folder = folder

    async def transaction_support(self) -> TransactionSupport:
        """Whether this server can run migrations in transactions, and why."""
        return transaction_support(await self.database.client.admin.command("hello"))

    async def status(self) -> list[MigrationState]:
        """Every migration in order, applied ones first."""
        current, nodes = await self._build()
        applied = _applied_names(current, nodes)
        times: dict[str, datetime] = {}
        async for entry in MigrationLog.find({"name": {"$in": sorted(applied)}}):
            if entry.name not in times or entry.ts > times[entry.name]:
                times[entry.name] = entry.ts
        return [
            MigrationState(node.name, node.name in applied, times.get(node.name)) for node in nodes
        ]

    async def up(
        self,
        *,
        lock: MigrationLock,
        use_transaction: bool,
        steps: int | None = None,
        on_step: StepReport | None = None,
    ) -> list[str]:
        """Apply up to ``steps`` pending migrations (all without ``steps``); return their names."""
        node, _ = await self._build()
        done: list[str] = []
        while node.next_migration is not None and (steps is None or len(done) < steps):
            lock.check()
            node = node.next_migration
            started = time.monotonic()
            transaction = use_transaction and wants_transaction(node.forward_class)
            await _step(node, node.run_forward, transaction, still="pending")
            done.append(node.name)
            if on_step is not None:
                on_step(node.name, time.monotonic() - started, transaction)
        return done

    async def down(
        self,
        *,
        lock: MigrationLock,
        use_transaction: bool,
        steps: int = 1,
        on_step: StepReport | None = None,
    ) -> list[str]:
        """Roll back the last ``steps`` applied migrations; return their names."""
        node, _ = await self._build()
        done: list[str] = []
        while node.prev_migration is not None and len(done) < steps:
            lock.check()
            started = time.monotonic()
            transaction = use_transaction and wants_transaction(node.backward_class)
            await _step(node, node.run_backward, transaction, still="applied")
            done.append(node.name)
            if on_step is not None:
                on_step(node.name, time.monotonic() - started, transaction)
            node = node.prev_migration
        return done

    async def _build(self) -> tuple[MigrationNode, list[MigrationNode]]:
        """Beanie's list: the current node, and every migration node in order."""
        # DBHandler is where Beanie's runner finds its database; set_db() would
        # open a client of its own, without our options (timeouts, tz_aware).
        DBHandler.client = self.database.client  # type: ignore[attr-defined]
        DBHandler.database = self.database  # type: ignore[attr-defined]
        try:
            current = await MigrationNode.build(self.folder)
        except Exception as error:  # a migration module that does not even import
            raise MigrationError(f"cannot load the migrations in {self.folder}: {error}") from error
        root = current
        while root.prev_migration is not None:
            root = root.prev_migration
        nodes: list[MigrationNode] = []
        node = root.next_migration
        while node is not None:
            if node.forward_class is None and node.backward_class is None:
                raise MigrationError(
                    f"{self.folder / node.name} is not a Beanie migration: "
                    "it defines neither a Forward nor a Backward class"
                )
            nodes.append(node)
            node = node.next_migration
        logged = await MigrationLog.find_one({"is_current": True})
        if logged is not None and logged.name != current.name:
            raise MigrationError(
                f"the database is at migration {logged.name}, which is not in {self.folder}; "
                "use the migrations folder of the botyard version that wrote it "
                "(a renamed or deleted migration cannot be rolled forward or back)"
            )
        return current, nodes


def wants_transaction(migration_class: type | None) -> bool:
    """``False`` when a ``Forward``/``Backward`` class says ``use_transaction = False``.

    MongoDB aborts a transaction 60 s after it started (``transactionLifetimeLimitSeconds``),
    so a migration visiting every record of a large collection must run without
    one, in batches, and be safe to run again after a failure half-way.
    """
    return bool(getattr(migration_class, "use_transaction", True))


async def _step(
    node: MigrationNode, run: Callable[..., Awaitable[None]], use_transaction: bool, still: str
) -> None:
    """Run one of Beanie's steps; a failure names the migration and what is left of it."""
    try:
        await run(allow_index_dropping=False, use_transaction=use_transaction)
    except Exception as error:
        logger.error("migration %s failed", node.name, exc_info=True)
        left = (
            "its transaction was rolled back"
            if use_transaction
            else "it ran without a transaction, so what it did before failing stays; make it "
            "safe to run again"
        )
        raise MigrationError(
            f"migration {node.name} failed ({type(error).__name__}: {error}); {left}, and it "
            f"is still {still}"
        ) from error


def _applied_names(current: MigrationNode, nodes: list[MigrationNode]) -> set[str]:
    names = [node.name for node in nodes]
    if current.name not in names:
        return set()
    return set(names[: names.index(current.name) + 1])


async def pending_migrations(database: AsyncDatabase[Document], registry_path: Path) -> list[str]:
    """The migrations near ``registry_path`` not yet applied to ``database``, in order.

    Empty when there is no migrations folder where ``botyard migrate`` looks for
    one (an installed package without the checkout): nothing can be said then.
    """
    try:
        folder = find_migrations(registry_path)
    except MigrationsNotFound:
        return []
    return [
        state.name for state in await Migrations(database, folder).status() if not state.applied
    ]
