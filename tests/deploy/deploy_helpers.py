"""Helpers for the deployment tests (tests/deploy): render the Helm chart with the real
Helm engine (helm-python-sdk, no helm binary) and split the output into
manifests.

helm-python-sdk 0.2's `Chart.render` does not expose Helm's `--kube-version`
and `--api-versions`, but the C ABI it wraps takes both as render options
(`kube_version`, `api_versions`), so `render` below calls that function
directly. test_chart.py proves both options take effect (it renders a copy of
the chart with a template that prints .Capabilities), so a future SDK that
dropped them would fail loudly, not pass quietly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import yaml

import helm_python as helm
from helm_python import _native

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "datalayer"
DOCKERFILE = REPO / "Dockerfile"

RELEASE = "demo"
NAMESPACE = "bots"
# The Kubernetes version the chart is rendered for and validated against.
KUBE_VERSION = "1.30.0"
MONITORING_API = "monitoring.coreos.com/v1"
# What a cluster with prometheus-operator serves, as Helm sees it: the group
# version and each kind in it.
PROMETHEUS_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
MONITORING_APIS = [MONITORING_API, "monitoring.coreos.com/v1/ServiceMonitor", PROMETHEUS_RULE_API]

# A values set with everything optional switched on: Redis Cluster through an
# existing Secret, HPA (with behavior), PDB, ServiceMonitor, PrometheusRule,
# Grafana dashboard, NetworkPolicy, startup probe, update strategy, common
# labels.
FULL_VALUES: dict[str, Any] = {
    "commonLabels": {"team": "bots"},
    "revisionHistoryLimit": 5,
    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    "startupProbe": {"enabled": True, "failureThreshold": 10},
    "networkPolicy": {
        "enabled": True,
        "grpc": {"namespaceLabels": {"team": "bots"}, "podLabels": {"datalayer-client": "true"}},
        "metrics": {"namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    },
    "redis": {
        "mode": "cluster",
        "existingSecret": "redis-cluster-credentials",
        "existingSecretKey": "url",
    },
    "autoscaling": {
        "enabled": True,
        "minReplicas": 3,
        "maxReplicas": 12,
        "targetCPUUtilizationPercentage": 60,
        "targetMemoryUtilizationPercentage": 80,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
    },
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "metrics": {
        "enabled": True,
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "kube-prometheus"},
            "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "prod"}],
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "grafanaDashboard": {"enabled": True},
    },
    "config": {
        "keys": {"namespace": "trading"},
        "ratelimit": {
            "policies": {
                "auth": {"algorithm": "sliding_window", "limit": 5, "window": "1m"},
                "exchange": {"limit": 20, "period": "1s", "fail_mode": "open"},
            }
        },
    },
}


def render(
    values: dict[str, Any] | None = None,
    *,
    api_versions: Iterable[str] = (),
    kube_version: str = KUBE_VERSION,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    chart: Path = CHART,
) -> dict[str, str]:
    """`helm template` offline: template path -> rendered text.

    Values are checked against values.schema.json by Helm itself (a
    violation raises helm.HelmValuesError, a `fail` raises HelmRenderError).
    """
    opts = {
        "name": name,
        "namespace": namespace,
        "is_install": True,
        "kube_version": f"v{kube_version.lstrip('v')}",
        "api_versions": list(api_versions),
    }
    with helm.Chart.load(chart) as loaded:
        out = _native.call_string(
            "helm_render",
            loaded._raw(),
            None if values is None else json.dumps(values),
            json.dumps(opts),
        )
    rendered: dict[str, str] = json.loads(out)
    return rendered


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered output (NOTES.txt excluded)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of `kind`; fails if there is not exactly one."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The datalayer container of the Deployment (always the first one)."""
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert containers[0]["name"] == "datalayer"
    assert [c["name"] for c in containers].count("datalayer") == 1
    return containers[0]


def env_var(docs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    matches = [e for e in container(docs).get("env", []) if e["name"] == name]
    assert len(matches) <= 1, f"{name} set twice"
    return matches[0] if matches else None


def config_configmap(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ConfigMap holding the service's config file (not the dashboard's)."""
    found = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    assert len(found) == 1, [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    return found[0]


def config_file(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's config file as the pods will read it."""
    data = config_configmap(docs)["data"]
    assert list(data) == ["config.yaml"]
    parsed: dict[str, Any] = yaml.safe_load(data["config.yaml"])
    return parsed
