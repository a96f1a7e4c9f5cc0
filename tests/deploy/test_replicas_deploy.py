"""Deploying several replicas: docker-compose can scale botyard, and deploy/kubernetes/.

No Docker engine or cluster here: the files are parsed and checked against
what botyard needs (ports, probes, secrets, the registry's cluster section).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from botyard.cli.run import run
from botyard.registry.models import ClusterConfig

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
REGISTRY = yaml.safe_load((REPO / "deploy" / "botyard.yaml").read_text())
OPS_PORT = int(REGISTRY["ops"]["listen"].rsplit(":", 1)[1])


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    (found,) = _documents("deployment.yaml")
    assert found["apiVersion"] == "apps/v1"
    assert found["kind"] == "Deployment"
    return found


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def test_the_production_registry_runs_as_a_cluster() -> None:
    config = ClusterConfig.model_validate(REGISTRY["cluster"])
    assert config.failover_time >= 3 * config.heartbeat_interval


def test_compose_can_scale_botyard_without_name_or_host_port_clashes() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    botyard = {**compose.get("x-botyard", {}), **compose["services"]["botyard"]}
    assert "container_name" not in botyard
    assert "hostname" not in botyard
    for port in botyard.get("ports", []):  # only container ports: Docker picks host ports
        text = str(port["target"] if isinstance(port, dict) else port)
        assert ":" not in text, f"published host port {text} clashes at --scale botyard=3"
        assert not (isinstance(port, dict) and "published" in port)


def test_deployment_runs_three_replicas_of_the_registry(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert container["args"] == ["run", "/app/config/botyard.yaml"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/app/config"
    assert mount["readOnly"] is True
    volumes = {volume["name"]: volume for volume in spec["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == "botyard-registry"
    shutdown_timeout = next(p for p in run.params if p.name == "shutdown_timeout").default
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > shutdown_timeout
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_probes_use_healthz_and_readyz_on_the_ops_port(container: dict[str, Any]) -> None:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path
        assert ports[check["port"]] == OPS_PORT


def test_the_mongodb_uri_and_the_tokens_come_from_secrets(container: dict[str, Any]) -> None:
    env = {item["name"]: item for item in container["env"]}
    assert "value" not in env["MONGODB_URI"], "the URI holds credentials"
    reference = env["MONGODB_URI"]["valueFrom"]["secretKeyRef"]
    secrets = {doc["metadata"]["name"]: doc for doc in _documents("secret.example.yaml")}
    assert reference["key"] in secrets[reference["name"]]["stringData"]
    (tokens,) = (source["secretRef"]["name"] for source in container["envFrom"])
    needed = {
        name
        for name, default in re.findall(r"\$\{(\w+)(:-[^}]*)?\}", yaml.safe_dump(REGISTRY))
        if not default and name != "MONGODB_URI"
    }
    assert needed
    assert needed <= set(secrets[tokens]["stringData"])


def test_disruption_budget_keeps_all_but_one_replica(deployment: dict[str, Any]) -> None:
    (budget,) = _documents("pod-disruption-budget.yaml")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["kind"] == "PodDisruptionBudget"
    assert budget["spec"]["maxUnavailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_kustomization_lists_the_manifests() -> None:
    (kustomization,) = _documents("kustomization.yaml")
    resources = kustomization["resources"]
    assert sorted(resources) == ["deployment.yaml", "pod-disruption-budget.yaml"]
    assert all((KUBERNETES / name).is_file() for name in resources)
