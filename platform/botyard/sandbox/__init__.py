"""``botyard sandbox``: chat with every bot of a registry in a browser, no Telegram needed.

The registry runs under the same Supervisor, storage and handlers as ``botyard
run``; the Telegram side is the in-process Bot API emulator (on a loopback
port of its own), each bot under a generated token. The page, served at the
printed URL, shows the bot list with live status, a chat per bot and simulated
user, and the user's FSM record straight from MongoDB.

Simulated users 1001 (Alice), 1002 (Bob) and 1003 (Carol) exist from the start;
a user's id is also their private chat's id. ``{bot}`` below is the bot's name
in the registry, ``{user}`` a simulated user's id.

JSON API (answers are JSON; a POST must send ``Content-Type: application/json``,
which keeps other web sites from posting to it; errors are ``{"error": "<message>"}``
with status 400 bad input, 404 unknown bot, user or endpoint, 409 bot disabled,
not started or its token revoked, 415 not JSON, 503 database starting):

``GET /api/bots``
    ``{"registry": "botyard.yaml", "storage": "ready" | "starting" | "stopping" |
    "unreachable: ...", "reload_rejected": null | "<errors>", "bots": [{"name",
    "enabled", "status", "detail", "username", "bot_id", "revoked", "received",
    "handled", "errors", "fsm_records"}]}``, every bot of the file in file order.
    ``status`` is a runner status (``starting``, ``running``, ``backing_off``,
    ``unauthorized``, ``conflict``, ``stopped``), ``disabled``, ``not_running``
    (the bot could not start; ``detail`` says why), or ``stopping`` (the sandbox
    stops: everything else is as last shown). ``fsm_records`` is ``null`` while
    the database is not ready. ``reload_rejected`` holds the errors of the last
    saved registry that was rejected, until one is accepted.
``GET /api/users``
    ``{"users": [{"id", "is_bot", "first_name", ...}]}``.
``POST /api/users`` with ``{"first_name": "Dave"}``
    201 and the new user (the next free id).
``POST /api/bots/{bot}/users/{user}/messages`` with ``{"text": "/start"}``
    The user writes to the bot (a leading ``/command`` is a command):
    ``{"update_id": 1, "message_id": 1}``. Text Telegram could not carry
    (empty, longer than 4096 characters, not valid Unicode) is a 400.
``GET /api/bots/{bot}/users/{user}/chat[?wait=SECONDS[&after=MESSAGE_ID]]``
    ``{"bot", "user": {...}, "messages": [{"key", "message_id", "from": "user" |
    "bot", "text", "date", "edited", "previous_texts", "buttons": [[{"text",
    "callback_data" | "url"}]], "keyboard": [["text"]]}], "fsm": {"state",
    "data", "updated_at", "expires_at", "stored"}, "documents": [{"collection",
    "document"}], "callback_answer": null | {"text", "show_alert", "url"},
    "problem": null | "<why the bot cannot answer>"}``. ``messages`` is the
    transcript: entries of earlier runs come first, with ``"earlier": true`` and
    ``message_id`` ``null``; the sandbox's own notes have ``"from": "sandbox"``,
    ``kind`` (``failure``: a handler raised, ``details`` is the traceback;
    ``reset``) and ``message_id`` ``null``. ``documents`` are what the bot saved
    for the user (documents of the bots' own collections with its ``bot_id`` and
    the ``user_id``). ``callback_answer`` is the bot's answer to
    the user's latest button press (``null`` until it answers). With ``wait`` (at most 60)
    it first waits for a bot message newer than ``after`` (default: the user's
    last message), then answers in any case.
``POST /api/bots/{bot}/users/{user}/buttons`` with ``{"message_id": 3, "callback_data": "inc"}``
    The user presses an inline button: ``{"update_id", "callback_query_id"}``.
``POST /api/bots/{bot}/users/{user}/reset``
    Clears the user's FSM state and data, and marks it in the chat; answers the
    ``fsm`` object as it is now.
``GET /api/stream[?bot={bot}&user={user}]``
    Server-sent events, each sent when it changed: ``bots`` (as ``GET
    /api/bots``), ``chat`` (as the chat endpoint) and ``problem`` (``{"error"}``
    when the chosen bot or user does not exist).

The page itself is ``/``, ``/bots/{bot}`` or ``/bots/{bot}/users/{user}``; a URL
naming an unknown bot or user answers 404 and the page says which are known.
"""

from botyard.sandbox.service import DEFAULT_USERS, Sandbox, SandboxError
from botyard.sandbox.views import PageError

__all__ = ["DEFAULT_USERS", "PageError", "Sandbox", "SandboxError"]
