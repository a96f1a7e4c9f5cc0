"""The README's two commands, from a fresh clone of the repository, as a newcomer runs them.

``./scripts/sandbox`` must bring the example bots up with no token and no database
to set up (it installs everything itself), and ``./scripts/test`` must install
and run the suite; here it runs a subset chosen through ``BOTYARD_TESTS``, so the
suite does not recurse into itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from botyard.database.embedded import free_port

from e2e import REPO, BotyardProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Installing into a new virtual environment dominates; the index is a local mirror or PyPI.
INSTALL_TIMEOUT = 420.0


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("first-run") / "botyard"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(directory)], check=True)
    return directory


def newcomer_env() -> dict[str, str]:
    """The environment of someone who has set nothing up: no tokens, no database."""
    unset = {"MONGODB_URI", "VIRTUAL_ENV", "BOTYARD_TESTS", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.endswith("_TOKEN")}
    return {**env, "BOTYARD_NO_BROWSER": "1"}


def call(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def wait_until_running(base: str, sandbox: BotyardProcess, names: set[str]) -> None:
    deadline = time.monotonic() + INSTALL_TIMEOUT
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        assert sandbox.process is not None
        if sandbox.process.poll() is not None:
            pytest.fail(f"./scripts/sandbox exited {sandbox.process.returncode}:\n{sandbox.output}")
        try:
            status = {bot["name"]: bot["status"] for bot in call(f"{base}/api/bots")["bots"]}
        except OSError:
            status = {}
        if names <= {name for name, state in status.items() if state == "running"}:
            return
        time.sleep(0.5)
    pytest.fail(f"bots not running within {INSTALL_TIMEOUT}s: {status}\n{sandbox.output}")


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_sandbox_command_runs_the_example_bots_from_a_fresh_clone(clone: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with BotyardProcess(
        ["--port", str(port)],
        program=["./scripts/sandbox"],
        env=newcomer_env(),
        inherit_env=False,
        cwd=clone,
    ) as sandbox:
        wait_until_running(base, sandbox, {"registration", "questionnaire", "echo"})
        assert f"open {base}" in sandbox.output
        call(f"{base}/api/bots/echo/users/1001/messages", {"text": "hello from a clone"})
        chat = call(f"{base}/api/bots/echo/users/1001/chat?wait=30")
        assert [m["text"] for m in chat["messages"] if m["from"] == "bot"] == ["hello from a clone"]
        call(f"{base}/api/bots/questionnaire/users/1001/messages", {"text": "/start"})
        chat = call(f"{base}/api/bots/questionnaire/users/1001/chat?wait=30")
        assert chat["messages"][-1]["text"] == "Question 1: What is your favorite color?"
        assert chat["fsm"]["state"] == "Questionnaire:q1"
        sandbox.signal(signal.SIGTERM)
        assert sandbox.wait(60) == 0, sandbox.output
    assert (clone / ".botyard" / "data").is_dir(), "the embedded database keeps its data there"


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_test_command_runs_a_chosen_subset_from_a_fresh_clone(clone: Path) -> None:
    result = subprocess.run(
        ["./scripts/test", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        env={**newcomer_env(), "BOTYARD_TESTS": "tests/cli/test_cli.py -k version"},
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
