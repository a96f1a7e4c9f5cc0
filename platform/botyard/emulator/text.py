"""Message text as Telegram stores it: entities for commands, HTML markup removed."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


def utf16_length(text: str) -> int:
    """Telegram measures entity offsets and lengths in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def command_entities(text: str) -> list[dict[str, Any]]:
    """A ``bot_command`` entity for a leading ``/command``, so aiogram's Command filters match."""
    if not text.startswith("/") or len(text) < 2 or text[1].isspace():
        return []
    command = text.split(maxsplit=1)[0]
    return [{"type": "bot_command", "offset": 0, "length": utf16_length(command)}]


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(text: str, parse_mode: str | None) -> str:
    """The text a user sees: HTML tags removed and character references decoded.

    Tests then compare against what a user reads, whatever markup the bot used.
    Markdown modes are kept verbatim: their escaping rules are not emulated.
    """
    if parse_mode is None or parse_mode.lower() != "html":
        return text
    collector = _TextCollector()
    collector.feed(text)
    collector.close()
    return "".join(collector.parts)
