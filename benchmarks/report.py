"""The benchmark table: one row per measure, a column per contender, ratios, targets."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONTENDER_NAMES = ("botyard", "floor", "aiogram-pymongo", "hand-written")
BASELINE_NAMES = CONTENDER_NAMES[1:]


@dataclass(frozen=True)
class Row:
    """One measure: a value per contender (``None``: not measured), and botyard's target."""

    figure: int
    measure: str
    values: dict[str, float | None]
    digits: int = 0
    target: str = ""
    met: bool | None = None

    def ratio(self, baseline: str) -> float | None:
        mine, theirs = self.values.get("botyard"), self.values.get(baseline)
        if mine is None or theirs is None or theirs == 0:
            return None
        return mine / theirs


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown(rows: list[Row]) -> str:
    """The table, in GitHub markdown."""
    header = ["fig.", "measure", *CONTENDER_NAMES, *(f"botyard / {b}" for b in BASELINE_NAMES)]
    lines = [
        "| " + " | ".join([*header, "target"]) + " |",
        "|" + "---|" * (len(header) + 1),
    ]
    for row in rows:
        cells = [str(row.figure), row.measure]
        cells += [_cell(row.values.get(name), row.digits) for name in CONTENDER_NAMES]
        cells += [_cell(row.ratio(name), 2) for name in BASELINE_NAMES]
        verdict = {True: "met", False: "**missed**", None: ""}[row.met]
        cells.append(f"{row.target}: {verdict}" if row.target else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _at_most(limit: float) -> Callable[[float | None], bool | None]:
    return lambda value: None if value is None else value <= limit


def roundtrip_rows(figure: dict[str, Any]) -> list[Row]:
    counts = figure["counts"]
    # Two for every step that changes state and data; the last step also inserts the
    # completed answers, one round trip of the bot's own that every contender makes.
    targets = {"echo (no FSM use)": 1.0, "last step": 3.0, "whole questionnaire, per update": 2.25}
    rows = []
    for step in figure["steps"]:
        values = {name: counts[name][step] for name in CONTENDER_NAMES}
        limit = targets.get(step, 2.0)
        rows.append(
            Row(
                1,
                f"round trips: {step}",
                values,
                digits=2 if step.startswith("whole") else 0,
                target=f"botyard ≤ {limit:g}",
                met=_at_most(limit)(values["botyard"]),
            )
        )
    return rows


def throughput_rows(figure: dict[str, Any]) -> list[Row]:
    median = figure["median"]
    shape = f"{figure['bots']} bots x {figure['users_per_bot']} users"
    deadline = figure["deadline_seconds"]

    def values(key: str) -> dict[str, float | None]:
        return {name: median[name][key] if name in median else None for name in CONTENDER_NAMES}

    speed = values("updates_per_second")
    ratio = Row(2, "", speed).ratio("aiogram-pymongo")
    cpu = Row(2, "", values("cpu_seconds_per_1000_updates"))
    of_floor, of_pymongo = cpu.ratio("floor"), cpu.ratio("aiogram-pymongo")
    return [
        Row(
            2,
            f"updates/s, {shape}",
            speed,
            digits=1,
            target="≥ 1.5 x aiogram-pymongo",
            met=None if ratio is None else ratio >= 1.5,
        ),
        Row(2, f"% of updates answered within {deadline:.0f} s", values("answered_percent")),
        Row(2, "latency p50, ms", values("p50_ms")),
        Row(2, "latency p99, ms", values("p99_ms")),
        # CPU seconds per 1,000 updates are milliseconds per update.
        Row(
            2,
            "contender CPU ms per update",
            cpu.values,
            2,
            target="≤ 1.25 x floor, ≤ 0.45 x aiogram-pymongo",
            met=None
            if of_floor is None or of_pymongo is None
            else of_floor <= 1.25 and of_pymongo <= 0.45,
        ),
        Row(
            2,
            "database server CPU ms per update",
            values("server_cpu_seconds_per_1000_updates"),
            2,
        ),
    ]


def density_rows(figure: dict[str, Any]) -> list[Row]:
    rows = []
    largest = str(max(figure["sizes"]))
    for size, by_name in figure["results"].items():
        label = f"{int(size):,} bot" + ("s" if size != "1" else "")

        def values(key: str, by_name: dict[str, Any] = by_name) -> dict[str, float | None]:
            return {
                name: by_name.get(name, {}).get("median", {}).get(key) for name in CONTENDER_NAMES
            }

        targeted = size == largest == "10000"
        rss, start, idle = (
            values("rss_mb"),
            values("seconds_to_all_polling"),
            values("idle_cpu_percent"),
        )
        if size != "1":
            rows += [
                Row(
                    3,
                    f"{label}: resident MB",
                    rss,
                    target="≤ 500" if targeted else "",
                    met=_at_most(500)(rss["botyard"]) if targeted else None,
                ),
                Row(
                    3,
                    f"{label}: s until all polling",
                    start,
                    1,
                    target="≤ 15" if targeted else "",
                    met=_at_most(15)(start["botyard"]) if targeted else None,
                ),
            ]
            if figure["idle_seconds"] is None or figure["idle_seconds"] > 0:
                rows += [
                    Row(
                        3,
                        f"{label}: idle CPU, % of a core",
                        idle,
                        2,
                        target="≤ 5" if targeted else "",
                        met=_at_most(5)(idle["botyard"]) if targeted else None,
                    ),
                    Row(3, f"{label}: idle wakeups/s", values("idle_wakeups_per_second"), 1),
                ]
        rows.append(Row(5, f"{label}: s to first answer", values("seconds_to_first_answer"), 1))
    return sorted(rows, key=lambda row: row.figure)


def cleanup_rows(figure: dict[str, Any]) -> list[Row]:
    def only_botyard(value: float) -> dict[str, float | None]:
        return {"botyard": value}

    return [
        Row(4, "cleanup: records removed/s", only_botyard(figure["removed_per_second"])),
        Row(
            4,
            "cleanup: round trips per 1,000 removed",
            only_botyard(figure["round_trips_per_1000_removed"]),
            1,
        ),
    ]


def help_rows(figure: dict[str, Any]) -> list[Row]:
    median = figure["median"]

    def values(key: str) -> dict[str, float | None]:
        return {name: median[name][key] if name in median else None for name in CONTENDER_NAMES}

    return [
        Row(6, "`--help`: s from spawn to exit", values("seconds"), 2),
        Row(6, "`--help`: CPU s", values("cpu_seconds"), 2),
    ]


def build_rows(figures: dict[str, Any]) -> list[Row]:
    builders = {
        "roundtrips": roundtrip_rows,
        "throughput": throughput_rows,
        "density": density_rows,
        "cleanup": cleanup_rows,
        "help": help_rows,
    }
    rows = [row for key, build in builders.items() if key in figures for row in build(figures[key])]
    return sorted(rows, key=lambda row: row.figure)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    memory_mb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mb": memory_mb,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {**asdict(row), "ratios": {f"botyard/{b}": row.ratio(b) for b in BASELINE_NAMES}}
        for row in rows
    ]
