"""Operations through ``botyard run``: JSON log lines naming the update they are about, and
per-bot aiogram defaults and middlewares from the registry."""

from __future__ import annotations

import json
from typing import Any

from e2e import World

DEFAULTS = """\
  bot_properties:
    parse_mode: HTML
  middlewares:
    - bots.greeter.middlewares:LanguageMiddleware
"""


def test_json_logs_bot_properties_and_middlewares(world: World) -> None:
    world.write({"slow": "slowbot:router", "greeter": "bots.greeter:router"}, extra=DEFAULTS)
    world.emulator.user(4343, "Ada", language_code="de")
    with world.botyard("--log-format", "json") as botyard:
        world.wait_all_running(botyard, ["slow", "greeter"])
        sent = world.say("slow", 4242, "slow 0")
        assert world.reply("slow", 4242) == "done slow 0"
        world.say("greeter", 4343, "hi")
        # The handler sends "<b>Hallo</b>, ..." with no parse_mode of its own: the user
        # reads no tags, so parse_mode HTML came from defaults.bot_properties; "de" is the
        # LanguageMiddleware's, from the user's Telegram language.
        assert world.reply("greeter", 4343) == "Hallo, you write in de."
        botyard.wait_for_log("slow handler started: slow 0")
        assert botyard.stop() == 0

    lines: list[dict[str, Any]] = []
    for line in botyard.output.splitlines():
        lines.append(json.loads(line))  # every line, botyard's and the bot's, is JSON
    [started] = [line for line in lines if line["message"] == "slow handler started: slow 0"]
    assert started["level"] == "WARNING"
    assert started["logger"] == "slowbot"
    assert started["bot"] == "slow"
    assert started["update_id"] == sent["update_id"]
    assert started["chat_id"] == 4242
    assert any(line["message"].startswith("bot=slow status=running") for line in lines)
