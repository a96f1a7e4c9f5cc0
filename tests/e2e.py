"""Running ``botyard run`` as a real subprocess against the emulator and the database.

``BotyardProcess`` starts the command line exactly as an operator would, keeps
its log, and on exit checks that no token the test knows of ever appeared in it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOTYARD = [sys.executable, "-m", "botyard"]


def copy_example_bots(directory: Path) -> None:
    """Put the repository's example bots beside a test registry."""
    shutil.copytree(REPO / "bots", directory / "bots", ignore=shutil.ignore_patterns("__pycache__"))


class BotyardProcess:
    """One ``botyard`` subprocess, with its combined output collected in memory."""

    def __init__(
        self,
        args: Iterable[str],
        *,
        env: dict[str, str],
        cwd: Path,
        secrets: Iterable[str] = (),
        program: Iterable[str] = BOTYARD,
        inherit_env: bool = True,
    ) -> None:
        self.args = [*program, *args]
        inherited = os.environ if inherit_env else {}
        self.env = {**inherited, **env, "PYTHONUNBUFFERED": "1"}
        self.cwd = cwd
        self.secrets = set(secrets)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> BotyardProcess:
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()
        return self

    def _collect(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for_log(self, pattern: str, *, timeout: float = 30.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) matched ``count`` lines; return the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [line for line in self.output.splitlines() if regex.search(line)]
            if len(matches) >= count:
                return matches[count - 1]
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no log line matching {pattern!r} (x{count}) within {timeout}s; "
            f"exit code {self.process.poll() if self.process else None}; output:\n{self.output}"
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code of a graceful shutdown."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"botyard did not exit within {timeout}s of SIGTERM; output:\n{self.output}"
            ) from None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def assert_no_secrets(self) -> None:
        output = self.output
        leaked = [secret for secret in self.secrets if secret and secret in output]
        assert not leaked, f"{len(leaked)} token(s) appear in botyard's output"

    def __enter__(self) -> BotyardProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.assert_no_secrets()
