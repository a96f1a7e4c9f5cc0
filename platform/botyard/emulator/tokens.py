"""Bot tokens in Telegram's shape, and how to mention one without leaking it."""

from __future__ import annotations

import re
import secrets
import string

TOKEN_PATTERN = re.compile(r"^(\d{1,20}):[A-Za-z0-9_-]+$")
"""What the emulator accepts: aiogram derives the bot id from the digits before ``:``."""

_SECRET_ALPHABET = string.ascii_letters + string.digits + "_-"


def generate_token(bot_id: int) -> str:
    """A token shaped like Telegram's: ``<id>:AA`` and 33 more URL-safe characters."""
    return f"{bot_id}:AA" + "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(33))


def generate_bot_id(taken: set[int]) -> int:
    """A 10-digit bot id, as recent real bots have, that no other emulated bot uses."""
    while True:
        bot_id = 1_000_000_000 + secrets.randbelow(7_000_000_000)
        if bot_id not in taken:
            return bot_id


def bot_id_of(token: str) -> int:
    """The bot id a token carries; ``ValueError`` when the token is not in Telegram's shape."""
    match = TOKEN_PATTERN.match(token)
    if match is None:
        raise ValueError("a bot token looks like '<digits>:<letters, digits, _ or ->'")
    return int(match.group(1))


def mask_token(token: str) -> str:
    """The token with its secret part hidden, for error messages and logs."""
    bot_id, _, _ = token.partition(":")
    return f"{bot_id}:***"
