"""Schema migrations: Beanie's runner, with transactions where the server has them,
``status``, and a lock so that concurrent runs never apply a migration twice."""

from botyard.migrations_runner.lock import (
    LOCK_COLLECTION,
    LockHolder,
    LockLost,
    LockTimeout,
    MigrationLock,
)
from botyard.migrations_runner.paths import MigrationsNotFound, find_migrations
from botyard.migrations_runner.runner import (
    MigrationError,
    Migrations,
    MigrationState,
    pending_migrations,
)
from botyard.migrations_runner.transactions import TransactionSupport, transaction_support

__all__ = [
    "LOCK_COLLECTION",
    "LockHolder",
    "LockLost",
    "LockTimeout",
    "MigrationError",
    "MigrationLock",
    "MigrationState",
    "Migrations",
    "MigrationsNotFound",
    "TransactionSupport",
    "find_migrations",
    "pending_migrations",
    "transaction_support",
]
