"""Where the migrations are: ``--path``, or a ``migrations/`` folder near the registry.

In a source checkout the registry (``botyard.yaml``, or ``deploy/botyard.yaml``)
has ``migrations/`` beside it or one folder up. In the image the registry is
mounted at ``/app/config/botyard.yaml`` and the Dockerfile copies the folder to
``/app/migrations``: one folder up again. No other place is searched, so an
unrelated ``migrations/`` folder higher up is never run by accident.
"""

from __future__ import annotations

from pathlib import Path

from botyard.errors import BotyardError

FOLDER_NAME = "migrations"


class MigrationsNotFound(BotyardError, ValueError):
    """No usable migrations folder; the message says where it was looked for."""


def migration_files(folder: Path) -> list[Path]:
    """The migration modules of ``folder`` in the order Beanie runs them (by file name)."""
    return sorted(folder.glob("[!_]*.py"), key=lambda path: path.name)


def find_migrations(registry_path: Path, explicit: Path | None = None) -> Path:
    """The migrations folder to use: ``explicit``, or the first one near the registry."""
    if explicit is not None:
        candidates = [explicit]
    else:
        base = registry_path.resolve().parent
        candidates = [base / FOLDER_NAME, base.parent / FOLDER_NAME]
    for folder in candidates:
        if folder.is_dir():
            if not migration_files(folder):
                raise MigrationsNotFound(f"{folder} holds no migrations (no *.py files)")
            return folder.resolve()
    if explicit is not None:
        raise MigrationsNotFound(f"--path {explicit}: no such folder")
    looked = " or ".join(str(folder) for folder in candidates)
    raise MigrationsNotFound(
        f"no migrations folder at {looked}; pass --path to the botyard checkout's "
        "migrations/ folder (/app/migrations in the image)"
    )
