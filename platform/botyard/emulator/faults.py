"""Faults and flood limits the emulator imposes on Bot API calls made over HTTP.

A :class:`Fault` answers chosen calls the way a struggling Telegram does:
``429`` with ``retry_after``, a ``5xx``, a connection closed without an answer
(``drop``) or a request that hangs and is then closed (``timeout``). A faulted
call is never processed, so a client that retries it causes no duplicate; a
real connection lost *after* Telegram processed the call is not emulated.

:class:`FloodLimits` makes the emulator refuse, with ``429``, sends beyond
Telegram's documented limits (per bot, per chat, per group). Each limit is a
rate with a burst, checked the way a token bucket is (GCRA); ``tolerance``
forgives a send that arrives slightly early, as the network shifts sends that
a client spaced exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, get_args

from botyard.emulator.errors import BotAPIError, ControlError
from botyard.emulator.params import Params
from botyard.emulator.state import JSON, EmulatedBot
from botyard.errors import BotyardError

FaultKind = Literal["429", "5xx", "drop", "timeout"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

FLOOD_LIMITED_METHODS = frozenset({"sendMessage", "editMessageText"})
"""The methods the emulator implements that send to a chat, hence count against flood limits."""


class DropConnection(BotyardError):
    """Close the caller's connection without an answer; ``hang`` seconds first (a timeout)."""

    def __init__(self, hang: float = 0.0) -> None:
        super().__init__("connection dropped by an injected fault")
        self.hang = hang


def _chat_of(params: Params) -> int | None:
    try:
        return params.chat_id() if "chat_id" in params else None
    except BotAPIError:
        return None


@dataclass(eq=False)
class Fault:
    """One injection rule; build it with :meth:`BotAPIEmulator.add_fault`.

    A call matches when its method is in ``methods`` (all methods when
    ``None``), its bot is ``bot_id`` and its ``chat_id`` is ``chat_id`` (each
    when set). Of the matching calls, every ``every``-th one is struck, or each
    with ``probability`` (a ``random.Random(seed)`` decides); with neither,
    every match is struck. ``times`` caps how many are struck in all.
    """

    id: int
    kind: FaultKind
    methods: frozenset[str] | None = None
    bot_id: int | None = None
    chat_id: int | None = None
    every: int | None = None
    probability: float | None = None
    seed: int | None = None
    retry_after: int = 1
    status: int = 502
    hang: float = 65.0
    times: int | None = None
    matched: int = 0
    injected: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ControlError(problem)
        self._random = random.Random(self.seed)

    def _problem(self) -> str | None:
        if self.kind not in FAULT_KINDS:
            return f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}"
        if self.every is not None and self.probability is not None:
            return "give either every or probability, not both"
        if self.every is not None and self.every < 1:
            return f"every must be at least 1, not {self.every}"
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            return f"probability must be between 0 and 1, not {self.probability}"
        if self.retry_after < 1:
            return f"retry_after must be at least 1 second, not {self.retry_after}"
        if not 500 <= self.status <= 599:
            return f"status must be a 5xx HTTP status, not {self.status}"
        if self.hang <= 0:
            return f"hang must be a positive number of seconds, not {self.hang}"
        if self.times is not None and self.times < 1:
            return f"times must be at least 1, not {self.times}"
        return None

    def strikes(self, bot: EmulatedBot, method: str, params: Params) -> bool:
        """Count the call if it matches; whether this one is faulted."""
        if self.times is not None and self.injected >= self.times:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.bot_id is not None and bot.id != self.bot_id:
            return False
        if self.chat_id is not None and _chat_of(params) != self.chat_id:
            return False
        self.matched += 1
        if self.every is not None:
            hit = self.matched % self.every == 0
        else:
            hit = self.probability is None or self._random.random() < self.probability
        if hit:
            self.injected += 1
        return hit

    def fail(self) -> None:
        """Raise what the struck call gets: a Bot API error, or a dropped connection."""
        if self.kind == "429":
            raise BotAPIError.too_many_requests(self.retry_after)
        if self.kind == "5xx":
            raise BotAPIError(self.status, HTTPStatus(self.status).phrase)
        raise DropConnection(self.hang if self.kind == "timeout" else 0.0)

    def as_json(self) -> JSON:
        """The rule and its counts, as the control API shows it."""
        shown: JSON = {
            "id": self.id,
            "kind": self.kind,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "bot_id": self.bot_id,
            "chat_id": self.chat_id,
            "every": self.every,
            "probability": self.probability,
            "seed": self.seed,
            "times": self.times,
            "matched": self.matched,
            "injected": self.injected,
        }
        if self.kind == "429":
            shown["retry_after"] = self.retry_after
        elif self.kind == "5xx":
            shown["status"] = self.status
        elif self.kind == "timeout":
            shown["hang"] = self.hang
        return shown


@dataclass(frozen=True)
class FloodLimits:
    """Telegram's documented flood limits, in messages per second, each with a burst.

    Defaults: about 30 messages a second per bot, 1 a second per chat and 20 a
    minute per group (a chat with a negative id), as Telegram's FAQ states;
    ``burst`` sends may go at once before a rate applies.
    """

    per_bot: float = 30.0
    per_chat: float = 1.0
    per_group: float = 20 / 60
    burst: int = 3
    tolerance: float = 0.25
    """Seconds a send may arrive ahead of its slot and still pass."""

    def __post_init__(self) -> None:
        for name in ("per_bot", "per_chat", "per_group"):
            if not getattr(self, name) > 0:
                raise ControlError(f"{name} must be a positive rate, not {getattr(self, name)}")
        if self.burst < 1:
            raise ControlError(f"burst must be at least 1, not {self.burst}")
        if self.tolerance < 0:
            raise ControlError(f"tolerance must not be negative, not {self.tolerance}")

    def as_json(self) -> JSON:
        """The limits as the control API shows them."""
        return {
            "per_bot": self.per_bot,
            "per_chat": self.per_chat,
            "per_group": self.per_group,
            "burst": self.burst,
            "tolerance": self.tolerance,
        }


Scope = tuple[str, int | None]
"""``("bot", None)``, ``("chat", chat_id)`` or ``("group", chat_id)``."""


@dataclass
class FloodGate:
    """Applies :class:`FloodLimits` to one emulator's bots: when each scope's next send is due."""

    limits: FloodLimits
    _due: dict[tuple[int, Scope], float] = field(default_factory=dict)

    def _scopes(self, chat_id: int | None) -> list[tuple[Scope, float]]:
        scopes: list[tuple[Scope, float]] = [(("bot", None), self.limits.per_bot)]
        if chat_id is not None:
            scopes.append((("chat", chat_id), self.limits.per_chat))
            if chat_id < 0:
                scopes.append((("group", chat_id), self.limits.per_group))
        return scopes

    def admit(self, bot: EmulatedBot, method: str, params: Params, now: float) -> None:
        """Count the send, or raise 429 (counting nothing) if a scope's limit is exceeded."""
        scopes = self._scopes(_chat_of(params))
        late: list[tuple[float, str]] = []
        for scope, rate in scopes:
            interval = 1.0 / rate
            due = self._due.get((bot.id, scope), now)
            early = due - (self.limits.burst - 1) * interval - self.limits.tolerance - now
            if early > 0:
                late.append((early, scope[0]))
        if late:
            wait, scope_name = max(late)
            bot.refused[(method, scope_name)] += 1
            raise BotAPIError.too_many_requests(max(1, math.ceil(wait)))
        for scope, rate in scopes:
            key = (bot.id, scope)
            self._due[key] = max(self._due.get(key, now), now) + 1.0 / rate


def counts_report(bot: EmulatedBot) -> dict[str, Any]:
    """``{"injected": {method: {kind: n}}, "refused": {method: {scope: n}}}`` for one bot."""
    report: dict[str, dict[str, dict[str, int]]] = {"injected": {}, "refused": {}}
    for section, counter in (("injected", bot.injected), ("refused", bot.refused)):
        for (method, kind), count in sorted(counter.items()):
            report[section].setdefault(method, {})[kind] = count
    return report
