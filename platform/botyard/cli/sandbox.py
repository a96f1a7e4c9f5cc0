"""``botyard sandbox``: every bot of a registry on the built-in emulator, with a web page."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import click

from botyard.cli.options import command_redactor, logging_options, registry_argument
from botyard.registry.loader import check_registry


@click.command()
@registry_argument
@logging_options(default_level="INFO")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the page binds to.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free."
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other than loopback. The page shows every bot's conversations.",
)
def sandbox(registry_path: Path, host: str, port: int, allow_remote: bool) -> None:
    """Chat with every bot of REGISTRY in a browser, no Telegram needed.

    The bots run as under `botyard run` (same handlers, same storage; the
    embedded database when storage.uri is empty), but talk to the built-in Bot
    API emulator under generated tokens: the file's tokens are never used and
    need not be set. The page lists the bots with their live status, and lets
    simulated users chat with them while their FSM state is shown beside the
    chat. Saving the file reloads it. Stop with Ctrl-C.
    """
    from botyard.sandbox import Sandbox

    if not _is_loopback(host):
        if not allow_remote:
            raise click.UsageError(
                f"--host {host} would let other machines read and write every bot's "
                "conversations; add --allow-remote to do that, or keep the default 127.0.0.1"
            )
        click.echo(
            f"warning: the sandbox listens on {host}: anyone who can reach it reads and writes "
            "every bot's conversations and FSM state; it has no authentication",
            err=True,
        )
    redactor = command_redactor()
    # Every router imported before the page is announced.
    check_registry(registry_path, require_tokens=False)
    server = Sandbox(registry_path, host=host, port=port, redactor=redactor)

    def announce(url: str) -> None:
        click.echo(f"botyard sandbox: open {url} (Ctrl-C stops)")

    raise SystemExit(asyncio.run(server.run(announce)))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
