"""The Helm chart (helm/datalayer), rendered by the real Helm engine and every
object validated against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from deploy_helpers import (
    CHART,
    FULL_VALUES,
    KUBE_VERSION,
    MONITORING_API,
    MONITORING_APIS,
    NAMESPACE,
    RELEASE,
    REPO,
    config_file,
    container,
    env_var,
    kinds,
    manifests,
    only,
    render,
)

FULLNAME = f"{RELEASE}-datalayer"
# Custom resources kubernetes-validate has no schema for: rendered, asserted,
# not schema-checked (test_monitoring.py checks the PrometheusRule's shape).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a
# recent one.
VALIDATE_VERSIONS = ["1.27.0", KUBE_VERSION]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def chart_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return loaded


# --- chart metadata and lint ------------------------------------------------


def test_chart_metadata_is_v2_with_app_version_from_cargo_toml() -> None:
    meta = chart_yaml()
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "datalayer"
    assert meta["type"] == "application"
    assert str(meta["appVersion"]) == cargo["package"]["version"]


@pytest.mark.parametrize(
    "values", [None, FULL_VALUES, {"redis": {"url": "redis://:pw@redis:6379/0"}}],
    ids=["default", "full", "chart-secret"],
)
def test_helm_lint_passes_strict(values: dict[str, Any] | None) -> None:
    report = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity 2 = warning, 3 = error; 1 (info, e.g. "icon is recommended") is fine
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_helm_lint_reports_a_broken_values_file() -> None:
    # The lint call is live: a value the schema forbids is reported as an error.
    report = helm.lint(CHART, {"replicaCount": "two"}, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


# --- every manifest is valid Kubernetes ---------------------------------------


@pytest.mark.parametrize("kube_version", VALIDATE_VERSIONS)
@pytest.mark.parametrize(
    ("values", "api_versions", "expected_kinds"),
    [
        # Pod: the `helm test` hook (tests.enabled is on by default).
        (None, [], ["ConfigMap", "Deployment", "Pod", "Service", "ServiceAccount"]),
        (
            FULL_VALUES,
            MONITORING_APIS,
            [
                "ConfigMap",  # the config file
                "ConfigMap",  # the Grafana dashboard
                "Deployment",
                "HorizontalPodAutoscaler",
                "NetworkPolicy",
                "Pod",
                "PodDisruptionBudget",
                "PrometheusRule",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ],
        ),
        (
            {"redis": {"url": "redis://:pw@redis-master:6379/0"}, "metrics": {"enabled": False}},
            [],
            ["ConfigMap", "Deployment", "Pod", "Secret", "Service", "ServiceAccount"],
        ),
    ],
    ids=["default", "full", "chart-secret-no-metrics"],
)
def test_every_manifest_validates(
    kube_version: str,
    values: dict[str, Any] | None,
    api_versions: list[str],
    expected_kinds: list[str],
) -> None:
    docs = manifests(render(values, api_versions=api_versions, kube_version=kube_version))
    assert kinds(docs) == expected_kinds
    validated = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # strict: unknown fields are errors too
        kubernetes_validate.validate(doc, kube_version, strict=True)
        validated.append(doc["kind"])
    assert sorted(validated) == [k for k in expected_kinds if k not in CRD_KINDS]


def test_validator_is_live() -> None:
    # kubernetes-validate really rejects a malformed Deployment (so the test
    # above cannot pass by validating nothing).
    docs = manifests(render())
    bad = copy.deepcopy(only(docs, "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


def test_render_options_reach_helm_capabilities(tmp_path: Path) -> None:
    # The renderer really passes --kube-version and --api-versions through: a
    # copy of the chart with one extra template prints what Helm saw.
    chart = tmp_path / "datalayer"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-capabilities.yaml").write_text(
        "kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
        'monitoring: {{ .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}\n'
    )
    key = "datalayer/templates/zz-capabilities.yaml"
    seen = yaml.safe_load(render(chart=chart, kube_version="1.29.3")[key])
    assert seen == {"kubeVersion": "v1.29.3", "monitoring": False}
    seen = yaml.safe_load(render(chart=chart, api_versions=[MONITORING_API])[key])
    assert seen == {"kubeVersion": f"v{KUBE_VERSION}", "monitoring": True}


def test_chart_requires_a_kubernetes_with_grpc_probes() -> None:
    # Native gRPC probes are GA since 1.27; Helm refuses older clusters at install.
    assert chart_yaml()["kubeVersion"] == ">=1.27.0-0"
    assert VALIDATE_VERSIONS[0] == "1.27.0"


def test_all_objects_carry_the_standard_labels(full_docs: list[dict[str, Any]]) -> None:
    version = str(chart_yaml()["appVersion"])
    for doc in full_docs:
        labels = doc["metadata"]["labels"]
        if doc["kind"] == "Pod":
            # The helm test pod: no app.kubernetes.io/name, so that the
            # Service and the PDB never select it (test_chart_features.py).
            assert "app.kubernetes.io/name" not in labels
            assert labels["app.kubernetes.io/component"] == "helm-test"
        else:
            assert labels["app.kubernetes.io/name"] == "datalayer", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, doc["kind"]
        assert labels["app.kubernetes.io/version"] == version, doc["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["kind"]
        assert labels["helm.sh/chart"] == f"datalayer-{chart_yaml()['version']}", doc["kind"]
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
        assert labels["team"] == "bots", f"{doc['kind']} lacks commonLabels"


def test_selectors_match_the_pods(full_docs: list[dict[str, Any]]) -> None:
    selector = {"app.kubernetes.io/name": "datalayer", "app.kubernetes.io/instance": RELEASE}
    deployment = only(full_docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert only(full_docs, "Service")["spec"]["selector"] == selector
    assert only(full_docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert only(full_docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == selector
    assert selector.items() <= pod_labels.items()


# --- probes -----------------------------------------------------------------


def test_probes_are_native_grpc_on_the_health_services(default_docs: list[dict[str, Any]]) -> None:
    c = container(default_docs)
    liveness, readiness = c["livenessProbe"], c["readinessProbe"]
    assert liveness["grpc"] == {"port": 50051, "service": "liveness"}
    # "" is the overall status: SERVING only while Redis answers.
    assert readiness["grpc"] == {"port": 50051, "service": ""}
    for probe in (liveness, readiness):
        assert not {"httpGet", "tcpSocket", "exec"} & probe.keys()
    assert "startupProbe" not in c


def test_probe_port_follows_the_grpc_container_port() -> None:
    docs = manifests(render({"containerPorts": {"grpc": 6000}}))
    c = container(docs)
    assert c["livenessProbe"]["grpc"]["port"] == 6000
    assert c["readinessProbe"]["grpc"]["port"] == 6000
    assert {"name": "grpc", "containerPort": 6000, "protocol": "TCP"} in c["ports"]
    assert config_file(docs)["server"]["addr"] == "0.0.0.0:6000"


# --- security ---------------------------------------------------------------


def test_pod_and_container_security_context(default_docs: list[dict[str, Any]]) -> None:
    pod = pod_spec(default_docs)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}

    sc = container(default_docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc or sc["privileged"] is False


def test_no_api_token_and_no_service_links(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(default_docs)
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["serviceAccountName"] == only(default_docs, "ServiceAccount")["metadata"]["name"]


# --- Redis URL from a Secret ------------------------------------------------


def test_without_redis_no_secret_and_no_url(default_docs: list[dict[str, Any]]) -> None:
    assert "Secret" not in kinds(default_docs)
    assert env_var(default_docs, "DATALAYER__REDIS__URL") is None


def test_chart_made_secret_wiring() -> None:
    url = "redis://:s3cret@redis-master.data.svc:6379/0"
    docs = manifests(render({"redis": {"url": url}}))
    secret = only(docs, "Secret")
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == f"{FULLNAME}-redis"
    assert base64.b64decode(secret["data"]["redis-url"]).decode() == url

    ref = env_var(docs, "DATALAYER__REDIS__URL")
    assert ref == {
        "name": "DATALAYER__REDIS__URL",
        "valueFrom": {"secretKeyRef": {"name": f"{FULLNAME}-redis", "key": "redis-url"}},
    }
    # the password stays out of the ConfigMap and the pod spec
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "s3cret" not in json.dumps(doc), doc["kind"]


def test_existing_secret_wiring(full_docs: list[dict[str, Any]]) -> None:
    assert "Secret" not in kinds(full_docs)
    assert env_var(full_docs, "DATALAYER__REDIS__URL") == {
        "name": "DATALAYER__REDIS__URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-cluster-credentials", "key": "url"}},
    }


def test_url_and_existing_secret_together_is_an_error() -> None:
    with pytest.raises(helm.HelmError, match="not both"):
        render({"redis": {"url": "redis://r:6379", "existingSecret": "creds"}})


def test_cluster_mode_without_seed_urls_is_an_error() -> None:
    with pytest.raises(helm.HelmError, match="cluster"):
        render({"redis": {"mode": "cluster"}})


# --- the config file ----------------------------------------------------------


def test_config_file_is_mounted_where_datalayer_config_points(
    default_docs: list[dict[str, Any]],
) -> None:
    c = container(default_docs)
    spec = pod_spec(default_docs)
    configmap = only(default_docs, "ConfigMap")
    path = Path(env_var(default_docs, "DATALAYER_CONFIG")["value"])
    assert path.suffix == ".yaml"  # the service picks the format by extension
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[0]["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert path.name in configmap["data"]


def test_config_file_default_content(default_docs: list[dict[str, Any]]) -> None:
    assert config_file(default_docs) == {
        "server": {"addr": "0.0.0.0:50051"},
        "redis": {"mode": "standalone"},
        "metrics": {"enabled": True, "addr": "0.0.0.0:9090"},
        "telemetry": {"log_format": "json"},
    }


def test_config_file_merges_free_form_config_with_chart_keys(
    full_docs: list[dict[str, Any]],
) -> None:
    config = config_file(full_docs)
    assert config["redis"] == {"mode": "cluster"}
    assert config["server"]["addr"] == "0.0.0.0:50051"
    assert config["metrics"] == {"enabled": True, "addr": "0.0.0.0:9090"}
    assert config["keys"] == {"namespace": "trading"}
    assert config["ratelimit"]["policies"]["auth"] == {
        "algorithm": "sliding_window",
        "limit": 5,
        "window": "1m",
    }
    assert config["ratelimit"]["policies"]["exchange"]["fail_mode"] == "open"
    # values.yaml's default config survives a user's partial config
    assert config["telemetry"] == {"log_format": "json"}


def test_large_numbers_stay_integers_in_the_config_file() -> None:
    # Helm keeps numbers as float64; the file must still say 8388608, not 8.388608e+06.
    docs = manifests(render({"config": {"server": {"max_request_bytes": 8388608}}}))
    text = only(docs, "ConfigMap")["data"]["config.yaml"]
    assert "max_request_bytes: 8388608\n" in text
    assert config_file(docs)["server"]["max_request_bytes"] == 8388608


# The service's full configuration schema, generated from the Rust settings
# types (tests/it/config.rs keeps it in step): the source of truth for which
# settings keys exist.
PRODUCT_SCHEMA = REPO / "docs" / "configuration.schema.json"


def _product_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(PRODUCT_SCHEMA.read_text())
    return schema


def _settings_keys() -> dict[str, set[str]]:
    """Every settings section of docs/configuration.schema.json and its keys."""
    schema = _product_schema()
    # The service rejects unknown sections and keys (deny_unknown_fields), and
    # its schema says so: a section list read from it is the complete list.
    assert schema["additionalProperties"] is False
    sections = schema["properties"]
    assert sections, f"{PRODUCT_SCHEMA.relative_to(REPO)} declares no sections"
    keys: dict[str, set[str]] = {}
    for section, sub in sections.items():
        assert sub["additionalProperties"] is False, section
        keys[section] = set(sub["properties"])
    return keys


def _policy_keys() -> set[str]:
    """The keys of one `ratelimit.policies.<name>` entry."""
    policies = _product_schema()["properties"]["ratelimit"]["properties"]["policies"]
    policy = policies["additionalProperties"]
    assert policy["additionalProperties"] is False
    return set(policy["properties"])


def _config_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    config: dict[str, Any] = schema["properties"]["config"]
    return config


# Set by the chart, so not offered under `config`.
CHART_OWNED = {"server": {"addr"}, "redis": {"url", "mode"}, "metrics": {"enabled", "addr"}}


def test_settings_keys_are_read_from_the_generated_schema() -> None:
    # The helpers below are live: they see the sections and keys the service
    # has (a sample of them), so the tests using them cannot pass on nothing.
    settings = _settings_keys()
    assert {"server", "redis", "keys", "health", "telemetry", "metrics", "ratelimit", "cache", "session"} <= set(
        settings
    )
    assert {"addr", "max_request_bytes"} <= settings["server"]
    assert {"url", "mode", "tls_ca_file"} <= settings["redis"]
    assert {"enabled", "addr"} <= settings["metrics"]
    assert {"limit", "period", "window", "fail_mode"} <= _policy_keys()
    for section, keys in CHART_OWNED.items():
        assert keys <= settings[section], f"chart-owned {section} keys are not settings: {keys}"


def test_config_schema_offers_only_real_settings_keys() -> None:
    # The service rejects unknown keys (deny_unknown_fields): every key the
    # schema lets a user put under `config` must be a settings key in
    # docs/configuration.schema.json.
    settings = _settings_keys()
    schema = _config_schema()
    assert schema["additionalProperties"] is False
    for section, sub in schema["properties"].items():
        assert section in settings, f"config.{section} is not a section of {PRODUCT_SCHEMA.name}"
        assert sub["additionalProperties"] is False, section
        unknown = set(sub["properties"]) - settings[section]
        assert not unknown, f"config.{section}: not in {PRODUCT_SCHEMA.name}: {sorted(unknown)}"
    policy = schema["properties"]["ratelimit"]["properties"]["policies"]["additionalProperties"]
    assert policy["additionalProperties"] is False
    assert set(policy["properties"]) <= _policy_keys()


def test_config_schema_covers_every_settings_key() -> None:
    # A settings key the service has must be offered by the chart too (or be
    # one the chart owns), or users could not set it through Helm.
    schema = _config_schema()["properties"]
    for section, keys in _settings_keys().items():
        offered = set(schema.get(section, {}).get("properties", {}))
        missing = keys - offered - CHART_OWNED.get(section, set())
        assert not missing, f"values.schema.json config.{section} lacks {sorted(missing)}"
    policy = schema["ratelimit"]["properties"]["policies"]["additionalProperties"]
    missing = _policy_keys() - set(policy["properties"])
    assert not missing, f"values.schema.json config.ratelimit.policies.* lacks {sorted(missing)}"


def test_rendered_config_uses_only_real_settings_keys(full_docs: list[dict[str, Any]]) -> None:
    # Including the chart-derived keys (server.addr, redis.mode,
    # metrics.enabled, metrics.addr): an unknown key stops the pods at start-up.
    settings = _settings_keys()
    config = config_file(full_docs)
    for section, body in config.items():
        assert section in settings, f"config section `{section}` is not in {PRODUCT_SCHEMA.name}"
        unknown = set(body) - settings[section]
        assert not unknown, f"`{section}` keys not in {PRODUCT_SCHEMA.name}: {sorted(unknown)}"
    for name, policy in config["ratelimit"]["policies"].items():
        unknown = set(policy) - _policy_keys()
        assert not unknown, f"ratelimit.policies.{name} keys not in {PRODUCT_SCHEMA.name}: {sorted(unknown)}"


def test_the_redis_url_is_never_in_the_config_file() -> None:
    with pytest.raises(helm.HelmError):
        render({"config": {"redis": {"url": "redis://r:6379"}}})
    docs = manifests(render({"redis": {"url": "redis://r:6379"}}))
    assert "url" not in config_file(docs)["redis"]


# --- checksum/config ----------------------------------------------------------


def _annotations(docs: list[dict[str, Any]]) -> dict[str, str]:
    annotations: dict[str, str] = only(docs, "Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


def test_checksum_is_the_sha256_of_the_rendered_configmap(default_render: dict[str, str]) -> None:
    configmap = default_render["datalayer/templates/configmap.yaml"]
    checksum = _annotations(manifests(default_render))["checksum/config"]
    assert checksum == hashlib.sha256(configmap.encode()).hexdigest()


def test_checksum_changes_with_config_values_only() -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        return _annotations(manifests(render(values)))["checksum/config"]

    base = checksum(None)
    assert checksum(None) == base  # deterministic
    assert checksum({"replicaCount": 3}) == base  # not a config value
    assert checksum({"config": {"keys": {"namespace": "other"}}}) != base
    assert checksum({"config": {"telemetry": {"log_level": "debug"}}}) != base
    assert checksum({"redis": {"mode": "cluster", "url": "redis://a:6379"}}) != base
    assert checksum({"metrics": {"enabled": False}}) != base


def test_secret_checksum_changes_with_the_url() -> None:
    def annotations(url: str) -> dict[str, str]:
        return _annotations(manifests(render({"redis": {"url": url}})))

    a, b = annotations("redis://r:6379/0"), annotations("redis://r:6379/1")
    assert a["checksum/secret"] != b["checksum/secret"]
    assert a["checksum/config"] == b["checksum/config"]
    # no chart-made Secret, no secret checksum
    assert "checksum/secret" not in _annotations(manifests(render()))


# --- Service, ports, metrics ------------------------------------------------


def test_service_ports_and_app_protocol(default_docs: list[dict[str, Any]]) -> None:
    ports = {p["name"]: p for p in only(default_docs, "Service")["spec"]["ports"]}
    assert ports["grpc"] == {
        "name": "grpc",
        "port": 50051,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    assert ports["metrics"]["port"] == 9090
    assert ports["metrics"]["targetPort"] == "metrics"
    container_ports = {p["name"]: p["containerPort"] for p in container(default_docs)["ports"]}
    assert container_ports == {"grpc": 50051, "metrics": 9090}


def test_metrics_disabled_removes_ports_and_service_monitor() -> None:
    values = {
        "metrics": {
            "enabled": False,
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        "networkPolicy": {"enabled": True},
    }
    docs = manifests(render(values, api_versions=MONITORING_APIS))
    assert "ServiceMonitor" not in kinds(docs)
    assert "PrometheusRule" not in kinds(docs)
    assert kinds(docs).count("ConfigMap") == 1, "no dashboard without metrics"
    # No ingress rule for a port nobody listens on.
    rules = only(docs, "NetworkPolicy")["spec"]["ingress"]
    assert [r["ports"] for r in rules] == [[{"port": 50051, "protocol": "TCP"}]]
    assert [p["name"] for p in only(docs, "Service")["spec"]["ports"]] == ["grpc"]
    assert [p["name"] for p in container(docs)["ports"]] == ["grpc"]
    assert config_file(docs)["metrics"]["enabled"] is False


def test_service_monitor_absent_without_the_monitoring_api() -> None:
    rendered = render(FULL_VALUES)  # same values, cluster without prometheus-operator
    docs = manifests(rendered)
    assert "ServiceMonitor" not in kinds(docs)
    assert "HorizontalPodAutoscaler" in kinds(docs)  # the rest still renders
    assert "no ServiceMonitor was created" in rendered["datalayer/templates/NOTES.txt"]


def test_service_monitor_absent_when_disabled() -> None:
    docs = manifests(render(None, api_versions=[MONITORING_API]))
    assert "ServiceMonitor" not in kinds(docs)


def test_service_monitor_scrapes_the_metrics_port(full_docs: list[dict[str, Any]]) -> None:
    monitor = only(full_docs, "ServiceMonitor")
    service = only(full_docs, "Service")
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# --- HPA and PDB ------------------------------------------------------------------


def test_hpa_targets_the_deployment(full_docs: list[dict[str, Any]]) -> None:
    hpa = only(full_docs, "HorizontalPodAutoscaler")
    deployment = only(full_docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 60, "memory": 80}
    # the HPA owns the replica count
    assert "replicas" not in deployment["spec"]


def test_replicas_without_hpa(default_docs: list[dict[str, Any]]) -> None:
    assert only(default_docs, "Deployment")["spec"]["replicas"] == 1
    assert "HorizontalPodAutoscaler" not in kinds(default_docs)
    assert "PodDisruptionBudget" not in kinds(default_docs)


def test_pdb(full_docs: list[dict[str, Any]]) -> None:
    pdb = only(full_docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]

    docs = manifests(render({"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}}))
    spec = only(docs, "PodDisruptionBudget")["spec"]
    assert spec["maxUnavailable"] == "50%"
    assert "minAvailable" not in spec
    kubernetes_validate.validate(only(docs, "PodDisruptionBudget"), KUBE_VERSION, strict=True)


# --- image --------------------------------------------------------------------------


def test_image_defaults_to_app_version_and_takes_a_digest(default_docs: list[dict[str, Any]]) -> None:
    assert container(default_docs)["image"] == f"datalayer:{chart_yaml()['appVersion']}"
    digest = "sha256:" + "a" * 64
    docs = manifests(render({"image": {"repository": "registry.example/datalayer", "digest": digest}}))
    assert container(docs)["image"] == f"registry.example/datalayer@{digest}"


# --- values.schema.json ----------------------------------------------------------


def _walk(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Value paths in `values` that the schema does not declare."""
    missing: list[str] = []
    if not isinstance(values, dict) or "properties" not in schema:
        return missing
    for key, value in values.items():
        sub = schema["properties"].get(key)
        if sub is None:
            missing.append(f"{path}{key}")
        else:
            missing += _walk(value, sub, f"{path}{key}.")
    return missing


def test_schema_is_draft_07_and_declares_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert _walk(values, schema) == []
    assert _walk(FULL_VALUES, schema) == []


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCont": 2},
        {"redis": {"mode": "sentinel"}},
        {"redis": {"url": "http://redis:6379"}},
        {"config": {"serverr": {}}},
        {"config": {"server": {"addr": "0.0.0.0:1"}}},
        {"config": {"redis": {"pool_sise": 4}}},
        {"config": {"metrics": {"enabled": False}}},
        {"config": {"telemetry": {"log_format": "xml"}}},
        {"config": {"ratelimit": {"policies": {"auth": {"limt": 5}}}}},
        {"livenessProbe": {"httpGet": {"path": "/"}}},
        {"image": {"digest": "latest"}},
        {"commonLabels": {"app.kubernetes.io/name": "other"}},
        {"commonLabels": {"team": 7}},
        {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}},
        {"strategy": {"type": "BlueGreen"}},
        {"strategy": {"rollingUpdate": {"maxUnavailable": "lots"}}},
        {"revisionHistoryLimit": -1},
        {"extraArgs": "--verbose"},
        {"lifecycle": {"preStart": {}}},
        {"initContainers": [{"name": "no-image"}]},
        {"extraContainers": [{"image": "busybox"}]},
        {"startupProbe": {"successThreshold": 2}},
        {"service": {"nodePort": 70000}},
        {"service": {"labels": {"helm.sh/chart": "x"}}},
        {"autoscaling": {"behavior": {"scaleSideways": {}}}},
        {"metrics": {"serviceMonitor": {"relabelings": {"action": "drop"}}}},
        {"metrics": {"prometheusRule": {"errorRatio": 5}}},
        {"metrics": {"prometheusRule": {"errorCodes": ["InternalError"]}}},
        {"metrics": {"prometheusRule": {"selector": "{job=\"x\"}"}}},
        {"metrics": {"prometheusRule": {"pipelineCommandsP99": 256}}},
        {"metrics": {"grafanaDashboard": {"namespace": "Not_A_Namespace"}}},
        {"networkPolicy": {"ingress": []}},
        {"networkPolicy": {"grpc": {"namespaceSelector": {}}}},
        {"tests": {"timeout": "soon"}},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)


# --- NOTES.txt ------------------------------------------------------------------


def _proto_methods(package: str, service: str) -> set[str]:
    """The rpc names of `package.service` as declared under proto/."""
    for path in (REPO / "proto").rglob("*.proto"):
        text = path.read_text()
        if not re.search(rf"^package {re.escape(package)};", text, re.M):
            continue
        body = re.search(rf"^service {re.escape(service)} \{{(.*?)^\}}", text, re.M | re.S)
        if body:
            return set(re.findall(r"^\s*rpc (\w+)\(", body.group(1), re.M))
    return set()


def test_notes_show_port_forward_and_grpcurl(default_render: dict[str, str]) -> None:
    notes = default_render["datalayer/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 50051:50051" in notes
    assert "grpcurl -plaintext localhost:50051 list" in notes
    assert "grpc.health.v1.Health/Check" in notes
    assert "datalayer.ratelimit.v1.RateLimitService/Check" in notes
    # Every datalayer method the notes tell users to call exists in proto/.
    called = re.findall(r"\b(datalayer(?:\.\w+)+)\.(\w+)/(\w+)", notes)
    assert called
    for package, service, method in called:
        assert method in _proto_methods(package, service), f"NOTES.txt calls {package}.{service}/{method}"
    assert "memory store" in notes  # no Redis configured: say so


# --- the documented values files work ------------------------------------------


def _yaml_blocks(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path == REPO / "README.md":
        # Only the Helm section's YAML blocks are chart values.
        text = text.split("\n## Deploy with Helm\n", 1)[1].split("\n## ", 1)[0]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


DOC_EXAMPLES = [
    (doc, i, block)
    for doc in (REPO / "README.md", CHART / "README.md")
    for i, block in enumerate(_yaml_blocks(doc))
]


@pytest.mark.parametrize(
    ("doc", "index", "values"),
    DOC_EXAMPLES,
    ids=[f"{d.relative_to(REPO)}#{i}" for d, i, _ in DOC_EXAMPLES],
)
def test_documented_values_render_and_validate(doc: Path, index: int, values: dict[str, Any]) -> None:
    docs = manifests(render(values, api_versions=MONITORING_APIS))
    for obj in docs:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    if values.get("redis", {}).get("mode") == "cluster":
        assert config_file(docs)["redis"]["mode"] == "cluster"


def test_there_are_documented_examples() -> None:
    assert len(DOC_EXAMPLES) >= 4


def test_a_private_redis_ca_can_be_mounted_and_configured() -> None:
    docs = manifests(
        render(
            {
                "redis": {"url": "rediss://redis.data.svc:6380"},
                "config": {"redis": {"tls_ca_file": "/etc/datalayer/redis-ca/ca.crt"}},
                "extraVolumes": [{"name": "redis-ca", "secret": {"secretName": "redis-ca"}}],
                "extraVolumeMounts": [
                    {"name": "redis-ca", "mountPath": "/etc/datalayer/redis-ca", "readOnly": True}
                ],
            }
        )
    )
    assert config_file(docs)["redis"]["tls_ca_file"] == "/etc/datalayer/redis-ca/ca.crt"
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts["redis-ca"] == "/etc/datalayer/redis-ca"
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["redis-ca"]["secret"] == {"secretName": "redis-ca"}
    assert "config" in volumes, "the chart's own config volume stays"
