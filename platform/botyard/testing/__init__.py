"""A Telegram Bot API emulator for testing bots without Telegram.

Real aiogram bots talk to it over HTTP (``TelegramAPIServer.from_base(emulator.url)``);
tests play the users through :class:`BotAPIEmulator` (async),
:class:`EmulatorThread` (sync) or the HTTP control API under ``/_emulator``.
pytest fixtures live in :mod:`botyard.testing.pytest_plugin`.
"""

from botyard.testing.emulator import BotAPIEmulator
from botyard.testing.errors import (
    BotAPIError,
    ControlError,
    EmulatorStoppedError,
    UnknownBotError,
)
from botyard.testing.events import EmulatorEvent, Subscription
from botyard.testing.state import DeliveryAttempt, EmulatedBot, SimulatedUser
from botyard.testing.thread import EmulatorThread

__all__ = [
    "BotAPIEmulator",
    "BotAPIError",
    "ControlError",
    "DeliveryAttempt",
    "EmulatedBot",
    "EmulatorEvent",
    "EmulatorStoppedError",
    "EmulatorThread",
    "SimulatedUser",
    "Subscription",
    "UnknownBotError",
]
