"""Run SecantusDB, a MongoDB-wire-protocol server, as a child process.

SecantusDB is GPL software, so botyard never imports it: it is started through
its ``secantusd-py`` command line and spoken to over the wire like any MongoDB.
Used by the test suite (in-memory) and by ``botyard run`` when the registry has
no ``storage.uri`` (on disk, ``--sync-on-commit``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER_COMMAND = "secantusd-py"
INSTALL_HINT = "pip install 'botyard[embedded]'"


class EmbeddedStoreError(RuntimeError):
    """The embedded development database could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _server_executable() -> str:
    beside_python = Path(sys.executable).with_name(SERVER_COMMAND)
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(SERVER_COMMAND)
    if found is None:
        raise EmbeddedStoreError(
            f"the embedded store needs SecantusDB ({SERVER_COMMAND!r} was not found); "
            f"install it with: {INSTALL_HINT}"
        )
    return found


def _port_accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class SecantusServer:
    """One ``secantusd-py`` child process on a loopback port.

    ``storage_path=":memory:"`` gives a throw-away database; a directory keeps
    the data across restarts. ``sync_on_commit`` makes every commit durable, so
    killing the *client* process (or the server) with SIGKILL loses nothing.
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
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedStoreError(
                    f"SecantusDB exited with code {self.process.returncode} while starting "
                    f"on {self.host}:{self.port}"
                    + (f" (see {self.log_path})" if self.log_path else "")
                )
            if _port_accepts(self.host, self.port):
                return self
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
