"""The questionnaire bot's own storage: the completed answers' model is bound once."""

from __future__ import annotations

import asyncio
from typing import Any

import bots.questionnaire as questionnaire
import pytest
from beanie import init_beanie
from pymongo import AsyncMongoClient

from botyard.database.roundtrips import RoundTripCounter


async def test_saves_at_once_bind_the_model_once(mongo_uri: str, database_name: str) -> None:
    counter = RoundTripCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, event_listeners=[counter]
    )
    try:
        database = client[database_name]
        await asyncio.gather(*(questionnaire.bind(database) for _ in range(50)))
        binding = dict(counter.commands)
        await questionnaire.bind(database)
    finally:
        await client.close()
    # Beanie lists the collections once for the fifty, and not again.
    assert binding == {"listCollections": 1}
    assert counter.total == 1


async def test_a_failed_binding_is_tried_again(
    mongo_uri: str, database_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = init_beanie

    async def failing_once(**kwargs: Any) -> None:
        calls.append(kwargs["database"])
        if len(calls) == 1:
            raise ConnectionError("database unreachable")
        await real(**kwargs)

    monkeypatch.setattr("bots.questionnaire.init_beanie", failing_once)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        database = client[database_name]
        results = await asyncio.gather(
            *(questionnaire.bind(database) for _ in range(3)), return_exceptions=True
        )
        assert [type(result) for result in results] == [ConnectionError] * 3
        await questionnaire.bind(database)
        await questionnaire.bind(database)
    finally:
        await client.close()
    assert len(calls) == 2
