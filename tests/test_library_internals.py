"""The internals of aiogram and Beanie that botyard relies on, each named, so that an upgrade
that changes one fails here, loudly, instead of subtly in production.

pyproject.toml bounds these libraries below their next minor release; raising a bound
means running this file against the new version first.
"""

from __future__ import annotations

import inspect

import pytest
from aiogram import F, Router
from aiogram.client.session.base import BaseSession
from aiogram.dispatcher.event.handler import FilterObject
from aiogram.methods import GetUpdates, Response, SendMessage
from aiogram.types import Update
from magic_filter import MagicFilter


def test_aiogram_router_parent_link() -> None:
    """runtime/runner.py ``_detach_routers``: a restarted bot re-includes its Router
    objects by clearing ``_parent_router`` and ``sub_routers``."""
    parent, child = Router(), Router()
    parent.include_router(child)
    assert child._parent_router is parent, "aiogram Router._parent_router changed"
    assert parent.sub_routers == [child], "aiogram Router.sub_routers changed"
    child._parent_router = None
    parent.sub_routers.clear()
    Router().include_router(child)  # accepted again once detached


def test_aiogram_router_probe_api() -> None:
    """runtime/routers.py ``_Probe``: update types and lifecycle handlers without a Dispatcher."""
    router = Router()

    @router.message()
    async def handler() -> None: ...

    assert router.resolve_used_update_types() == ["message"]
    assert router in list(router.chain_tail)
    assert router.startup.handlers == []


def test_aiogram_response_models_and_check_response() -> None:
    """runtime/http_sessions.py: sessions override ``BaseSession.check_response`` and keep
    ``Response[method.__returning__]`` models alive (pydantic caches them weakly)."""
    parameters = list(inspect.signature(BaseSession.check_response).parameters)
    assert parameters == ["self", "bot", "method", "status_code", "content"], (
        "aiogram BaseSession.check_response's signature changed"
    )
    assert GetUpdates.__returning__ == list[Update]
    assert SendMessage.__returning__ is not None
    model = Response[list[Update]]
    parsed = model.model_validate({"ok": True, "result": []})
    assert parsed.result == []


def test_aiogram_session_request_internals() -> None:
    """runtime/http_sessions.py ``PlatformSession.make_request`` replaces aiogram's: it
    builds the URL with ``api.api_url``, prepares each value with ``prepare_value``'s
    private ``_dumps_json=False`` (JSON values instead of JSON text), and posts through
    ``create_session`` with the session's ``timeout``."""
    from aiogram.client.session.aiohttp import AiohttpSession

    parameters = inspect.signature(BaseSession.prepare_value).parameters
    assert list(parameters) == ["self", "value", "bot", "files", "_dumps_json"], (
        "aiogram BaseSession.prepare_value's signature changed"
    )
    assert list(inspect.signature(AiohttpSession.make_request).parameters) == [
        "self",
        "bot",
        "method",
        "timeout",
    ], "aiogram AiohttpSession.make_request's signature changed"
    assert inspect.iscoroutinefunction(AiohttpSession.create_session)
    assert "timeout" in inspect.signature(BaseSession.__init__).parameters


def test_beanie_migration_runner_internals() -> None:
    """migrations_runner/runner.py drives Beanie's runner through ``DBHandler``,
    ``MigrationNode`` (a linked list) and ``MigrationLog``."""
    from beanie.migrations.database import DBHandler
    from beanie.migrations.models import MigrationLog
    from beanie.migrations.runner import MigrationNode

    assert hasattr(DBHandler, "set_db"), "beanie DBHandler changed"
    assert inspect.iscoroutinefunction(MigrationNode.build), "MigrationNode.build changed"
    node = MigrationNode("x")
    for attribute in ("name", "prev_migration", "next_migration"):
        assert hasattr(node, attribute), f"beanie MigrationNode.{attribute} is gone"
    for attribute in ("forward_class", "backward_class"):
        assert attribute in inspect.signature(MigrationNode.__init__).parameters, attribute
    assert {"name", "is_current"} <= set(MigrationLog.model_fields)


@pytest.mark.parametrize(
    ("package", "below"), [("aiogram", (3, 32)), ("beanie", (2, 3))], ids=["aiogram", "beanie"]
)
def test_the_installed_versions_are_the_ones_checked_here(
    package: str, below: tuple[int, int]
) -> None:
    from importlib.metadata import version

    installed = tuple(int(part) for part in version(package).split(".")[:2])
    assert installed < below, f"{package} {version(package)}: run this file, then raise the bound"


def test_aiogram_filter_object_and_magic_filter_internals() -> None:
    """runtime/filters.py: a magic filter's ``FilterObject`` keeps it in ``magic`` and is
    awaited when ``awaitable``; an observer's own filters sit on ``_handler``; a
    ``MagicFilter`` lists what it does in ``_operations``."""
    magic: MagicFilter = F.text == "go"
    filter_object = FilterObject(magic)
    assert filter_object.magic is magic, "aiogram FilterObject.magic changed"
    assert filter_object.awaitable is False, "aiogram FilterObject.awaitable changed"
    assert filter_object.callback == magic.resolve, "aiogram FilterObject.callback changed"
    assert len(magic._operations) == 2, "magic_filter MagicFilter._operations changed"
    router = Router()
    router.message.filter(magic)
    [own] = router.message._handler.filters or []
    assert own.magic is magic, "aiogram TelegramEventObserver._handler changed"


def test_pydantic_field_rebuilding() -> None:
    """runtime/aiogram_models.py ``_resolve_fields``: resolves a deferred model's fields with
    pydantic's ``rebuild_model_fields``, as ``model_rebuild`` does before building a schema.
    (Were it gone, aiogram's types would be built at import again: slower, not wrong;
    tests/runtime/test_aiogram_types.py then fails on the count of models built.)"""
    from pydantic._internal._fields import rebuild_model_fields

    parameters = list(inspect.signature(rebuild_model_fields).parameters)
    assert parameters == ["cls", "config_wrapper", "ns_resolver", "typevars_map"], (
        "pydantic's rebuild_model_fields changed"
    )
