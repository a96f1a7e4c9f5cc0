"""Figure 6: how long each contender's program takes to print its ``--help``.

For botyard that is ``botyard --help``. For the plain-aiogram contenders it is
``python -m benchmarks.aiogram_app --help``: their program imports aiogram
(and PyMongo) at the top, as aiogram programs are written, so printing its
usage costs those imports; it is the same program for each of them, measured
for each all the same. Wall-clock seconds from spawning the process to its
exit, and the CPU seconds it used; medians of ``runs``, contenders alternating.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import subprocess
import time
from typing import Any

from benchmarks.harness import Contender, World, contender_env


async def run_once(world: World, contender: Contender) -> dict[str, float]:
    argv = contender.help_command()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=world.workdir,
        env=contender_env({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    output, _ = await process.communicate()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0 or b"usage" not in output.lower():
        raise RuntimeError(
            f"{contender.name}: {' '.join(argv[1:])} exited with {process.returncode}: "
            + output.decode(errors="replace")[-500:]
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu}


async def measure(world: World, contenders: tuple[Contender, ...], runs: int) -> dict[str, Any]:
    """``runs`` rounds, each running every contender's ``--help`` once (order rotating)."""
    results: dict[str, list[dict[str, float]]] = {c.name: [] for c in contenders}
    for run in range(runs):
        shift = run % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            results[contender.name].append(await run_once(world, contender))
    return {
        "commands": {c.name: c.help_command()[1:] for c in contenders},
        "runs": results,
        "median": {
            name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            for name, rows in results.items()
        },
    }
