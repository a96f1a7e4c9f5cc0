"""How the registry's bots become bots of the in-process Bot API emulator.

The sandbox runs the registry exactly as ``botyard run`` does, except that no
bot may reach Telegram: every bot gets a generated emulator token (the file's
real tokens are dropped before anything sees them) and its ``api_server``
points at the emulator. Tokens are kept per bot name, so a hot reload sees an
unchanged bot as unchanged and leaves it running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from aiogram import Bot

from botyard.emulator import BotAPIEmulator, EmulatedBot
from botyard.emulator.tokens import bot_id_of, generate_bot_id, generate_token
from botyard.registry.loader import load_registry
from botyard.registry.models import BotConfig, Registry
from botyard.runtime.http_sessions import SessionPool

BotFactory = Callable[[BotConfig, SessionPool], Bot]


class EmulatedRegistryLoader:
    """Loads the registry file for the sandbox; the Supervisor calls it again on reload.

    Called from a worker thread on reload, so it touches only its own state
    (under a lock) and never the emulator, which belongs to the event loop.
    """

    def __init__(self, emulator_url: str) -> None:
        self._url = emulator_url
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> Registry:
        """The registry with every bot on the emulator, polling, under a generated token.

        A token whose ``${VAR}`` is unset is no error here. The file's tokens go
        nowhere, not even to the log redactor (a token-shaped string is masked
        in logs anyway). The ``webhook`` and ``ops`` sections are dropped: the
        emulator delivers by polling, and the sandbox serves its own page.
        """
        registry = load_registry(path, require_tokens=False)
        emulated = registry.with_tokens(self._tokens_for(bot.name for bot in registry.bots))
        bots = tuple(
            bot.model_copy(update={"api_server": self._url, "mode": "polling"})
            for bot in emulated.bots
        )
        return emulated.model_copy(update={"bots": bots, "webhook": None, "ops": None})

    def _tokens_for(self, names: Iterable[str]) -> dict[str, str]:
        """Each name's token, generated on first sight and kept for later reloads."""
        chosen: dict[str, str] = {}
        with self._lock:
            for name in names:
                if name not in self._tokens:
                    taken = {bot_id_of(token) for token in self._tokens.values()}
                    self._tokens[name] = generate_token(generate_bot_id(taken))
                chosen[name] = self._tokens[name]
        return chosen


def emulated_bot_factory(emulator: BotAPIEmulator) -> BotFactory:
    """The Supervisor's ``bot_factory``: registers the bot with the emulator, then builds it.

    Runs on the event loop (the Supervisor calls it while starting a bot),
    where the emulator may be changed. A bot whose token was revoked stays
    revoked when it restarts, as it would in Telegram.
    """

    def make(config: BotConfig, sessions: SessionPool) -> Bot:
        register(emulator, config)
        return Bot(config.token_value, session=sessions.acquire(config.name, config.api_server))

    return make


def register(emulator: BotAPIEmulator, config: BotConfig) -> EmulatedBot:
    """The emulator's bot for ``config``, added under the bot's generated token if new.

    Users can write to a registered bot before it polls: the emulator keeps
    their updates until it does, as Telegram would.
    """
    token = config.token_value
    known = next((bot for bot in emulator.bots if bot.token == token), None)
    if known is not None:
        return known
    return emulator.add_bot(_free_username(emulator, config.name), token, first_name=config.name)


def _free_username(emulator: BotAPIEmulator, name: str) -> str:
    """``<name>_bot`` (Telegram usernames allow no ``-``), numbered if already taken."""
    base = f"{name.replace('-', '_')}_bot"
    taken = {bot.username.lower() for bot in emulator.bots}
    candidate, number = base, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{base}{number}"
    return candidate
