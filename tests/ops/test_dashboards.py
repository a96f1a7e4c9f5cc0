"""deploy/grafana/botyard.json and deploy/prometheus/alerts.yml: they parse, and every metric
they query is one a running botyard exports (read from a live /metrics)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from botyard.emulator import BotAPIEmulator

from e2e import REPO
from webhook_harness import Yard, open_yard

DASHBOARD = REPO / "deploy" / "grafana" / "botyard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bbotyard_[a-z_]+\b")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    expressions = []
    for panel in dashboard["panels"]:
        assert panel["title"], panel
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
        expressions += [target["expr"] for target in panel["targets"]]
    return expressions


def rule_problems(document: object) -> list[str]:
    """What makes ``document`` not a Prometheus rule file (``promtool check rules``' shape)."""
    if not isinstance(document, dict) or set(document) != {"groups"}:
        return ["the file must be a mapping with only 'groups'"]
    groups = document["groups"]
    if not isinstance(groups, list) or not groups:
        return ["groups must be a non-empty list"]
    problems: list[str] = []
    names: set[str] = set()
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            problems.append(f"{where}: a group needs a name")
            continue
        if group["name"] in names:
            problems.append(f"{where}: duplicate group name {group['name']!r}")
        names.add(group["name"])
        unknown = set(group) - {"name", "interval", "limit", "rules"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}: rules must be a non-empty list")
            continue
        for number, rule in enumerate(rules):
            problems += _rule_problems(rule, f"{where}.rules[{number}]")
    return problems


def _rule_problems(rule: object, where: str) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: a rule is a mapping"]
    problems = []
    if ("alert" in rule) == ("record" in rule):
        problems.append(f"{where}: exactly one of alert and record")
    allowed = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    if set(rule) - allowed:
        problems.append(f"{where}: unknown keys {sorted(set(rule) - allowed)}")
    expr = rule.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{where}: expr must be a PromQL expression")
    elif expr.count("(") != expr.count(")") or expr.count("[") != expr.count("]"):
        problems.append(f"{where}: unbalanced brackets in expr")
    if "for" in rule and not DURATION.match(str(rule["for"])):
        problems.append(f"{where}: for must be a duration such as 5m, got {rule['for']!r}")
    for key in ("labels", "annotations"):
        value = rule.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            problems.append(f"{where}: {key} must map strings to strings")
    return problems


def test_the_rules_file_is_prometheus_rule_groups() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert rule_problems(document) == []
    alerts = {rule["alert"] for group in document["groups"] for rule in group["rules"]}
    assert {
        "BotyardBotUnauthorized",
        "BotyardBotRestarting",
        "BotyardEventLoopBlocked",
        "BotyardUpdateLagGrowing",
        "BotyardHandlerErrors",
        "BotyardCleanupFailing",
        "BotyardTelegram429s",
    } <= alerts


def one_rule(**rule: object) -> dict[str, object]:
    return {"groups": [{"name": "a", "rules": [rule]}]}


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"rules": []}, "only 'groups'"),
        (one_rule(alert="A"), "expr must be"),
        (one_rule(alert="A", expr="up", **{"for": "5 min"}), "for must be a duration"),
        (one_rule(alert="A", expr="rate(x[5m]"), "unbalanced"),
        (one_rule(alert="A", record="b", expr="up"), "exactly one of"),
        (one_rule(alert="A", expr="up", fro="5m"), "unknown"),
    ],
)
def test_the_rules_check_fails_on_a_broken_file(broken: object, problem: str) -> None:
    assert any(problem in line for line in rule_problems(broken))


@pytest.fixture
async def yard(
    tmp_path: Path, bot_api: BotAPIEmulator, mongo_uri: str, database_name: str
) -> AsyncIterator[Yard]:
    async with open_yard(tmp_path, bot_api, mongo_uri, database_name) as opened:
        yield opened


@pytest.mark.parametrize("per_bot", ["true", "false"])
async def test_every_metric_the_dashboard_and_alerts_use_is_exported(
    yard: Yard, per_bot: str
) -> None:
    token = yard.add("hook")
    yard.write(per_bot_metrics=per_bot)
    await yard.start()
    yard.emulator.send_message(token, 7, "one")  # series made on a bot's first update
    await yard.emulator.wait_for_reply(token, 7)
    status, text = await yard.request("GET", "/metrics")
    assert status == 200
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }
    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(ALERTS.read_text())
    used = {
        name
        for expression in dashboard_expressions(dashboard)
        + [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
        for name in METRIC.findall(expression)
    }
    assert len(used) >= 15
    assert sorted(used - exported) == []
    # and the check can fail: a name botyard does not export is caught
    assert METRIC.findall("rate(botyard_updates_recieved_total[5m])")[0] not in exported
