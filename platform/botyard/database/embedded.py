"""Run SecantusDB, a MongoDB-wire-protocol server, as a child process.

SecantusDB is GPL software, so botyard never imports it: it is started through
its ``secantusd-py`` command line and spoken to over the wire like any MongoDB.
Used by the test suite (in-memory) and by ``botyard run`` when the registry has
no ``storage.uri`` (on disk, ``--sync-on-commit``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from botyard.errors import BotyardError

SERVER_COMMAND = "secantusd-py"
INSTALL_HINT = (
    "pip install 'botyard[embedded]' (in a source checkout: pip install -e '.[embedded]')"
)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class EmbeddedStoreError(BotyardError, RuntimeError):
    """The embedded development database could not be started; the message says what
    failed and how to fix it."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _server_executable() -> str:
    """Path of ``secantusd-py``: beside this Python (its virtual environment), else on PATH."""
    beside_python = Path(sys.executable).with_name(SERVER_COMMAND)
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(SERVER_COMMAND)
    if found is None:
        raise EmbeddedStoreError(
            f"the embedded store needs SecantusDB ({SERVER_COMMAND!r} was not found beside "
            f"{sys.executable} nor on PATH); install it with: {INSTALL_HINT} "
            "-- or set storage.uri to a MongoDB"
        )
    return found


def _port_accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _last_line(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making Linux SIGTERM the child when the thread that forked it dies.

    A botyard killed with SIGKILL cannot stop its server; without this the server
    would live on, holding the data directory's lock. Its data is safe either way
    (``--sync-on-commit``), and SIGTERM lets it close WiredTiger cleanly.
    Elsewhere there is no such call; the next ``botyard run`` stops a leftover server.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


@dataclass
class SecantusServer:
    """One ``secantusd-py`` child process on a loopback port.

    ``storage_path=":memory:"`` gives a throw-away database; a directory keeps
    the data across restarts. ``sync_on_commit`` makes every commit durable, so
    killing the *client* process (or the server) with SIGKILL loses nothing.

    On Linux the server gets SIGTERM when the thread that started it ends (the
    kernel's parent-death signal is per thread): start it from the main thread or
    the event loop's thread, never from a short-lived worker thread.
    """

    storage_path: str = ":memory:"
    host: str = "127.0.0.1"
    port: int = 0
    sync_on_commit: bool = False
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def uri(self) -> str:
        # Retryable writes make SecantusDB keep a write log that slows it badly.
        return f"mongodb://{self.host}:{self.port}/?retryWrites=false"

    def start(self, timeout: float = 30.0) -> SecantusServer:
        """Start the server and wait until it accepts connections."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def spawn(self) -> None:
        """Start the process without waiting for it: a fork and exec, as asyncio's own
        subprocess support does on the event loop's thread."""
        if not self.port:
            self.port = free_port(self.host)
        command = [
            _server_executable(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            self.storage_path,
            "--log-level",
            "WARNING",
        ]
        if self.sync_on_commit:
            command.append("--sync-on-commit")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # Its own session: a terminal's Ctrl-C reaches botyard only, which stops
            # its bots first and the database last.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the spawned server accepts connections; stop it and raise otherwise."""
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                detail = _last_line(self.log_path)
                raise EmbeddedStoreError(
                    f"SecantusDB exited with code {self.process.returncode} while starting "
                    f"on {self.host}:{self.port}"
                    + (f": {detail}" if detail else "")
                    + (f" (log: {self.log_path})" if self.log_path else "")
                )
            if _port_accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedStoreError(f"SecantusDB did not accept connections within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
