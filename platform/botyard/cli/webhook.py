"""``botyard webhook rotate``: new webhook secrets, applied by the running botyard."""

from __future__ import annotations

from pathlib import Path

import click
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cli.database import run_on_database
from botyard.cli.options import load_quietly, logging_options, registry_argument
from botyard.database.documents import Document
from botyard.errors import BotyardError
from botyard.webhook.journal import HEARTBEAT_INTERVAL
from botyard.webhook.secrets import SecretStore


@click.group()
def webhook() -> None:
    """Manage the webhooks of REGISTRY's bots in webhook mode."""


@webhook.command()
@logging_options()
@registry_argument
@click.option(
    "--bot",
    "bot_names",
    metavar="NAME",
    multiple=True,
    help="Rotate this bot's secrets (repeatable). Default: every bot in webhook mode.",
)
def rotate(registry_path: Path, bot_names: tuple[str, ...]) -> None:
    """Replace the path secret and secret token of webhook bots with fresh random ones.

    The secrets live in MongoDB. A running `botyard run` notices the change
    within its heartbeat interval and calls setWebhook with the new URL and
    secret token, accepting the old ones until Telegram has the new; a stopped
    one uses them at its next start. The secrets are never printed.
    """
    registry = load_quietly(registry_path)
    if bot_names:
        bots = [registry.bot(name) for name in bot_names]
        polling = [bot.name for bot in bots if bot.mode != "webhook"]
        if polling:
            raise BotyardError(
                f"not in webhook mode: {', '.join(polling)} (set mode: webhook first)"
            )
    else:
        bots = [bot for bot in registry.bots if bot.mode == "webhook"]
        if not bots:
            raise BotyardError(f"no bot in {registry_path.name} uses mode: webhook")

    async def rotate_all(database: AsyncDatabase[Document]) -> None:
        store = SecretStore(database)
        for bot in bots:
            await store.rotate(bot.name)

    run_on_database(registry, rotate_all, appname="botyard-cli")
    click.echo(
        f"rotated the webhook secrets of {', '.join(bot.name for bot in bots)}; "
        f"a running botyard calls setWebhook with them within {HEARTBEAT_INTERVAL:.0f}s"
    )
