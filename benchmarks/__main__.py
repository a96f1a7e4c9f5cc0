"""``python -m benchmarks``: every figure, every contender, one table and ``results.json``.

    python -m benchmarks            # the full run (about 14 minutes on 2 cores)
    python -m benchmarks --quick    # a smaller run, under a minute
    python -m benchmarks --only roundtrips,cleanup --uri mongodb://localhost:27017

Without ``--uri`` (or ``MONGODB_URI``) an in-memory SecantusDB is started. The
Bot API is the ``botyard.emulator`` emulator, in this process; every contender
runs as its own process. Ratios are botyard / baseline; absolute numbers depend
on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import cleanup, density, help_time, roundtrips, throughput
from benchmarks.contenders import CONTENDERS, FLOOR
from benchmarks.harness import World, open_world
from benchmarks.report import build_rows, machine, markdown, rows_json

FIGURES = ("roundtrips", "throughput", "density", "cleanup", "help")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


@dataclass
class Settings:
    """How big each figure is; ``--quick`` and the command-line overrides change it."""

    #: Runs of the quick measures (startup with one bot, cleanup).
    runs: int = 3
    #: Rounds of figure 2, each running every contender once (medians of these).
    throughput_runs: int = 3
    #: Figure 2: seconds a contender gets to answer everything; what it did by then counts.
    #: Long enough for every contender to answer every update, so CPU ratios compare
    #: complete work (the share answered is shown as a check).
    throughput_deadline: float = 300.0
    #: With 20 users per bot figure 2 alone would take about 10 minutes once every contender
    #: answers everything; 10 users each keep the full run within 15.
    bots: int = 50
    users: int = 10
    density_sizes: list[int] = field(default_factory=lambda: [1, 10, 1000, 10000])
    #: Figure 3's idle window; ``None``: one long-poll timeout of each contender.
    idle_seconds: float | None = None
    #: Figure 3: seconds between every bot polling and the idle window (the start's tail).
    settle_seconds: float = 5.0
    baseline_max_bots: int = 1000
    cleanup_records: int = 2000


QUICK = Settings(
    runs=1,
    throughput_runs=1,
    bots=5,
    users=4,
    density_sizes=[5],
    idle_seconds=1.0,
    settle_seconds=0.0,
    cleanup_records=500,
)


async def run_figures(world: World, only: tuple[str, ...], settings: Settings) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name in only:
        started = time.perf_counter()
        print(f"figure {name}...", file=sys.stderr, flush=True)
        if name == "roundtrips":
            figures[name] = await roundtrips.measure(world)
        elif name == "throughput":
            load = throughput.Load(settings.bots, settings.users)
            figures[name] = await throughput.measure(
                world, CONTENDERS, load, settings.throughput_runs, settings.throughput_deadline
            )
        elif name == "density":
            figures[name] = await density.measure(
                world,
                # The floor is a yardstick for CPU per update; idle and start compare with aiogram.
                tuple(contender for contender in CONTENDERS if contender is not FLOOR),
                settings.density_sizes,
                runs=settings.runs,
                idle_seconds=settings.idle_seconds,
                settle_seconds=settings.settle_seconds,
                baseline_max_bots=settings.baseline_max_bots,
            )
        elif name == "cleanup":
            figures[name] = await cleanup.measure(
                world.uri, settings.cleanup_records, settings.runs, batch_size=1000
            )
        elif name == "help":
            figures[name] = await help_time.measure(world, CONTENDERS, settings.runs)
        figures[name]["wall_seconds"] = time.perf_counter() - started
    return figures


async def main(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    uri = args.uri or os.environ.get("MONGODB_URI") or None
    with tempfile.TemporaryDirectory(prefix="botyard-bench-") as scratch:
        async with open_world(Path(scratch), uri) as world:
            figures = await run_figures(world, args.only, settings)
    rows = build_rows(figures)
    table = markdown(rows)
    results = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "server": "MongoDB at the given URI" if uri else "SecantusDB (in memory)",
        "machine": machine(),
        "settings": dataclasses.asdict(settings),
        "wall_seconds": time.perf_counter() - started,
        "figures": figures,
        "rows": rows_json(rows),
        "table": table,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"\n{results['wall_seconds']:.0f}s; written to {args.output}")
    return 0


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--uri", help="MongoDB URI (default: MONGODB_URI, else SecantusDB)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to run, of: {', '.join(FIGURES)}",
    )
    sizes = parser.add_argument_group("sizes (override the full or --quick defaults)")
    sizes.add_argument("--runs", type=int, help="runs of the quick measures, medians reported")
    sizes.add_argument("--throughput-runs", type=int, help="figure 2: rounds of all contenders")
    sizes.add_argument("--bots", type=int, help="figure 2: bots")
    sizes.add_argument("--users", type=int, help="figure 2: users per bot")
    sizes.add_argument("--throughput-deadline", type=float, help="figure 2: seconds per run")
    sizes.add_argument("--density-sizes", help="figures 3 and 5: comma-separated bot counts")
    sizes.add_argument(
        "--idle-seconds",
        type=float,
        help="figure 3: idle CPU window (default: each contender's long-poll timeout)",
    )
    sizes.add_argument("--baseline-max-bots", type=int, help="figure 3: largest baseline size")
    sizes.add_argument("--cleanup-records", type=int, help="figure 4: stale records")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(only) - set(FIGURES))
    if unknown or not only:
        parser.error(f"--only: unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    args.only = only
    settings = dataclasses.replace(QUICK) if args.quick else Settings()
    overridable = (
        "runs",
        "throughput_runs",
        "throughput_deadline",
        "bots",
        "users",
        "idle_seconds",
    )
    for name in (*overridable, "baseline_max_bots", "cleanup_records"):
        value = getattr(args, name)
        if value is not None:
            if value < (0 if name == "idle_seconds" else 1):
                parser.error(f"--{name.replace('_', '-')} must be positive, not {value}")
            setattr(settings, name, value)
    if args.density_sizes is not None:
        try:
            settings.density_sizes = [int(size) for size in args.density_sizes.split(",")]
        except ValueError:
            parser.error(
                f"--density-sizes: expected numbers like 10,1000, not {args.density_sizes!r}"
            )
        if any(size < 1 for size in settings.density_sizes):
            parser.error("--density-sizes: every size must be at least 1 bot")
    if settings.cleanup_records < cleanup.BOTS:
        parser.error(f"--cleanup-records must be at least {cleanup.BOTS} (one per bot)")
    return args, settings


if __name__ == "__main__":
    arguments, chosen = parse_args()
    raise SystemExit(asyncio.run(main(arguments, chosen)))
