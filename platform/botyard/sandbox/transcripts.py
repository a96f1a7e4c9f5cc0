"""What the sandbox remembers across restarts: each chat's transcript and the added users.

The emulator lives in memory and starts empty, while the bots' FSM state is in
MongoDB: without a transcript of its own, a restarted sandbox would show an
empty chat to a user the FSM panel shows at question 3. So every chat's
transcript (messages, and the sandbox's own notes: handler failures, state
resets) is kept in the registry's database, in the ``sandbox_transcripts``
collection, one document per bot and user; users added on the page are in
``sandbox_users``. Both are the sandbox's alone: ``botyard run`` never reads them.

A transcript is shown as the entries of earlier runs, frozen (their buttons
can no longer be pressed: the emulator that sent them is gone), followed by
this run's messages from the emulator with this run's notes among them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

JSON = dict[str, Any]

TRANSCRIPTS = "sandbox_transcripts"
USERS = "sandbox_users"
#: Most entries kept per chat; older ones are dropped from the stored transcript.
MAX_ENTRIES = 500

ChatKey = tuple[str, int]
"""A chat: the bot's name in the registry and the simulated user's id."""


@dataclass
class Note:
    """Something the sandbox says in a chat, between the messages: a failure, a reset."""

    kind: str
    text: str
    #: The folded part (a traceback), if any.
    details: str = ""
    #: The id of the newest message of this run when the note was made (0: none yet).
    after: int = 0
    date: int = field(default_factory=lambda: int(time.time()))
    key: str = ""

    def view(self) -> JSON:
        return {
            "key": self.key,
            "message_id": None,
            "from": "sandbox",
            "kind": self.kind,
            "text": self.text,
            "details": self.details,
            "date": self.date,
        }


class Transcripts:
    """Every chat's entries: earlier runs' (loaded at start) and this run's notes."""

    def __init__(self) -> None:
        #: This run, told apart from earlier ones in the entries' keys.
        self.run = uuid.uuid4().hex[:8]
        self._earlier: dict[ChatKey, list[JSON]] = {}
        self._notes: dict[ChatKey, list[Note]] = {}

    async def load(self, database: AsyncDatabase[JSON]) -> list[JSON]:
        """Read earlier runs' transcripts; return the users added in earlier runs."""
        async for document in database[TRANSCRIPTS].find({}):
            entries = [_frozen(entry) for entry in document.get("entries", [])]
            self._earlier[(document["bot"], document["user_id"])] = entries
        return [user async for user in database[USERS].find({}, {"_id": 0}).sort("id", 1)]

    def note(self, chat: ChatKey, note: Note, newest_message: int) -> None:
        note.after = newest_message
        notes = self._notes.setdefault(chat, [])
        note.key = f"{self.run}:note:{len(notes) + 1}"
        notes.append(note)

    def entries(self, chat: ChatKey, messages: list[JSON]) -> list[JSON]:
        """The chat as the page shows it: earlier runs, then this run's messages and notes."""
        current: list[JSON] = []
        notes = iter(self._notes.get(chat, []))
        pending = next(notes, None)
        for message in messages:
            while pending is not None and pending.after < message["message_id"]:
                current.append(pending.view())
                pending = next(notes, None)
            current.append({**message, "key": f"{self.run}:{message['message_id']}"})
        while pending is not None:
            current.append(pending.view())
            pending = next(notes, None)
        return [*self._earlier.get(chat, []), *current]

    async def save(self, database: AsyncDatabase[JSON], chat: ChatKey, entries: list[JSON]) -> None:
        bot, user_id = chat
        await database[TRANSCRIPTS].update_one(
            {"_id": f"{bot}:{user_id}"},
            {"$set": {"bot": bot, "user_id": user_id, "entries": entries[-MAX_ENTRIES:]}},
            upsert=True,
        )

    @staticmethod
    async def save_user(database: AsyncDatabase[JSON], user: JSON) -> None:
        await database[USERS].update_one({"_id": user["id"]}, {"$set": user}, upsert=True)


def _frozen(entry: JSON) -> JSON:
    """An entry of an earlier run: shown as it was, its buttons no longer pressable."""
    buttons = [
        [{"text": button.get("text", "")} for button in row] for row in entry.get("buttons", [])
    ]
    return {**entry, "earlier": True, "message_id": None, "buttons": buttons, "keyboard": []}
