"""The chart's optional pod, Service, HPA, ServiceMonitor and NetworkPolicy
values, and the `helm test` hook: each one rendered, wired where it belongs
and validated against the Kubernetes schemas."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from deploy_helpers import (
    FULL_VALUES,
    KUBE_VERSION,
    MONITORING_APIS,
    NAMESPACE,
    RELEASE,
    container,
    kinds,
    manifests,
    only,
    render,
)

FULLNAME = f"{RELEASE}-datalayer"
SELECTOR = {"app.kubernetes.io/name": "datalayer", "app.kubernetes.io/instance": RELEASE}


def validate(docs: list[dict[str, Any]], kube_version: str = KUBE_VERSION) -> None:
    for doc in docs:
        if doc["kind"] not in {"ServiceMonitor", "PrometheusRule"}:
            kubernetes_validate.validate(doc, kube_version, strict=True)


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


# --- Deployment ---------------------------------------------------------------------


def test_defaults_add_nothing_optional(default_docs: list[dict[str, Any]]) -> None:
    deployment = only(default_docs, "Deployment")
    spec = pod_spec(default_docs)
    assert deployment["spec"]["revisionHistoryLimit"] == 10
    assert "strategy" not in deployment["spec"]  # Kubernetes' default
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["datalayer"]
    c = container(default_docs)
    assert "args" not in c and "lifecycle" not in c and "startupProbe" not in c
    assert "NetworkPolicy" not in kinds(default_docs)


def test_full_values_wire_the_deployment(full_docs: list[dict[str, Any]]) -> None:
    deployment = only(full_docs, "Deployment")
    assert deployment["spec"]["revisionHistoryLimit"] == 5
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "bots"
    startup = container(full_docs)["startupProbe"]
    # On `liveness`, never on the store: a Redis outage at start-up must not
    # restart the container.
    assert startup["grpc"] == {"port": 50051, "service": "liveness"}
    assert startup["failureThreshold"] == 10 and startup["periodSeconds"] == 2
    assert "enabled" not in startup


def test_recreate_strategy() -> None:
    docs = manifests(render({"strategy": {"type": "Recreate"}}))
    assert only(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    validate(docs)


def test_extra_args_lifecycle_and_more_containers() -> None:
    values = {
        "extraArgs": ["--config", "/etc/datalayer/config.yaml"],
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "initContainers": [{"name": "wait-for-redis", "image": "busybox:1.36", "command": ["true"]}],
        "extraContainers": [{"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "3600"]}],
    }
    docs = manifests(render(values))
    spec = pod_spec(docs)
    c = container(docs)
    assert c["args"] == ["--config", "/etc/datalayer/config.yaml"]
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert [i["name"] for i in spec["initContainers"]] == ["wait-for-redis"]
    assert [x["name"] for x in spec["containers"]] == ["datalayer", "sidecar"]
    # The sleep action is Kubernetes 1.30+ (beta there, on by default).
    validate(docs, "1.30.0")


def test_pod_labels_never_replace_the_selector_labels() -> None:
    values = {"podLabels": {"app.kubernetes.io/name": "impostor", "tier": "data"}, "commonLabels": {"team": "bots"}}
    docs = manifests(render(values))
    labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert SELECTOR.items() <= labels.items()
    assert labels["tier"] == "data" and labels["team"] == "bots"


def test_common_labels_cannot_shadow_the_chart_labels() -> None:
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
        with pytest.raises(helm.HelmValuesError):
            render({"commonLabels": {key: "x"}})


# --- Service ------------------------------------------------------------------------


def test_service_labels_and_node_port() -> None:
    values = {"service": {"type": "NodePort", "nodePort": 30051, "labels": {"exposure": "nodes"}}}
    docs = manifests(render(values))
    service = only(docs, "Service")
    assert service["metadata"]["labels"]["exposure"] == "nodes"
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "datalayer"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["nodePort"] == 30051
    assert "nodePort" not in ports["metrics"]  # Kubernetes picks one
    validate(docs)


def test_node_port_needs_a_node_port_service() -> None:
    with pytest.raises(helm.HelmError, match="nodePort"):
        render({"service": {"nodePort": 30051}})


def test_no_node_port_by_default(default_docs: list[dict[str, Any]]) -> None:
    for port in only(default_docs, "Service")["spec"]["ports"]:
        assert "nodePort" not in port


# --- HPA, ServiceMonitor ------------------------------------------------------------


def test_hpa_behavior(full_docs: list[dict[str, Any]]) -> None:
    hpa = only(full_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}
    docs = manifests(render({"autoscaling": {"enabled": True}}))
    assert "behavior" not in only(docs, "HorizontalPodAutoscaler")["spec"]


def test_service_monitor_relabelings_and_honor_labels(full_docs: list[dict[str, Any]]) -> None:
    (endpoint,) = only(full_docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "cluster", "replacement": "prod"}]
    assert "metricRelabelings" not in endpoint
    # datalayer's `service` label (the gRPC service) is kept as `service`.
    assert endpoint["honorLabels"] is True
    values = copy.deepcopy(FULL_VALUES)
    values["metrics"]["serviceMonitor"].update(
        {"honorLabels": False, "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}]}
    )
    (endpoint,) = only(manifests(render(values, api_versions=MONITORING_APIS)), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is False
    assert endpoint["metricRelabelings"][0]["action"] == "drop"


# --- NetworkPolicy ------------------------------------------------------------------


def test_network_policy_admits_only_the_given_clients(full_docs: list[dict[str, Any]]) -> None:
    policy = only(full_docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": SELECTOR}
    assert spec["policyTypes"] == ["Ingress"]  # egress (Redis, DNS, OTLP) stays open
    grpc_rule, metrics_rule = spec["ingress"]
    assert grpc_rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
    clients, hook = grpc_rule["from"]
    # One peer with both selectors: pods with the label, in namespaces with
    # the label (two peers would admit either).
    assert clients == {
        "namespaceSelector": {"matchLabels": {"team": "bots"}},
        "podSelector": {"matchLabels": {"datalayer-client": "true"}},
    }
    assert hook == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "helm-test"}}
    }
    assert metrics_rule == {
        "ports": [{"port": 9090, "protocol": "TCP"}],
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {},
            }
        ],
    }


def test_network_policy_defaults_to_the_release_namespace() -> None:
    docs = manifests(render({"networkPolicy": {"enabled": True}, "tests": {"enabled": False}}))
    grpc_rule, metrics_rule = only(docs, "NetworkPolicy")["spec"]["ingress"]
    # No namespaceSelector: pods of this namespace only; {}: all of them.
    assert grpc_rule["from"] == [{"podSelector": {}}]
    assert metrics_rule["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    validate(docs)


def test_network_policy_ports_follow_the_container_ports() -> None:
    values = {"networkPolicy": {"enabled": True}, "containerPorts": {"grpc": 6000, "metrics": 6001}}
    ports = [r["ports"][0]["port"] for r in only(manifests(render(values)), "NetworkPolicy")["spec"]["ingress"]]
    assert ports == [6000, 6001]


def test_network_policy_extra_ingress() -> None:
    extra = {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 50051, "protocol": "TCP"}]}
    docs = manifests(render({"networkPolicy": {"enabled": True, "extraIngress": [extra]}}))
    assert only(docs, "NetworkPolicy")["spec"]["ingress"][-1] == extra
    validate(docs)


# --- helm test ----------------------------------------------------------------------


def test_helm_test_pod_runs_datalayer_health_against_the_service(default_docs: list[dict[str, Any]]) -> None:
    pod = only(default_docs, "Pod")
    service = only(default_docs, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "before-hook-creation" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    # The image is the service's own: its entrypoint is the datalayer binary.
    assert c["image"] == container(default_docs)["image"]
    assert "command" not in c
    port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    assert c["args"] == [
        "health",
        "--addr",
        f"{service['metadata']['name']}.{NAMESPACE}.svc:{port}",
        "--timeout",
        "2s",
    ]


def test_helm_test_pod_options() -> None:
    docs = manifests(render({"tests": {"service": "liveness", "timeout": "5s"}, "service": {"port": 6000}}))
    (c,) = only(docs, "Pod")["spec"]["containers"]
    assert c["args"] == ["health", "--addr", f"{FULLNAME}.{NAMESPACE}.svc:6000", "--service", "liveness", "--timeout", "5s"]
    assert "Pod" not in kinds(manifests(render({"tests": {"enabled": False}})))


def test_helm_test_pod_is_hardened_and_never_selected(full_docs: list[dict[str, Any]]) -> None:
    pod = only(full_docs, "Pod")
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    sc = spec["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    labels = pod["metadata"]["labels"]
    # The Service, the PDB and the NetworkPolicy select the datalayer pods
    # only; the test pod would otherwise take traffic or count as available.
    for selector in (
        only(full_docs, "Service")["spec"]["selector"],
        only(full_docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        only(full_docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        only(full_docs, "Deployment")["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items(), selector
    assert labels["team"] == "bots"  # commonLabels


def test_service_monitor_sends_a_token_when_metrics_want_one() -> None:
    # config.metrics.bearer_token_file makes /metrics ask for a token; the
    # ServiceMonitor then sends one from a Secret.
    auth = {"type": "Bearer", "credentials": {"name": "metrics-token", "key": "token"}}
    values = {"metrics": {"serviceMonitor": {"enabled": True, "authorization": auth}}}
    (endpoint,) = only(manifests(render(values, api_versions=MONITORING_APIS)), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == auth
    (endpoint,) = only(
        manifests(render({"metrics": {"serviceMonitor": {"enabled": True}}}, api_versions=MONITORING_APIS)),
        "ServiceMonitor",
    )["spec"]["endpoints"]
    assert "authorization" not in endpoint
    with pytest.raises(helm.HelmValuesError):
        render({"metrics": {"serviceMonitor": {"authorization": {"credentials": {"name": "x"}}}}})
