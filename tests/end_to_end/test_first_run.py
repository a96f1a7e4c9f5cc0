"""The README's two commands, from a fresh clone of the repository, as a newcomer runs them.

The clone gets ``.env`` copied from ``.env.example``, as the README's production
step says, so every token variable is set but empty. ``./scripts/sandbox`` must
bring the example bots up anyway (it installs everything itself, once), the
commands that never call Telegram must run, and ``./scripts/test`` must install
and run the suite; here it runs a subset chosen through ``BOTYARD_TESTS``, so the
suite does not recurse into itself.
"""

from __future__ import annotations

import json
import os
import shutil
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


#: Shaped like a real token: the sandbox must not show it anywhere, nor send it.
REAL_LOOKING_TOKEN = "7012345678:AAFakeFakeFakeFakeFakeFakeFakeFake12"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("first-run") / "botyard"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(directory)], check=True)
    shutil.copy(directory / ".env.example", directory / ".env")
    return directory


@pytest.fixture(scope="module")
def installed(clone: Path) -> subprocess.CompletedProcess[str]:
    """What the scripts do first: make .venv and install botyard with the embedded store."""
    result = subprocess.run(
        ["bash", "-c", ". scripts/lib/venv.sh && ensure_venv embedded"],
        cwd=clone,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


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
def test_sandbox_command_runs_the_example_bots_from_a_fresh_clone(
    clone: Path, installed: subprocess.CompletedProcess[str]
) -> None:
    """Whatever the token variables hold: empty (.env), malformed, or a real token."""
    assert "installing botyard" in installed.stderr
    assert "Deprecat" not in installed.stdout + installed.stderr, "setuptools warns"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**newcomer_env(), "ECHO_TOKEN": "garbage", "QUESTIONNAIRE_TOKEN": REAL_LOOKING_TOKEN}
    with BotyardProcess(
        ["--port", str(port)],
        program=["./scripts/sandbox"],
        env=env,
        inherit_env=False,
        cwd=clone,
        secrets=[REAL_LOOKING_TOKEN],
    ) as sandbox:
        wait_until_running(base, sandbox, {"registration", "questionnaire", "echo"})
        assert f"open {base}" in sandbox.output
        assert "installing botyard" not in sandbox.output, "pyproject.toml is unchanged: no pip"
        pages = json.dumps(call(f"{base}/api/bots"))
        assert REAL_LOOKING_TOKEN.partition(":")[0] not in pages, "the file's token is not used"
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


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_commands_that_never_call_telegram_run_with_empty_tokens(
    clone: Path, installed: subprocess.CompletedProcess[str], mongo_uri: str
) -> None:
    """The test server stands in for the embedded store, which takes long to start here."""
    env = {**newcomer_env(), "MONGODB_URI": mongo_uri}

    def botyard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [".venv/bin/botyard", *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    checked = botyard("check", "botyard.yaml")
    assert checked.returncode == 0, checked.stderr
    assert "OK: 3 bot(s), 3 enabled" in checked.stdout
    assert "environment variable ECHO_TOKEN is empty" in checked.stderr
    for args, shown in [
        (["states", "botyard.yaml", "stats"], "questionnaire"),
        (["migrate", "botyard.yaml", "status"], "20261125000000_fsm_records.py"),
        (["cleanup", "botyard.yaml", "--dry-run"], "dry run: 0 stale record(s)"),
        (["states", "botyard.yaml", "purge", "--bot", "echo", "--yes"], "no records match"),
    ]:
        result = botyard(*args)
        assert result.returncode == 0, f"botyard {' '.join(args)}: {result.stderr}"
        assert shown in result.stdout
        assert "token" not in result.stdout + result.stderr
    refused = botyard("run", "botyard.yaml")
    assert refused.returncode == 1
    assert "environment variable REGISTRATION_TOKEN is empty" in refused.stderr
    assert "malformed" not in refused.stderr


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_test_command_runs_a_chosen_subset_from_a_fresh_clone(clone: Path) -> None:
    result = subprocess.run(
        ["./scripts/test", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        env={**newcomer_env(), "BOTYARD_TESTS": "tests/cli/test_cli.py::test_version"},
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
