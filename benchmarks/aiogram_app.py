"""The plain-aiogram baselines, as a competent aiogram user would write them.

One process, one ``Dispatcher``, ``Dispatcher.start_polling(*bots)``, one ``Bot``
per token with its default session (pointed at the Bot API server given), and
the FSM in MongoDB through either aiogram's ``PyMongoStorage`` with
``DefaultKeyBuilder(with_bot_id=True)`` ("aiogram-pymongo") or the article's
storage ("hand-written", :mod:`benchmarks.handwritten`). SIGTERM stops it
(aiogram's own signal handling).

The floor is the same program with the FSM in aiogram's ``MemoryStorage`` and
one ``AiohttpSession`` shared by every bot (``--storage memory --shared-session``):
what the bots cost with no FSM persistence at all. The handlers still get the
database, for what a bot stores itself (the questionnaire's completed answers).

    python -m benchmarks.aiogram_app --storage pymongo --uri mongodb://... \
        --database bench --api-server http://127.0.0.1:8081 --tokens tokens.txt \
        --router bots.questionnaire:router

Tokens are read from a file, one per line, so they appear in no command line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.fsm.storage.pymongo import PyMongoStorage
from pymongo import AsyncMongoClient

from benchmarks.handwritten import HandWrittenStorage

STORAGES = ("pymongo", "handwritten", "memory")
#: Connections of a shared session per bot: its long poll and a reply.
CONNECTIONS_PER_BOT = 2


def make_storage(kind: str, client: AsyncMongoClient[Any], database: str) -> BaseStorage:
    """The contender's FSM storage: ``pymongo`` or ``handwritten`` on ``client``, or ``memory``."""
    if kind == "pymongo":
        return PyMongoStorage(
            client, key_builder=DefaultKeyBuilder(with_bot_id=True), db_name=database
        )
    if kind == "handwritten":
        return HandWrittenStorage(client[database]["fsm"])
    if kind == "memory":
        return MemoryStorage()
    raise ValueError(f"unknown storage {kind!r}; expected one of {', '.join(STORAGES)}")


def load_router(spec: str) -> Router:
    """Import ``module:attribute``; call it when it is a factory."""
    module_name, _, attribute = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    return target if isinstance(target, Router) else target()


async def serve(args: argparse.Namespace, tokens: list[str]) -> None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(args.uri)
    # Handlers get the database, as botyard gives it (the questionnaire saves its answers there).
    dispatcher = Dispatcher(
        storage=make_storage(args.storage, client, args.database), database=client[args.database]
    )
    dispatcher.include_router(load_router(args.router))
    api = TelegramAPIServer.from_base(args.api_server)
    if args.shared_session:
        # aiogram's default of 100 connections starves past 50 bots (each long poll holds one).
        shared = AiohttpSession(api=api, limit=CONNECTIONS_PER_BOT * len(tokens) + 10)
        bots = [Bot(token, session=shared) for token in tokens]
    else:
        bots = [Bot(token, session=AiohttpSession(api=api)) for token in tokens]
    try:
        await dispatcher.start_polling(*bots)
    finally:
        await client.close()  # the storage's close() may have closed it already: harmless


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=STORAGES, required=True)
    parser.add_argument("--uri", required=True, help="MongoDB connection string")
    parser.add_argument("--database", required=True)
    parser.add_argument("--api-server", required=True, help="Bot API base URL")
    parser.add_argument("--tokens", required=True, help="file with one bot token per line")
    parser.add_argument("--router", required=True, help="module:attribute of a Router or factory")
    parser.add_argument(
        "--shared-session", action="store_true", help="one AiohttpSession for every bot"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tokens = [line.strip() for line in Path(args.tokens).read_text().splitlines() if line.strip()]
    asyncio.run(serve(args, tokens))


if __name__ == "__main__":
    main()
