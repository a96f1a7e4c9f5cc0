"""Where the platform's MongoDB is: the registry's URI, or an embedded development server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from botyard.config import Registry
from botyard.embedded import SecantusServer

logger = logging.getLogger("botyard.store")

EMBEDDED_DIR = ".botyard"


@contextlib.asynccontextmanager
async def open_store(registry: Registry) -> AsyncIterator[str]:
    """Yield the MongoDB URI to use, starting the embedded server when none is configured."""
    if registry.storage.uri:
        yield registry.storage.uri
        return
    home = registry.base_dir / EMBEDDED_DIR
    server = await asyncio.to_thread(start_embedded, home)
    logger.warning(
        "storage.uri is not set: using the embedded SecantusDB at %s (data in %s). "
        "It is for development only; for production set storage.uri to a MongoDB "
        "replica set, e.g. uri: ${MONGODB_URI}",
        server.uri,
        home / "data",
    )
    try:
        yield server.uri
    finally:
        await asyncio.to_thread(server.stop)
        (home / "embedded.pid").unlink(missing_ok=True)


def start_embedded(home: Path) -> SecantusServer:
    """Start SecantusDB on disk under ``home``, first stopping one a killed run left behind."""
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    pidfile = home / "embedded.pid"
    _stop_stale(pidfile)
    server = SecantusServer(
        storage_path=str(data), sync_on_commit=True, log_path=home / "embedded.log"
    ).start(timeout=60)
    assert server.process is not None
    pidfile.write_text(f"{server.process.pid}\n")
    return server


def _stop_stale(pidfile: Path) -> None:
    """A server whose botyard was SIGKILLed still holds the data lock: stop it."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not _is_secantus(pid):
        pidfile.unlink(missing_ok=True)
        return
    logger.warning("stopping the embedded store a previous run left behind (pid %d)", pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    return True


def _is_secantus(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return _alive(pid)
    return b"secantus" in command and _alive(pid)
