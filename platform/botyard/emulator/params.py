"""A Bot API call's parameters, read the way Telegram reads them.

aiogram sends multipart forms whose scalar fields are plain or JSON-encoded
strings (``"42"``, ``"true"``) and whose complex fields (``reply_markup``,
``allowed_updates``) are JSON text; other clients send a query string, an
urlencoded form or a JSON body with real JSON values. :class:`Params` accepts
all of them and turns a malformed field into the 400 Telegram would answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import BodyPartReader, ClientResponse, MultipartReader, web

from botyard.emulator.errors import BotAPIError

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class Params:
    """Typed access to one call's parameters; absent and empty fields read as ``None``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = {key: value for key, value in values.items() if value not in (None, "")}

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def text(self, name: str) -> str | None:
        """A string field."""
        value = self._values.get(name)
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value)

    def integer(self, name: str) -> int | None:
        """A number field, given as a number or as its decimal text."""
        value = self._values.get(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise BotAPIError.bad_request(f'field "{name}" must be a valid Number') from None

    def boolean(self, name: str) -> bool:
        """A boolean field; absent means false."""
        value = self._values.get(name, False)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise BotAPIError.bad_request(f'field "{name}" must be of type Boolean')

    def json(self, name: str) -> Any:
        """A complex field, given as a JSON value or as JSON text."""
        value = self._values.get(name)
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise BotAPIError.bad_request(f"can't parse {name} JSON object") from None

    def chat_id(self) -> int:
        """The required ``chat_id``; ``@channel`` names are not emulated, so they are unknown."""
        value = self.text("chat_id")
        if value is None:
            raise BotAPIError.bad_request("chat_id is empty")
        try:
            return int(value)
        except ValueError:
            raise BotAPIError.bad_request("chat not found") from None


async def read_request_params(request: web.Request) -> Params:
    """The parameters of a Bot API request: query string merged with the body."""
    values: dict[str, Any] = dict(request.query)
    if request.body_exists:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise BotAPIError.bad_request("can't parse JSON request body") from None
            if not isinstance(body, dict):
                raise BotAPIError.bad_request("JSON request body must be an object")
            values.update(body)
        elif request.content_type in _FORM_TYPES:
            form = await request.post()
            values.update((key, value) for key, value in form.items() if isinstance(value, str))
    return Params(values)


async def read_webhook_reply(response: ClientResponse) -> tuple[str, Params] | None:
    """A method call a webhook put in its 2xx answer (JSON or aiogram's multipart), if any.

    Telegram executes such a call as if the bot had made it, which is how
    aiogram's ``SimpleRequestHandler`` answers with a handler's returned method.
    """
    values: dict[str, Any] = {}
    if response.content_type == "application/json":
        try:
            body = await response.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        values = body
    elif response.content_type == "multipart/form-data":
        async for part in MultipartReader(response.headers, response.content):
            if isinstance(part, BodyPartReader) and part.name:
                values[part.name] = await part.text()
    method = values.pop("method", None)
    if not isinstance(method, str):
        return None
    return method, Params(values)
