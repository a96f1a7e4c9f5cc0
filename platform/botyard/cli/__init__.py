"""The ``botyard`` command line: one module per group of commands.

Commands raise :class:`~botyard.errors.BotyardError`; :mod:`.errors` prints it.
The only package that imports click. May import every other package.
"""

from __future__ import annotations

import click

from botyard import __version__
from botyard.cli.errors import ReportingGroup
from botyard.cli.importing import import_state
from botyard.cli.migrate import migrate
from botyard.cli.options import ENV_PREFIX
from botyard.cli.run import check, run, schema
from botyard.cli.sandbox import sandbox
from botyard.cli.states import cleanup, states
from botyard.cli.webhook import webhook


@click.group(
    cls=ReportingGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": ENV_PREFIX},
)
@click.version_option(__version__, "-V", "--version", prog_name="botyard")
def main() -> None:
    """Host many aiogram bots in one process, with their FSM state in MongoDB.

    Every command reads a registry file (botyard.yaml) listing the bots.
    """


main.add_command(run)
main.add_command(check)
main.add_command(schema)
main.add_command(cleanup)
main.add_command(states)
main.add_command(webhook)
main.add_command(migrate)
main.add_command(import_state)
main.add_command(sandbox)
