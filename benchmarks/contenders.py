"""The contenders, each started as its own process by :meth:`World.launch`."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import Contender, Launch, python


@dataclass(frozen=True)
class Botyard:
    """``botyard run`` on a generated registry; tokens in a ``.env`` beside it."""

    name: str = "botyard"
    #: Registry sections written before ``bots:`` (``ops:``, ``metrics:``...).
    sections: str = ""

    def prepare(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        entries = []
        secrets = []
        for index, token in enumerate(launch.tokens):
            variable = f"BOT{index}_TOKEN"
            secrets.append(f"{variable}={token}\n")
            entries.append(
                f"  - name: bot{index}\n"
                f"    token: ${{{variable}}}\n"
                f"    routers: [{launch.router}]\n"
                f"    api_server: {launch.api_server}\n"
            )
        (launch.workdir / ".env").write_text("".join(secrets))
        registry = launch.workdir / "botyard.yaml"
        registry.write_text(
            "storage:\n"
            "  uri: ${MONGODB_URI}\n"
            f"  database: {launch.database}\n"
            "defaults:\n"
            "  state_ttl: 1d\n" + self.sections + "bots:\n" + "".join(entries)
        )
        argv = [python(), "-m", "botyard", "run", str(registry), "--no-watch"]
        return [*argv, "--log-level", "WARNING"], {"MONGODB_URI": launch.uri}

    def help_command(self) -> list[str]:
        return [python(), "-m", "botyard", "--help"]


@dataclass(frozen=True)
class PlainAiogram:
    """:mod:`benchmarks.aiogram_app` with one of its storages."""

    name: str
    storage: str
    #: One ``AiohttpSession`` for every bot instead of aiogram's default of one per bot.
    shared_session: bool = False

    def prepare(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        tokens = launch.workdir / "tokens.txt"
        tokens.write_text("".join(f"{token}\n" for token in launch.tokens))
        argv = [python(), "-m", "benchmarks.aiogram_app", "--storage", self.storage]
        argv += ["--uri", launch.uri, "--database", launch.database]
        argv += ["--api-server", launch.api_server, "--tokens", str(tokens)]
        argv += ["--router", launch.router]
        return [*argv, "--shared-session"] if self.shared_session else argv, {}

    def help_command(self) -> list[str]:
        return [python(), "-m", "benchmarks.aiogram_app", "--help"]


BOTYARD = Botyard()
AIOGRAM_PYMONGO = PlainAiogram("aiogram-pymongo", "pymongo")
HAND_WRITTEN = PlainAiogram("hand-written", "handwritten")
#: Plain aiogram with no FSM persistence: what botyard's CPU per update is held against.
FLOOR = PlainAiogram("floor", "memory", shared_session=True)
#: Every contender, botyard first; the ratios in the table are botyard / each baseline.
CONTENDERS: tuple[Contender, ...] = (BOTYARD, FLOOR, AIOGRAM_PYMONGO, HAND_WRITTEN)
BASELINES = (FLOOR, AIOGRAM_PYMONGO, HAND_WRITTEN)
