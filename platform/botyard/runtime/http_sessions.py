"""HTTP sessions shared by many bots, sized so long polls never starve.

Every polling bot holds one connection open for its long poll, so aiogram's
default of 100 connections per session starves past 100 bots, while a session
per bot costs about 0.7 MB each. Bots are packed into shared sessions of a fixed
capacity, one group per Bot API server (a session talks to one server). Every
session carries the pool's :class:`~botyard.runtime.outbound.Outbound`
middleware: flood control and retries for the bots registered with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import GetUpdates, Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import InputFile, Update
from aiohttp import ClientError, ClientTimeout
from pydantic import ValidationError

from botyard.runtime.outbound import CallMeter, Outbound

#: Bots per shared session; each gets two connections (its long poll plus a reply).
BOTS_PER_SESSION = 500
CONNECTIONS_PER_BOT = 2
SPARE_CONNECTIONS = 50


#: Strong references to the response models built so far, keyed by the type returned.
_RESPONSE_MODELS: dict[Any, type[Response[Any]]] = {}
# Built before the bots poll, not by the first update, and before the answer model that
# holds it, which then reuses its schema (see botyard.runtime.aiogram_models).
Update.model_rebuild()
_UPDATES_RESPONSE = Response[list[Update]]
_JSON_BODY = {"Content-Type": "application/json"}


class PlatformSession(AiohttpSession):
    """aiogram's session, parsing less of what the Bot API answers.

    Two costs of aiogram's answer parsing, found by profiling ``botyard run``
    under load (see the README's Performance section):

    - aiogram validates every answer with ``Response[method.__returning__]``, a
      generic model pydantic caches only weakly: after each full garbage
      collection it is built again, about 10 ms of schema generation per method
      type. One strong reference per returned type keeps it cached.
    - botyard confirms an update only when it and every earlier one finished
      (at-least-once), so each ``getUpdates`` answer repeats the updates still
      being handled; with 20 users per bot that made parsing them again 40% of
      the platform's CPU. Each bot's updates are parsed once and kept, with the
      JSON they came in (what the journal stores), until an ``offset`` confirms them.

    And one cost of the requests: aiogram sends every call as a form, each
    nested value (a keyboard, entities) as JSON text inside it; a call without a
    file to upload goes as one JSON body instead (see :meth:`make_request`).

    An update that does not parse as an aiogram ``Update`` (a field missing or
    of the wrong type) comes back as a :class:`MalformedUpdate` with its id and
    what was wrong, never its content, instead of failing the whole answer:
    aiogram would raise for the batch, and the bot would ask for the same
    updates forever.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: By bot id: the ``Bot`` the updates are bound to, and by update id each
        #: update with the JSON object it was parsed from.
        self._unconfirmed: dict[int, tuple[Bot, dict[int, tuple[Update, Any]]]] = {}

    def forget(self, bot: Bot) -> None:
        """Drop what was kept for ``bot`` (its runner stopped)."""
        kept = self._unconfirmed.get(bot.id)
        if kept is not None and kept[0] is bot:
            del self._unconfirmed[bot.id]

    def sent_as(self, bot: Bot, update_id: int) -> dict[str, Any] | None:
        """The JSON object the Bot API sent for an update of ``bot`` not yet confirmed."""
        kept = self._unconfirmed.get(bot.id)
        if kept is None or kept[0] is not bot or update_id not in kept[1]:
            return None
        raw = kept[1][update_id][1]
        return raw if isinstance(raw, dict) else None

    async def make_request(
        self, bot: Bot, method: TelegramMethod[TelegramType], timeout: int | None = None
    ) -> TelegramType:
        """aiogram's request, with a JSON body unless the call uploads a file.

        Building aiogram's form (each nested value JSON-encoded, then the form
        urlencoded) cost more than the rest of a ``sendMessage``'s request. The
        values are prepared by aiogram's own ``prepare_value`` (bot defaults
        such as ``parse_mode`` resolved, dates as timestamps), and skipped when
        aiogram's form would skip them; errors map to aiogram's as in its session.
        """
        body = self._json_body(bot, method)
        if body is None:
            return await super().make_request(bot, method, timeout)
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=method.__api_method__)
        try:
            async with session.post(
                url,
                data=body,
                headers=_JSON_BODY,
                timeout=ClientTimeout(total=self.timeout if timeout is None else timeout),
            ) as answer:
                content = await answer.text()
        except TimeoutError as error:
            raise TelegramNetworkError(method=method, message="Request timeout error") from error
        except ClientError as error:
            message = f"{type(error).__name__}: {error}"
            raise TelegramNetworkError(method=method, message=message) from error
        response = self.check_response(
            bot=bot, method=method, status_code=answer.status, content=content
        )
        return cast(TelegramType, response.result)

    def _json_body(self, bot: Bot, method: TelegramMethod[Any]) -> bytes | None:
        """The call's fields as a JSON object; ``None`` if it uploads a file (a form it is)."""
        files: dict[str, InputFile] = {}
        fields: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":
                fields[key] = prepared
        return None if files else self.json_dumps(fields).encode()

    def check_response(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        status_code: int,
        content: str,
    ) -> Response[TelegramType]:
        if isinstance(method, GetUpdates) and status_code == HTTPStatus.OK:
            parsed = self._updates(bot, method, content)
            if parsed is not None:
                return parsed  # type: ignore[return-value]
        returning = method.__returning__
        try:
            if returning not in _RESPONSE_MODELS:
                _RESPONSE_MODELS[returning] = Response[returning]  # type: ignore[valid-type]
        except TypeError:  # an unhashable return type: nothing to keep, nothing lost
            pass
        return super().check_response(bot, method, status_code, content)

    def _updates(self, bot: Bot, method: GetUpdates, content: str) -> Response[list[Update]] | None:
        """The answer with already parsed updates reused; ``None``: let aiogram handle it."""
        kept = self._unconfirmed.get(bot.id)
        if kept is None or kept[0] is not bot:
            # Updates parsed for another Bot object of this bot id (a runner restarted,
            # perhaps with a new token) answer with that Bot: parse them again.
            kept = self._unconfirmed[bot.id] = (bot, {})
        known = kept[1]
        if method.offset is not None and method.offset > 0:
            for update_id in [update_id for update_id in known if update_id < method.offset]:
                del known[update_id]
        try:
            answer = self.json_loads(content)
            raw_updates = answer["result"]
            if answer.get("ok") is not True or not isinstance(raw_updates, list):
                return None
            updates = []
            for raw in raw_updates:
                update_id = raw["update_id"]
                if not isinstance(update_id, int):
                    return None
                if update_id not in known:
                    known[update_id] = (_parse(bot, update_id, raw), raw)
                updates.append(known[update_id][0])
        except (ValueError, TypeError, KeyError):
            return None  # aiogram's own parsing raises the error it always raised
        return _UPDATES_RESPONSE.model_construct(ok=True, result=updates)


class MalformedUpdate(Update):
    """An update the Bot API sent that aiogram cannot read: only its id is kept."""

    #: Where and what was wrong (field paths and error types; no values).
    problem: str = ""


def describe_validation_error(error: ValidationError, most: int = 3) -> str:
    """``message.chat.type: missing; ...``: the fields at fault, never their values."""
    problems = [
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['type']}"
        for problem in error.errors(include_url=False, include_input=False)
    ]
    shown = "; ".join(problems[:most])
    return shown + (f" (and {len(problems) - most} more)" if len(problems) > most else "")


def _parse(bot: Bot, update_id: int, raw: Any) -> Update:
    try:
        return Update.model_validate(raw, context={"bot": bot})
    except ValidationError as error:
        return MalformedUpdate.model_construct(
            update_id=update_id, problem=describe_validation_error(error)
        )


@dataclass
class _Shared:
    session: AiohttpSession
    bots: set[str] = field(default_factory=set)


class SessionPool:
    """Hands out shared :class:`AiohttpSession` objects, one seat per bot name."""

    def __init__(
        self, bots_per_session: int = BOTS_PER_SESSION, *, meter: CallMeter | None = None
    ) -> None:
        self._bots_per_session = bots_per_session
        self._groups: dict[str | None, list[_Shared]] = {}
        self._seats: dict[str, _Shared] = {}
        self.outbound = Outbound(meter)

    def acquire(self, bot_name: str, api_server: str | None) -> AiohttpSession:
        """A session for ``bot_name`` talking to ``api_server`` (``None``: Telegram)."""
        if bot_name in self._seats:
            raise RuntimeError(f"bot {bot_name!r} already holds a session")
        group = self._groups.setdefault(api_server, [])
        shared = next((s for s in group if len(s.bots) < self._bots_per_session), None)
        if shared is None:
            api = TelegramAPIServer.from_base(api_server) if api_server else PRODUCTION
            session = PlatformSession(
                api=api,
                limit=self._bots_per_session * CONNECTIONS_PER_BOT + SPARE_CONNECTIONS,
            )
            session.middleware(self.outbound)
            shared = _Shared(session)
            group.append(shared)
        shared.bots.add(bot_name)
        self._seats[bot_name] = shared
        return shared.session

    async def release(self, bot_name: str, bot: Bot | None = None) -> None:
        """Give up ``bot_name``'s seat and what its ``bot`` left in the session; a session
        nobody uses any more is closed."""
        shared = self._seats.pop(bot_name, None)
        if shared is None:
            return
        if bot is not None and isinstance(shared.session, PlatformSession):
            shared.session.forget(bot)
        shared.bots.discard(bot_name)
        if not shared.bots:
            for group in self._groups.values():
                if shared in group:
                    group.remove(shared)
            await shared.session.close()

    async def close(self) -> None:
        for group in self._groups.values():
            for shared in group:
                await shared.session.close()
        self._groups.clear()
        self._seats.clear()
