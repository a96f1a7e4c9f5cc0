"""``botyard status``: the live replicas, the bots each serves, their heartbeat ages."""

from __future__ import annotations

from pathlib import Path

import click
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cli.database import run_on_database
from botyard.cli.options import load_quietly, logging_options, registry_argument
from botyard.cluster import cluster_status
from botyard.database.documents import Document
from botyard.registry.models import ClusterConfig


@click.command()
@logging_options()
@registry_argument
def status(registry_path: Path) -> None:
    """Show the replicas of `botyard run` sharing REGISTRY's bots, as MongoDB knows them.

    Each replica is listed with its heartbeat age (on MongoDB's clock), the
    bots it serves, and whether it is the leader (the one running the cleanup
    schedule and the samplers). A replica silent for longer than the failover
    allows is marked gone. Exits 1 if MongoDB cannot be reached.
    """
    registry = load_quietly(registry_path)
    lapse = (registry.cluster or ClusterConfig()).lapse

    async def show(database: AsyncDatabase[Document]) -> None:
        click.echo((await cluster_status(database, lapse)).render())

    run_on_database(registry, show, appname="botyard-cli")
