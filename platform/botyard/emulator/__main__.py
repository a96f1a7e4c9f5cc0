"""``python -m botyard.emulator``: a standalone emulator for manual and out-of-process testing.

Prints the base URL and the generated tokens (emulator tokens, worthless
outside it), then serves until interrupted. Drive it through the HTTP control
API under ``/_emulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from botyard.emulator.emulator import BotAPIEmulator


async def _serve(host: str, port: int, bots: int) -> None:
    emulator = await BotAPIEmulator().start(host, port)
    try:
        print(f"Bot API emulator: {emulator.url}  (control API: {emulator.url}/_emulator)")
        for _ in range(bots):
            bot = emulator.add_bot()
            print(f"@{bot.username}  id={bot.id}  token={bot.token}")
        print("Ctrl-C stops it.", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m botyard.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--bots", type=int, default=1, help="bots to create at start")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.bots))


if __name__ == "__main__":
    main()
