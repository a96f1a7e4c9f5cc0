"""What is wrong with a registry file, as lines that point at it: ``file:line: where: what``.

:class:`Problems` collects everything :func:`~botyard.registry.loader.load_registry`
finds and raises it as one :class:`~botyard.registry.models.RegistryError`, in
file order, naming the bot and key, with the file's tokens redacted; pydantic's
errors become sentences about the file (``unknown key 'stat_ttl' (did you mean
'state_ttl'?)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, TypeAlias

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from botyard.registry.models import Loc, RegistryDocument, RegistryError
from botyard.tokens import TokenRedactor

__all__ = ["Lines", "Problems", "kind_of", "line_of"]

Lines: TypeAlias = dict[Loc, int]
"""Line (1-based) of every key and list item in the file, by key path."""


class Problems:
    """Collects problems and renders them as ``file:line: where: what`` lines, in file order.

    Lines are rendered at the end, from the data after substitution, so bot
    names are the real ones and the real tokens can be redacted.
    """

    def __init__(self, source: str, lines: Lines) -> None:
        self.source = source
        self.lines = lines
        self._found: list[tuple[Loc | None, str]] = []
        self._covered: list[Loc] = []
        #: Why a token loaded as ``None`` where tokens are optional, by ``("bots", i, "token")``.
        self._tokens: dict[Loc, str] = {}

    def add(self, loc: Loc, message: str) -> None:
        """A problem at ``loc``; later validation errors at or below it are not repeated."""
        self._covered.append(loc)
        self._found.append((loc, message))

    def extend(self, found: Sequence[tuple[Loc, str]]) -> None:
        self._found.extend(found)

    def token_problem(self, loc: Loc, message: str) -> None:
        """Why the token at ``loc`` is unusable, where that is no error (see ``token_problems``)."""
        self._tokens[loc] = message

    def has_token_problem(self, loc: Loc) -> bool:
        return loc in self._tokens

    def token_problems(self, data: Any) -> dict[str, str]:
        """Each token problem as a ``file:line: bots[i] (name).token: ...`` line, by bot name."""
        redact = TokenRedactor(_raw_tokens(data))
        found: dict[str, str] = {}
        for loc, message in self._tokens.items():
            bot = _child(_child(data, "bots"), loc[1])
            name = bot.get("name") if isinstance(bot, dict) else None
            found[str(name)] = redact(self._render(loc, message, data)[1])
        return found

    def extend_plain(self, messages: Sequence[str]) -> None:
        """Problems that already say where they are (the ``.env`` file)."""
        self._found.extend((None, message) for message in messages)

    def add_pydantic(self, detail: ErrorDetails) -> None:
        if detail["type"] == "registry_conflicts":
            return  # the loader runs the same checks on the keys that are valid
        loc = tuple(detail["loc"])
        if detail["type"] == "too_short" and detail.get("input"):
            return  # "too short after validation": the failing items say why
        if not any(loc[: len(covered)] == covered for covered in self._covered):
            self._found.append((loc, _explain(detail, loc)))

    def raise_if_any(self, data: Any) -> None:
        if not self._found:
            return
        rendered = sorted(
            (self._render(loc, message, data) for loc, message in self._found),
            key=lambda item: item[0],
        )
        redact = TokenRedactor(_raw_tokens(data))
        raise RegistryError([redact(text) for _, text in rendered], source=self.source)

    def _render(self, loc: Loc | None, message: str, data: Any) -> tuple[int, str]:
        if loc is None:
            return 0, message
        line = line_of(loc, self.lines)
        where = f"{self.source}:{line}" if line else self.source
        what = _describe_loc(loc, data)
        return line or 0, f"{where}: {what}: {message}" if what else f"{where}: {message}"


def line_of(loc: Loc, lines: Lines) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _describe_loc(loc: Loc, data: Any) -> str:
    """``("bots", 1, "state_ttl")`` -> ``"bots[1] (shop).state_ttl"``, naming the bot."""
    text = ""
    node = data
    for part in loc:
        child = _child(node, part)
        if isinstance(part, int):
            text += f"[{part}]"
            name = child.get("name") if isinstance(child, dict) else None
            if isinstance(name, str) and name:
                text += f" ({name})"
        else:
            text += f".{part}" if text else part
        node = child
    return text


def _child(node: Any, part: str | int) -> Any:
    if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
        return node[part]
    if isinstance(part, str) and isinstance(node, dict):
        return node.get(part)
    return None


def _explain(detail: ErrorDetails, loc: Loc) -> str:
    """Turn one pydantic error into a sentence about the file."""
    kind = detail["type"]
    value = detail.get("input")
    if kind == "value_error":
        return str(detail.get("ctx", {}).get("error", detail["msg"]))
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required key is missing" + (
            " (list your bots under bots:)" if loc == ("bots",) else ""
        )
    if kind == "too_short" and loc == ("bots",):
        return "no bots listed: add at least one entry under bots:"
    if kind == "too_short" and loc[-1:] == ("routers",):
        return "no routers listed: add at least one 'module:attribute'"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping (key: value lines), got {kind_of(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {kind_of(value)}"
    if kind == "string_type":
        return f"expected a string, got {kind_of(value)}"
    message = detail["msg"].replace("Input should be", "should be")
    message = message[:1].lower() + message[1:]
    if "token" not in loc and isinstance(value, str | int | float | bool):
        message += f" (got {value!r})"
    return message


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    allowed = sorted(model.model_fields) if model else []
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    return (
        f"unknown key {key!r} (allowed: {', '.join(allowed)})"
        if allowed
        else f"unknown key {key!r}"
    )


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc``, to suggest the right key."""
    model: type[BaseModel] | None = RegistryDocument
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _find_model(field.annotation) if field else None
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _find_model(argument)
        if found:
            return found
    return None


def kind_of(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a {type(value).__name__}"


def _raw_tokens(data: Any) -> list[str]:
    """Every token string in the file after substitution, to redact from messages."""
    bots = data.get("bots") if isinstance(data, dict) else None
    if not isinstance(bots, list):
        return []
    return [
        bot["token"] for bot in bots if isinstance(bot, dict) and isinstance(bot.get("token"), str)
    ]
