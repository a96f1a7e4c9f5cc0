"""Where the platform's MongoDB is: the registry's URI, or an embedded development server.

The embedded server keeps everything in ``.botyard/`` beside the registry:
``data/`` (its database files), ``embedded.log``, and ``embedded.pid``, which
records the server's and botyard's process ids and which botyard holds locked
(``flock``) while it runs. The kernel drops the lock when botyard dies, even by
SIGKILL, so a locked file means a live botyard owns the store, and a server
recorded in an unlocked file was left behind by a killed run: it is stopped
before a new one opens the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from botyard.database.embedded import SERVER_COMMAND, EmbeddedStoreError, SecantusServer
from botyard.registry.models import Registry

logger = logging.getLogger("botyard.store")

EMBEDDED_DIR = ".botyard"
PIDFILE = "embedded.pid"
START_TIMEOUT = 60.0
#: SecantusDB takes 2-4 s to stop on SIGTERM.
STALE_STOP_TIMEOUT = 15.0


@contextlib.asynccontextmanager
async def open_store(registry: Registry) -> AsyncIterator[str]:
    """Yield the MongoDB URI to use, running the embedded server when none is configured."""
    if registry.storage.uri:
        yield registry.storage.uri
        return
    home = registry.base_dir / EMBEDDED_DIR
    pidfile = await asyncio.to_thread(_claim, home)
    try:
        server = SecantusServer(
            storage_path=str(home / "data"), sync_on_commit=True, log_path=home / "embedded.log"
        )
        # Spawned on the event loop's thread, which lives as long as botyard, so that
        # the kernel stops the server when botyard is killed (see SecantusServer).
        server.spawn()
        try:
            assert server.process is not None
            await asyncio.to_thread(_record, pidfile, server.process.pid)
            await asyncio.to_thread(server.wait_ready, START_TIMEOUT)
            logger.warning(
                "storage.uri is not set: using an embedded SecantusDB at %s, data in %s. "
                "It is for development only; in production set storage.uri to a MongoDB "
                "replica set, e.g. uri: ${MONGODB_URI} with "
                "MONGODB_URI=mongodb://mongo:27017/?replicaSet=rs0",
                server.uri,
                home / "data",
            )
            yield server.uri
        finally:
            await asyncio.to_thread(server.stop)
    finally:
        await asyncio.to_thread(_release, pidfile)


def _claim(home: Path) -> IO[str]:
    """Lock ``home``'s pidfile for this process, stopping a server a killed run left behind."""
    (home / "data").mkdir(parents=True, exist_ok=True)
    pidfile = open(home / PIDFILE, "a+")  # noqa: SIM115 - held open (locked) until _release
    try:
        fcntl.flock(pidfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_pids(pidfile).get("botyard", "?")
        pidfile.close()
        raise EmbeddedStoreError(
            f"another botyard (pid {owner}) is using the embedded store in {home}; "
            "stop it first, or give this registry its own storage.uri"
        ) from None
    except BaseException:
        pidfile.close()
        raise
    stale = _read_pids(pidfile).get("server")
    if stale is not None and stale.isdigit():
        _stop_stale(int(stale))
    return pidfile


def _read_pids(pidfile: IO[str]) -> dict[str, str]:
    pidfile.seek(0)
    return dict(item.split("=", 1) for item in pidfile.read().split() if "=" in item)


def _record(pidfile: IO[str], server_pid: int) -> None:
    pidfile.seek(0)
    pidfile.truncate()
    pidfile.write(f"server={server_pid} botyard={os.getpid()}\n")
    pidfile.flush()


def _release(pidfile: IO[str]) -> None:
    # Emptied, never deleted: deleting a lock file lets two processes lock two different files.
    pidfile.seek(0)
    pidfile.truncate()
    pidfile.close()


def _stop_stale(pid: int) -> None:
    """Stop the leftover server ``pid``, which still holds the data directory's lock."""
    if not _is_server(pid):  # already gone, or the pid now belongs to another program
        return
    logger.warning("stopping the embedded SecantusDB a killed botyard left running (pid %d)", pid)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + STALE_STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _is_server(pid):
                return
            time.sleep(0.1)
    raise EmbeddedStoreError(f"could not stop the leftover embedded SecantusDB (pid {pid})")


def _is_server(pid: int) -> bool:
    """Whether ``pid`` is a running SecantusDB (a zombie has no command line)."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            command = (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
    else:
        command = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    return SERVER_COMMAND in command
