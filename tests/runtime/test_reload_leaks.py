"""Reloads that start and stop bots leave nothing behind: flat /metrics, bounded memory."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import aiohttp

from botyard.emulator import BotAPIEmulator
from botyard.registry.loader import load_registry
from botyard.runtime.supervisor import Supervisor

ECHO = """\
from aiogram import F, Router
from aiogram.types import Message


def router() -> Router:
    echo = Router()

    @echo.message(F.text)
    async def answer(message: Message) -> None:
        await message.answer(message.text or "")

    return echo
"""


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def test_bots_replaced_by_reloads_leave_no_series_and_no_memory_behind(
    bot_api: BotAPIEmulator, mongo_uri: str, database_name: str, tmp_path: Path
) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    path = tmp_path / "botyard.yaml"
    tokens: dict[int, str] = {}

    def registry_with(generation: int) -> None:
        """Two bots: the one added last time, and a new one; the one before is removed."""
        bots = ""
        for number in (generation, generation + 1):
            if number not in tokens:
                tokens[number] = bot_api.add_bot(username=f"gen{number}_bot").token
            bots += (
                f"  - name: gen{number}\n    token: '{tokens[number]}'\n"
                f"    routers: [echo:router]\n    api_server: {bot_api.url}\n"
            )
        path.write_text(
            f"storage:\n  uri: {mongo_uri}\n  database: {database_name}\n"
            f"ops:\n  listen: 127.0.0.1:0\nbots:\n{bots}"
        )

    registry_with(0)
    supervisor = Supervisor(load_registry(path), watch=False)
    running = asyncio.create_task(supervisor.run())

    async def reload_and_use(generation: int) -> None:
        registry_with(generation)
        assert await supervisor.reload()
        token = tokens[generation + 1]
        bot_api.send_message(token, 1, "hi")
        await bot_api.wait_for_reply(token, 1, timeout=30)
        supervisor.metrics.count_webhook(f"gen{generation + 1}", "accepted")

    async def metrics_page() -> str:
        assert supervisor.http is not None
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{supervisor.http.url}/metrics") as response,
        ):
            return await response.text()

    try:
        async with asyncio.timeout(60):
            await supervisor.started.wait()
        for generation in range(1, 11):  # warm up: first imports, caches, pools
            await reload_and_use(generation)
        gc.collect()
        page_before, rss_before = await metrics_page(), rss_bytes()
        for generation in range(11, 61):
            await reload_and_use(generation)
        gc.collect()
        page_after, rss_after = await metrics_page(), rss_bytes()
    finally:
        supervisor.request_stop()
        await running
    assert "gen10" not in page_after
    assert 'bot="gen60"' in page_after
    assert 'bot="gen61"' in page_after
    assert len(page_after) < len(page_before) * 1.05, "series of removed bots pile up"
    growth = rss_after - rss_before
    print(f"50 reloads: RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
    assert growth < 4 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 50 reloads"
