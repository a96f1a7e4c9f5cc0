"""The ``botyard`` command line: one module per group of commands.

Commands raise :class:`~botyard.errors.BotyardError`; :mod:`.errors` prints it.
The only package that imports click. May import every other package.

A command's module is imported only when that command runs (or shows its own
``--help``), so ``botyard --help``, ``--version`` and ``schema`` start without
importing aiogram, Beanie or PyMongo; when a command does import aiogram, its
pydantic models are built on first use (:mod:`botyard.runtime.aiogram_models`).
"""

from __future__ import annotations

import importlib

import click

from botyard import __version__
from botyard.cli.errors import ReportingGroup
from botyard.cli.options import ENV_PREFIX
from botyard.runtime.aiogram_models import defer_aiogram_model_builds

__all__ = ["COMMANDS", "LazyGroup", "main"]

defer_aiogram_model_builds()

COMMANDS: dict[str, tuple[str, str]] = {
    "check": (
        "botyard.cli.run:check",
        "Validate REGISTRY and import every router and hook, without touching the network.",
    ),
    "cleanup": (
        "botyard.cli.states:cleanup",
        "Sweep the stale FSM state of REGISTRY's bots now, and print per-bot counts.",
    ),
    "import": (
        "botyard.cli.importing:import_state",
        "Copy the FSM state of an existing aiogram bot into REGISTRY's bot NAME.",
    ),
    "migrate": (
        "botyard.cli.migrate:migrate",
        "Apply, roll back or list REGISTRY's schema migrations (Beanie migrations).",
    ),
    "run": ("botyard.cli.run:run", "Run every enabled bot of REGISTRY until SIGINT or SIGTERM."),
    "sandbox": (
        "botyard.cli.sandbox:sandbox",
        "Chat with every bot of REGISTRY in a browser, no Telegram needed.",
    ),
    "schema": (
        "botyard.cli.run:schema",
        "Print the JSON Schema of the registry file (for editors and CI validation).",
    ),
    "states": (
        "botyard.cli.states:states",
        "Inspect or delete the FSM records of REGISTRY's bots.",
    ),
    "status": (
        "botyard.cli.status:status",
        "Show the replicas of `botyard run` sharing REGISTRY's bots, as MongoDB knows them.",
    ),
    "webhook": (
        "botyard.cli.webhook:webhook",
        "Manage the webhooks of REGISTRY's bots in webhook mode.",
    ),
}
"""Each command's ``module:attribute`` and the one line ``botyard --help`` shows for it
(the command's own first sentence; a test keeps the two equal)."""


class LazyGroup(ReportingGroup):
    """A group that imports a command's module the first time the command is looked up,
    and lists its commands from :data:`COMMANDS` without importing any."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attribute = COMMANDS[cmd_name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, self._summary(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _summary(self, name: str, limit: int) -> str:
        if name in COMMANDS:
            # A stand-in command with the summary as its help: click's own shortening.
            return click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)
        return self.commands[name].get_short_help_str(limit)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": ENV_PREFIX},
)
@click.version_option(__version__, "-V", "--version", prog_name="botyard")
def main() -> None:
    """Host many aiogram bots in one process, with their FSM state in MongoDB.

    Every command reads a registry file (botyard.yaml) listing the bots.
    """
