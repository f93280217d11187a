"""The chart's security values: API keys from an existing Secret
(auth.existingSecret), TLS on the gRPC port from a kubernetes.io/tls Secret
(tls.*, as cert-manager writes it), the /metrics bearer token
(metrics.tokenSecret) and the probes that keep working with them. Each one
rendered by the real Helm engine, its volumes, mounts, config keys, probes
and Secret references checked, and every manifest validated against the
Kubernetes schemas. test_chart_security_live.py runs the binary on the
config files rendered here."""

from __future__ import annotations

import copy
import json
import posixpath
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from deploy_helpers import (
    CHART,
    FULL_VALUES,
    KUBE_VERSION,
    MONITORING_APIS,
    NAMESPACE,
    RELEASE,
    config_file,
    container,
    kinds,
    manifests,
    only,
    render,
)

FULLNAME = f"{RELEASE}-datalayer"
SECRETS_DIR = "/etc/datalayer-secrets"
VALIDATE_VERSIONS = ["1.27.0", KUBE_VERSION]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

KEYS = {"auth": {"existingSecret": "datalayer-keys"}}
TLS = {"tls": {"secretName": "datalayer-tls"}}
MTLS = {"tls": {"secretName": "datalayer-tls", "clientCa": True}}
TOKEN = {"metrics": {"tokenSecret": "metrics-token"}}
# Everything at once, on top of every other option of the chart.
ALL_SECURITY: dict[str, Any] = {
    "auth": {"existingSecret": "datalayer-keys"},
    "tls": {"secretName": "datalayer-tls", "clientCa": True},
    "metrics": {"tokenSecret": "metrics-token", "serviceMonitor": {"enabled": True}},
    "networkPolicy": {
        "enabled": True,
        "grpc": {"namespaceLabels": {"datalayer-client": "true"}},
        "metrics": {"namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    },
    "startupProbe": {"enabled": True},
    "config": {"auth": {"clients": [{"common_name": "billing-worker", "tenant": "billing", "allow": ["*"]}]}},
}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Values deep-merged left to right."""
    out: dict[str, Any] = {}

    def merge(into: dict[str, Any], part: dict[str, Any]) -> None:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    for part in parts:
        merge(out, part)
    return out


def docs_for(values: dict[str, Any] | None, api_versions: list[str] | None = None) -> list[dict[str, Any]]:
    return manifests(render(values, api_versions=api_versions or []))


def validate(docs: list[dict[str, Any]], kube_version: str = KUBE_VERSION) -> list[str]:
    checked = []
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, kube_version, strict=True)
            checked.append(doc["kind"])
    assert "Deployment" in checked
    return checked


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def volumes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(docs)["volumes"]}


def mounts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container(docs)["volumeMounts"]}


def file_source(docs: list[dict[str, Any]], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in the datalayer container,
    resolved through its mounts and their Secret volumes' items, as the
    kubelet lays the files out. Fails if no mounted Secret puts a file there."""
    for mount in container(docs)["volumeMounts"]:
        base = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(base):
            continue
        assert mount.get("readOnly") is True, mount
        assert "subPath" not in mount, "a subPath mount never sees the Secret change"
        secret = volumes(docs)[mount["name"]].get("secret")
        assert secret is not None, f"{path} is on volume {mount['name']}, not a Secret"
        rel = path[len(base):]
        for item in secret.get("items", []):
            if item["path"] == rel:
                return secret["secretName"], item["key"]
        raise AssertionError(f"{path}: Secret {secret['secretName']} puts no item at {rel}")
    raise AssertionError(f"{path} is under no volume mount of the datalayer container")


def probes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    c = container(docs)
    return {name: c[name] for name in ("livenessProbe", "readinessProbe", "startupProbe") if name in c}


def handler(probe: dict[str, Any]) -> str:
    (kind,) = {"grpc", "tcpSocket", "exec", "httpGet"} & probe.keys()
    return kind


# --- the defaults stay as they were -----------------------------------------------


def test_defaults_mount_no_secret_and_keep_the_grpc_probes(default_docs: list[dict[str, Any]]) -> None:
    assert list(volumes(default_docs)) == ["config"]
    assert list(mounts(default_docs)) == ["config"]
    config = config_file(default_docs)
    assert "auth" not in config
    assert "tls" not in config["server"]
    assert "bearer_token_file" not in config["metrics"]
    assert config["server"] == {"addr": "0.0.0.0:50051"}
    assert config["metrics"] == {"enabled": True, "addr": "0.0.0.0:9090"}
    found = probes(default_docs)
    assert found["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert found["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert "Pod" in kinds(default_docs)  # the helm test hook
    assert "datalayer-secrets" not in json.dumps(default_docs)


def test_the_full_values_render_is_untouched(full_docs: list[dict[str, Any]]) -> None:
    # FULL_VALUES (every other option) sets none of the security values: no
    # Secret volumes, native gRPC probes, the helm test peer in the policy.
    assert list(volumes(full_docs)) == ["config"]
    assert {handler(p) for p in probes(full_docs).values()} == {"grpc"}
    grpc_rule = only(full_docs, "NetworkPolicy")["spec"]["ingress"][0]
    assert len(grpc_rule["from"]) == 2
    (endpoint,) = only(full_docs, "ServiceMonitor")["spec"]["endpoints"]
    assert "authorization" not in endpoint


# --- API keys from auth.existingSecret -------------------------------------------


def test_keys_secret_is_mounted_read_only_and_required() -> None:
    docs = docs_for(KEYS)
    auth = config_file(docs)["auth"]
    assert auth == {"keys_file": f"{SECRETS_DIR}/auth/keys.yaml", "required": True}
    assert file_source(docs, auth["keys_file"]) == ("datalayer-keys", "keys")
    assert volumes(docs)["auth-keys"] == {
        "name": "auth-keys",
        "secret": {"secretName": "datalayer-keys", "items": [{"key": "keys", "path": "keys.yaml"}]},
    }
    assert mounts(docs)["auth-keys"] == {"name": "auth-keys", "mountPath": f"{SECRETS_DIR}/auth", "readOnly": True}
    # Health stays open (auth.open's default), so the native gRPC probes and
    # the helm test pod keep working without a key.
    assert {handler(p) for p in probes(docs).values()} == {"grpc"}
    assert "Pod" in kinds(docs)
    assert "Secret" not in kinds(docs), "the chart never holds the keys itself"
    for version in VALIDATE_VERSIONS:
        validate(docs, version)


@pytest.mark.parametrize(
    ("key", "file"),
    [("keys", "keys.yaml"), ("keys.yaml", "keys.yaml"), ("api.yml", "api.yml"), ("keys.json", "keys.json"),
     ("keys.toml", "keys.toml"), ("api-keys", "api-keys.yaml"), ("keys.txt", "keys.txt.yaml")],
)
def test_keys_file_has_an_extension_the_service_reads(key: str, file: str) -> None:
    # The service picks the file's format by its extension and refuses a
    # file without one.
    docs = docs_for({"auth": {"existingSecret": "k", "existingSecretKey": key}})
    path = config_file(docs)["auth"]["keys_file"]
    assert path == f"{SECRETS_DIR}/auth/{file}"
    assert file_source(docs, path) == ("k", key)


def test_auth_required_can_still_be_set_under_config() -> None:
    docs = docs_for(merged(KEYS, {"config": {"auth": {"required": False, "reload_interval": "5s"}}}))
    assert config_file(docs)["auth"] == {
        "keys_file": f"{SECRETS_DIR}/auth/keys.yaml",
        "required": False,
        "reload_interval": "5s",
    }


def test_keys_file_set_twice_is_an_error() -> None:
    with pytest.raises(helm.HelmError, match="keys_file"):
        render(merged(KEYS, {"config": {"auth": {"keys_file": "/elsewhere/keys.yaml"}}}))


@pytest.mark.parametrize(
    "open_methods",
    [["grpc.health.v1.Health/*"], ["*"], ["read"], ["read:grpc.health.*"], ["grpc.*/Check"],
     ["datalayer.cache.v1.CacheService/Get", "grpc.health.v1.Health/Check"]],
)
def test_probes_need_health_in_auth_open(open_methods: list[str]) -> None:
    docs = docs_for(merged(KEYS, {"config": {"auth": {"open": open_methods}}}))
    assert config_file(docs)["auth"]["open"] == open_methods


@pytest.mark.parametrize(
    "values",
    [
        merged(KEYS, {"config": {"auth": {"open": []}}}),
        merged(KEYS, {"config": {"auth": {"open": ["grpc.health.v1.Health/Watch"]}}}),
        merged(KEYS, {"config": {"auth": {"open": ["read:datalayer.*"]}}}),
        {"config": {"auth": {"required": True, "open": ["grpc.reflection.*/*"]}}},
    ],
    ids=["empty", "watch-only", "other-reads", "required-by-hand"],
)
def test_an_auth_open_without_health_is_refused_while_keys_are_required(values: dict[str, Any]) -> None:
    # The kubelet's gRPC probes and the helm test pod send no key: they would
    # fail, and the pods never turn Ready.
    with pytest.raises(helm.HelmError, match="grpc.health.v1.Health/Check"):
        render(values)


def test_an_auth_open_without_health_is_fine_when_no_probe_asks_it() -> None:
    # Keys not required: anonymous calls pass anyway.
    render({"config": {"auth": {"open": []}}})
    # TLS: the probes are TCP connects and there is no helm test pod.
    render(merged(KEYS, TLS, {"config": {"auth": {"open": []}}}))


# --- TLS from tls.secretName ---------------------------------------------------------


def test_tls_secret_is_mounted_and_wired_to_server_tls() -> None:
    docs = docs_for(TLS)
    tls = config_file(docs)["server"]["tls"]
    assert tls == {"cert_file": f"{SECRETS_DIR}/tls/tls.crt", "key_file": f"{SECRETS_DIR}/tls/tls.key"}
    assert file_source(docs, tls["cert_file"]) == ("datalayer-tls", "tls.crt")
    assert file_source(docs, tls["key_file"]) == ("datalayer-tls", "tls.key")
    # Only the keys of a kubernetes.io/tls Secret: no ca.crt needed.
    assert [i["key"] for i in volumes(docs)["tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert mounts(docs)["tls"] == {"name": "tls", "mountPath": f"{SECRETS_DIR}/tls", "readOnly": True}
    for version in VALIDATE_VERSIONS:
        validate(docs, version)


def test_secret_mounts_are_not_inside_the_config_mount() -> None:
    # A mount inside the read-only ConfigMap mount could not create its mount
    # point; and no two mounts share a path.
    docs = docs_for(merged(ALL_SECURITY, {"tls": {"clientCaSecret": "clients-ca"}}))
    paths = [m["mountPath"] for m in container(docs)["volumeMounts"]]
    assert len(paths) == len(set(paths)) == 5
    config_dir = mounts(docs)["config"]["mountPath"]
    for path in paths:
        if path != config_dir:
            assert not path.startswith(config_dir + "/"), path
            assert posixpath.dirname(path) == SECRETS_DIR


def test_with_tls_the_probes_connect_over_tcp() -> None:
    # Neither the kubelet's gRPC probe nor `datalayer health` can speak TLS:
    # a TCP connect to the gRPC port is what still works.
    docs = docs_for(merged(TLS, {"startupProbe": {"enabled": True, "failureThreshold": 10}}))
    found = probes(docs)
    assert set(found) == {"livenessProbe", "readinessProbe", "startupProbe"}
    for name, probe in found.items():
        assert probe["tcpSocket"] == {"port": 50051}, name
        assert handler(probe) == "tcpSocket", name
    # The timings are the values', as before.
    assert found["livenessProbe"]["periodSeconds"] == 10
    assert found["readinessProbe"]["failureThreshold"] == 2
    assert found["startupProbe"]["failureThreshold"] == 10 and "enabled" not in found["startupProbe"]
    validate(docs)


def test_tls_health_probes_are_exec_probes_of_datalayer_health() -> None:
    values = merged(MTLS, {"tls": {"healthProbes": True}, "config": {"server": {"tls": {"require_client_cert": True}}}})
    docs = docs_for(merged(values, {"startupProbe": {"enabled": True}}))
    found = probes(docs)
    assert {handler(p) for p in found.values()} == {"exec"}
    command = found["readinessProbe"]["exec"]["command"]
    flag = lambda name: command[command.index(name) + 1]  # noqa: E731
    assert command[:2] == ["/usr/local/bin/datalayer", "health"]
    assert flag("--addr") == "https://127.0.0.1:50051"
    assert flag("--service") == ""
    assert found["livenessProbe"]["exec"]["command"][command.index("--service") + 1] == "liveness"
    assert flag("--server-name") == f"{FULLNAME}.{NAMESPACE}.svc"
    # Every file it names is where a Secret volume puts it.
    assert file_source(docs, flag("--ca-file")) == ("datalayer-tls", "ca.crt")
    assert file_source(docs, flag("--cert")) == ("datalayer-tls", "tls.crt")
    assert file_source(docs, flag("--key")) == ("datalayer-tls", "tls.key")
    named = docs_for(merged(TLS, {"tls": {"healthProbes": True, "probeServerName": "grpc.example.com"}}))
    named_cmd = probes(named)["readinessProbe"]["exec"]["command"]
    assert named_cmd[named_cmd.index("--server-name") + 1] == "grpc.example.com"
    assert "--cert" not in named_cmd
    validate(docs)


def test_tls_probes_follow_the_grpc_port() -> None:
    docs = docs_for(merged(TLS, {"containerPorts": {"grpc": 6000}}))
    assert {p["tcpSocket"]["port"] for p in probes(docs).values()} == {6000}
    assert config_file(docs)["server"]["addr"] == "0.0.0.0:6000"


def test_with_tls_there_is_no_helm_test_pod_and_no_peer_for_it() -> None:
    rendered = render(merged(TLS, {"networkPolicy": {"enabled": True}}))
    docs = manifests(rendered)
    assert "Pod" not in kinds(docs)
    grpc_rule = only(docs, "NetworkPolicy")["spec"]["ingress"][0]
    assert grpc_rule["from"] == [{"podSelector": {}}]
    notes = rendered["datalayer/templates/NOTES.txt"]
    assert "no `helm test` pod" in notes
    assert "-plaintext" not in notes
    assert f"-cacert ca.crt -authority {FULLNAME}.{NAMESPACE}.svc" in notes


def test_tls_set_by_hand_switches_the_probes_too() -> None:
    # TLS files mounted with extraVolumes and named under config.server.tls
    # make the port TLS just the same.
    values = {
        "config": {"server": {"tls": {"cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key"}}},
        "extraVolumes": [{"name": "my-tls", "secret": {"secretName": "my-tls"}}],
        "extraVolumeMounts": [{"name": "my-tls", "mountPath": "/tls", "readOnly": True}],
    }
    docs = docs_for(values)
    assert {handler(p) for p in probes(docs).values()} == {"tcpSocket"}
    assert "Pod" not in kinds(docs)
    assert config_file(docs)["server"]["tls"] == {"cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key"}
    validate(docs)


def test_client_ca_from_the_tls_secret() -> None:
    docs = docs_for(merged(MTLS, {"config": {"server": {"tls": {"require_client_cert": True, "reload_interval": "30s"}}}}))
    tls = config_file(docs)["server"]["tls"]
    assert tls == {
        "cert_file": f"{SECRETS_DIR}/tls/tls.crt",
        "key_file": f"{SECRETS_DIR}/tls/tls.key",
        "client_ca_file": f"{SECRETS_DIR}/tls/ca.crt",
        # The settings the chart does not own pass through.
        "require_client_cert": True,
        "reload_interval": "30s",
    }
    assert file_source(docs, tls["client_ca_file"]) == ("datalayer-tls", "ca.crt")
    assert "client-ca" not in volumes(docs)
    # mTLS required: the kubelet's TCP connect still works (no handshake).
    assert {handler(p) for p in probes(docs).values()} == {"tcpSocket"}
    validate(docs)


def test_client_ca_from_a_secret_of_its_own() -> None:
    docs = docs_for(merged(MTLS, {"tls": {"clientCaSecret": "clients-ca"}}))
    tls = config_file(docs)["server"]["tls"]
    assert tls["client_ca_file"] == f"{SECRETS_DIR}/client-ca/ca.crt"
    assert file_source(docs, tls["client_ca_file"]) == ("clients-ca", "ca.crt")
    # The server's Secret then needs no ca.crt (a public CA's has none).
    assert [i["key"] for i in volumes(docs)["tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    validate(docs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"clientCa": True}}, "need tls.secretName"),
        ({"tls": {"secretName": "t", "clientCaSecret": "c"}}, "only with tls.clientCa"),
        (merged(TLS, {"config": {"server": {"tls": {"cert_file": "/x.crt"}}}}), "cert_file"),
        (merged(TLS, {"config": {"server": {"tls": {"key_file": "/x.key"}}}}), "key_file"),
        (merged(MTLS, {"config": {"server": {"tls": {"client_ca_file": "/ca.crt"}}}}), "client_ca_file"),
    ],
    ids=["client-ca-without-tls", "ca-secret-without-client-ca", "cert-twice", "key-twice", "ca-twice"],
)
def test_tls_mistakes_are_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_a_tls_change_rolls_the_pods(default_docs: list[dict[str, Any]]) -> None:
    def checksum(docs: list[dict[str, Any]]) -> str:
        value: str = only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum(default_docs)
    assert checksum(docs_for(TLS)) != base
    assert checksum(docs_for(KEYS)) != base
    assert checksum(docs_for(TOKEN)) != base


# --- the metrics token ------------------------------------------------------------------


def test_metrics_token_is_mounted_and_sent_by_the_service_monitor() -> None:
    docs = docs_for(merged(TOKEN, {"metrics": {"serviceMonitor": {"enabled": True}}}), MONITORING_APIS)
    path = config_file(docs)["metrics"]["bearer_token_file"]
    assert path == f"{SECRETS_DIR}/metrics-token/token"
    assert file_source(docs, path) == ("metrics-token", "token")
    (endpoint,) = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "metrics-token", "key": "token"}}
    # The Secret is read from the ServiceMonitor's namespace: the release's.
    assert only(docs, "ServiceMonitor")["metadata"]["namespace"] == NAMESPACE
    validate(docs)


def test_metrics_token_key_and_an_explicit_authorization() -> None:
    values = {"metrics": {"tokenSecret": "scrape", "tokenSecretKey": "bearer", "serviceMonitor": {"enabled": True}}}
    docs = docs_for(values, MONITORING_APIS)
    assert file_source(docs, config_file(docs)["metrics"]["bearer_token_file"]) == ("scrape", "bearer")
    (endpoint,) = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": "scrape", "key": "bearer"}
    # serviceMonitor.authorization, when given, is what Prometheus sends.
    own = {"type": "Bearer", "credentials": {"name": "prometheus-copy", "key": "t"}}
    values["metrics"]["serviceMonitor"]["authorization"] = own
    (endpoint,) = only(docs_for(values, MONITORING_APIS), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == own


def test_no_metrics_no_token() -> None:
    docs = docs_for({"metrics": {"enabled": False, "tokenSecret": "metrics-token"}})
    assert "metrics-token" not in volumes(docs)
    assert "bearer_token_file" not in config_file(docs)["metrics"]


def test_token_file_set_twice_is_an_error() -> None:
    with pytest.raises(helm.HelmError, match="bearer_token_file"):
        render(merged(TOKEN, {"config": {"metrics": {"bearer_token_file": "/t"}}}))


# --- NetworkPolicy: labelled namespaces only ------------------------------------------------


def test_network_policy_admits_only_labelled_namespaces() -> None:
    docs = docs_for(ALL_SECURITY, MONITORING_APIS)
    spec = only(docs, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    grpc_rule, metrics_rule = spec["ingress"]
    # No helm test pod with TLS, so the namespace label is the only way in.
    assert grpc_rule == {
        "ports": [{"port": 50051, "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"datalayer-client": "true"}}, "podSelector": {}}],
    }
    assert metrics_rule == {
        "ports": [{"port": 9090, "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, "podSelector": {}}],
    }
    validate(docs)


# --- all of it together --------------------------------------------------------------


@pytest.mark.parametrize("kube_version", VALIDATE_VERSIONS)
def test_everything_together_validates(kube_version: str) -> None:
    values = merged(FULL_VALUES, ALL_SECURITY)
    docs = manifests(render(values, api_versions=MONITORING_APIS, kube_version=kube_version))
    assert "Pod" not in kinds(docs)
    checked = validate(docs, kube_version)
    assert sorted(checked) == sorted(k for k in kinds(docs) if k not in CRD_KINDS)
    config = config_file(docs)
    for path in (
        config["auth"]["keys_file"],
        config["server"]["tls"]["cert_file"],
        config["server"]["tls"]["key_file"],
        config["server"]["tls"]["client_ca_file"],
        config["metrics"]["bearer_token_file"],
    ):
        file_source(docs, path)
    # FULL_VALUES' own config survives the chart's keys.
    assert config["keys"] == {"namespace": "trading"}
    assert config["auth"]["clients"][0]["common_name"] == "billing-worker"
    assert config["redis"]["mode"] == "cluster"


def test_helm_lint_passes_with_everything() -> None:
    report = helm.lint(
        CHART, merged(FULL_VALUES, ALL_SECURITY), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- the schema ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"auth": {"required": True}},
        {"auth": {"existingSecret": "Not_A_Name"}},
        {"auth": {"existingSecretKey": "a/b"}},
        {"tls": {"secretName": "UPPER"}},
        {"tls": {"clientCa": "yes"}},
        {"tls": {"certFile": "/x"}},
        {"metrics": {"tokenSecret": "bad name"}},
        {"metrics": {"tokenSecretKey": ""}},
    ],
    ids=lambda v: str(v),
)
def test_schema_rejects_bad_security_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)
