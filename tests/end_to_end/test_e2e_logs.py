"""``botyard run --log-format json``: each line a JSON object naming the update it is about."""

from __future__ import annotations

import json
from typing import Any

from e2e import World


def test_json_log_lines_name_the_bot_update_and_chat(world: World) -> None:
    world.write({"slow": "slowbot:router"})
    with world.botyard("--log-format", "json") as botyard:
        world.wait_all_running(botyard, ["slow"])
        sent = world.say("slow", 4242, "slow 0")
        assert world.reply("slow", 4242) == "done slow 0"
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
