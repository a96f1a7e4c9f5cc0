"""Smoke test of ``python -m benchmarks``: every figure, every contender, at a tiny size.

Timings are never asserted (they depend on the machine); the shape of
``results.json`` and the round-trip counts, which do not, are asserted exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks import density
from benchmarks.contenders import AIOGRAM_PYMONGO, BOTYARD, HAND_WRITTEN

from botyard.runtime.runner import POLLING_TIMEOUT

REPO = Path(__file__).resolve().parent.parent
CONTENDERS = ["botyard", "floor", "aiogram-pymongo", "hand-written"]
#: The floor is a yardstick for CPU per update: figures 3 and 5 leave it out.
IDLE_CONTENDERS = ["botyard", "aiogram-pymongo", "hand-written"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

#: Round trips per update, per contender, in the order of benchmarks.roundtrips.STEPS.
EXPECTED_ROUND_TRIPS = {
    "botyard": {
        "echo (no FSM use)": 1,
        "/start": 2,
        "questionnaire step": 2,
        "second step": 2,
        "last step": 3,  # read, insert of the answers (the bot's own), delete
        "whole questionnaire, per update": 2.25,
    },
    "floor": {  # MemoryStorage: only the bot's own insert of the answers
        "echo (no FSM use)": 0,
        "/start": 0,
        "questionnaire step": 0,
        "second step": 0,
        "last step": 1,
        "whole questionnaire, per update": 0.25,
    },
    "aiogram-pymongo": {
        "echo (no FSM use)": 1,
        "/start": 4,  # get_state twice, set_data({}) as find_one_and_update, set_state
        "questionnaire step": 3,
        "second step": 3,
        "last step": 6,  # get_state, get_data, insert, clear: two find_one_and_update + delete
        "whole questionnaire, per update": 4.0,
    },
    "hand-written": {
        "echo (no FSM use)": 1,
        "/start": 4,
        "questionnaire step": 4,  # get_state, get_data + set_data (update_data), set_state
        "second step": 4,
        "last step": 5,  # get_state, get_data, insert, set_state(None), set_data({})
        "whole questionnaire, per update": 4.25,
    },
}


@pytest.fixture(scope="module")
def results(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "results.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--uri",
        mongo_uri,
        "--output",
        str(output),
        "--runs",
        "1",
        "--bots",
        "2",
        "--users",
        "2",
        "--density-sizes",
        "1,2",
        "--idle-seconds",
        "0.5",
        "--cleanup-records",
        "20",
    ]
    finished = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=420, check=False
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    data: dict[str, Any] = json.loads(output.read_text())
    data["stdout"] = finished.stdout
    return data


def test_round_trips_are_exact(results: dict[str, Any]) -> None:
    assert results["figures"]["roundtrips"]["counts"] == EXPECTED_ROUND_TRIPS
    rows = [row for row in results["rows"] if row["figure"] == 1]
    assert len(rows) == 6
    assert all(row["met"] for row in rows), rows


def test_throughput_ran_every_contender(results: dict[str, Any]) -> None:
    figure = results["figures"]["throughput"]
    assert (figure["bots"], figure["users_per_bot"], figure["updates_per_run"]) == (2, 2, 16)
    assert set(figure["runs"]) == set(CONTENDERS)
    for name in CONTENDERS:
        [run] = figure["runs"][name]
        assert run["updates"] == run["answered"] == 16
        assert run["answered_percent"] == 100
        assert run["updates_per_second"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["server_cpu_seconds_per_1000_updates"] is None  # an external server


def test_density_and_startup_ran_every_contender_at_every_size(results: dict[str, Any]) -> None:
    figure = results["figures"]["density"]
    assert figure["sizes"] == [1, 2]
    for size in ("1", "2"):
        assert figure["results"][size].keys() == set(IDLE_CONTENDERS)
        for name in IDLE_CONTENDERS:
            median = figure["results"][size][name]["median"]
            assert median["bots"] == int(size)
            assert median["all_polling"] is True
            assert median["seconds_to_first_answer"] > 0
            assert median["rss_mb"] > 10
    # the idle window is measured from two bots on, once per size
    assert "idle_cpu_percent" not in figure["results"]["1"]["botyard"]["median"]
    for name in IDLE_CONTENDERS:
        idle = figure["results"]["2"][name]["median"]
        assert idle["idle_seconds"] == 0.5
        assert idle["idle_cpu_percent"] >= 0
        assert idle["idle_wakeups_per_second"] >= 0
    assert any(row["measure"] == "2 bots: idle wakeups/s" for row in results["rows"])


def test_the_idle_window_is_one_long_poll_of_each_contender_by_default() -> None:
    """Botyard's long poll waits 30 s, aiogram's 10 s: each is measured over its own."""
    assert density.long_poll_seconds(BOTYARD) == POLLING_TIMEOUT == 30
    assert density.long_poll_seconds(AIOGRAM_PYMONGO) == 10
    assert density.long_poll_seconds(HAND_WRITTEN) == 10


def test_cleanup_counts_its_round_trips(results: dict[str, Any]) -> None:
    figure = results["figures"]["cleanup"]
    assert figure["stale_records"] == 20
    # per bot: one query for stale ids, one delete, one query for expiries to realign
    assert figure["round_trips_by_command"] == {"delete": 10, "find": 20}
    assert figure["round_trips_per_1000_removed"] == 1500


def test_table_has_every_contender_and_ratio(results: dict[str, Any]) -> None:
    header = results["stdout"].splitlines()[0]
    ratios = [f"botyard / {name}" for name in CONTENDERS[1:]]
    for column in [*CONTENDERS, *ratios, "target"]:
        assert f" {column} |" in header
    assert results["table"] in results["stdout"]
    figures = {row["figure"] for row in results["rows"]}
    assert figures == {1, 2, 3, 4, 5, 6}
    [cpu] = [row for row in results["rows"] if row["measure"] == "contender CPU ms per update"]
    assert set(cpu["ratios"]) == {f"botyard/{name}" for name in CONTENDERS[1:]}
    assert cpu["met"] is not None  # judged on botyard / floor and botyard / aiogram-pymongo
    assert results["mode"] == "quick"
    assert results["machine"]["cpus"] >= 1


def test_help_ran_every_contender(results: dict[str, Any]) -> None:
    figure = results["figures"]["help"]
    assert figure["commands"]["botyard"] == ["-m", "botyard", "--help"]
    for name in CONTENDERS[1:]:
        assert figure["commands"][name] == ["-m", "benchmarks.aiogram_app", "--help"]
    for name in CONTENDERS:
        [run] = figure["runs"][name]
        assert run["seconds"] > 0
        assert run["cpu_seconds"] > 0


def test_metrics_size_measures_both_modes(mongo_uri: str, tmp_path: Path) -> None:
    output = tmp_path / "metrics.json"
    command = [sys.executable, "-m", "benchmarks.metrics_size", "--uri", mongo_uri]
    command += ["--bots", "3", "--scrapes", "2", "--active", "2", "--json", str(output)]
    finished = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=420, check=False
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    per_bot, platform = json.loads(output.read_text())
    assert (per_bot["bots"], per_bot["per_bot"], platform["per_bot"]) == (3, True, False)
    # 19 series per idle bot, 15 more per bot with a latency histogram (a blocked loop
    # may add one more, labelled with no bot)
    assert per_bot["series_with_bot_label"] >= 3 * 19 + 2 * 15
    assert platform["series_with_bot_label"] == 0
    assert platform["bytes"] < per_bot["bytes"]
    assert "| 3 | 2 | off |" in finished.stdout


def test_scrape_loop_measures_the_loop_in_both_modes() -> None:
    command = [sys.executable, "-m", "benchmarks.scrape_loop", "--bots", "600", "--renders", "1"]
    finished = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = [
        line.strip("| ").split(" | ")
        for line in finished.stdout.splitlines()
        if line.startswith("| 600 ")
    ]
    assert [row[1] for row in rows] == ["on", "off"]
    per_bot, platform = (int(row[2].replace(",", "")) for row in rows)
    assert per_bot > 600 * 19 * 40 > platform  # 19 series per idle bot, some 50 bytes each
    for row in rows:
        assert float(row[3]) > 0, "the copy runs on the loop"
        assert float(row[5]) > 0


def test_driver_cost_times_one_read_and_one_write(mongo_uri: str) -> None:
    command = [sys.executable, "-m", "benchmarks.driver_cost", "--uri", mongo_uri]
    command += ["--operations", "40", "--concurrency", "4", "--rounds", "1"]
    finished = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    result = json.loads(finished.stdout.splitlines()[-1])
    assert result["commands_per_operation"] == {
        "storage_read": {"find": 1.0},
        "storage_write": {"update": 1.0},
        "find_one": {"find": 1.0},
        "find_one_without_timeout_ms": {"find": 1.0},
    }
    costs = result["cpu_ms_per_operation"]
    assert all(cost > 0 for cost in costs.values()), costs
    assert result["cpu_ms_per_step"] == costs["storage_read"] + costs["storage_write"]
