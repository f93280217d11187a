"""The chart's security values against the real binary: the config file the
chart renders with auth.existingSecret, tls.secretName (+ clientCa) and
metrics.tokenSecret, with the Secrets laid out as files exactly where the
Deployment's volumes and mounts put them (the kubelet's layout, under a
temporary root), runs the service. Then:

- with TLS, a plaintext health check (what the kubelet's native gRPC probe
  sends) and `datalayer health` both fail, while a TCP connect (the chart's
  probe on a TLS port) succeeds, and a TLS health check without a key is
  SERVING;
- calls need a key (auth.required), a key from the mounted file works, a key
  added to the file later works without a restart, and a client certificate
  from the Secret's CA acts as its tenant (mTLS);
- /metrics refuses a scrape without the mounted token and serves one with it;
- without TLS, the native probes' plaintext health checks and the `helm
  test` pod's command pass without a key while other calls need one.

The service runs on the in-process memory store (no Redis needed here)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy_helpers import NAMESPACE, RELEASE, config_file, container, manifests, only, render
from live import Service, datalayer_bin, poll

SERVING = health_pb2.HealthCheckResponse.SERVING
# A DNS name of the service's certificate, as a cert-manager Certificate for
# the chart's Service would list it.
SERVER_NAME = f"{RELEASE}-datalayer.{NAMESPACE}.svc"
CLIENT_CN = "billing-worker"
# CacheService/Get{key: "k"}, encoded by hand: a call that needs a key.
GET = "/datalayer.cache.v1.CacheService/Get"
GET_K = b"\x0a\x01k"


def _binary() -> Path:
    binary = datalayer_bin()
    if not binary.is_file():
        pytest.fail(
            f"the datalayer binary is missing: {binary} (build it first, e.g. `cargo build`, or set DATALAYER_BIN)",
            pytrace=False,
        )
    return binary


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(work: Path) -> dict[str, bytes]:
    """A CA, a server certificate for SERVER_NAME with an RSA key in PKCS#1
    (cert-manager's default encoding) and a client certificate for
    CLIENT_CN, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH (Debian: apt-get install openssl)")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=datalayer test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=work,
    )
    (work / "server.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVER_NAME}\n"
    )
    (work / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    )
    _openssl("genrsa", "-traditional", "-out", "tls.key", "2048", cwd=work)
    _openssl("req", "-new", "-key", "tls.key", "-subj", f"/CN={SERVER_NAME}", "-out", "tls.csr", cwd=work)
    _openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "2",
        "-days", "2", "-extfile", "server.ext", "-out", "tls.crt", cwd=work,
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "client.key",
             "-subj", f"/CN={CLIENT_CN}", "-out", "client.csr", cwd=work)
    _openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "3",
        "-days", "2", "-extfile", "client.ext", "-out", "client.crt", cwd=work,
    )
    pem = {name: (work / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key", "client.crt", "client.key")}
    assert pem["tls.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    return pem


def _new_key(binary: Path, key_id: str) -> tuple[str, str]:
    """(the key, its `auth.keys` entry) from `datalayer keys new`."""
    done = subprocess.run(
        [str(binary), "keys", "new", "--id", key_id, "--tenant", "billing"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    lines = [line.strip() for line in done.stdout.splitlines()]
    (key,) = [line for line in lines if line.startswith("dlk_")]
    (entry,) = [line for line in lines if line.startswith("- {")]
    return key, entry


def _keys_file(*entries: str) -> bytes:
    return ("keys:\n" + "".join(f"  {e}\n" for e in entries)).encode()


def _lay_out(docs: list[dict[str, Any]], secrets: dict[str, dict[str, bytes]], root: Path) -> dict[str, Path]:
    """Writes each Secret volume's items where the datalayer container sees
    them, under `root`, as the kubelet would (a key the Secret lacks fails,
    as the kubelet fails the pod). Returns mount path -> directory."""
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    laid: dict[str, Path] = {}
    for mount in container(docs)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        data = secrets[secret["secretName"]]
        where = root / mount["mountPath"].lstrip("/")
        where.mkdir(parents=True)
        for item in secret["items"]:
            assert item["key"] in data, f"Secret {secret['secretName']} has no key {item['key']}"
            (where / item["path"]).write_bytes(data[item["key"]])
        laid[mount["mountPath"]] = where
    return laid


def _relocate(node: Any, laid: dict[str, Path]) -> Any:
    """The config with every path under a laid-out mount moved under the root;
    such a file must exist."""
    if isinstance(node, dict):
        return {k: _relocate(v, laid) for k, v in node.items()}
    if isinstance(node, list):
        return [_relocate(v, laid) for v in node]
    if isinstance(node, str):
        for mount_path, where in laid.items():
            if node.startswith(mount_path.rstrip("/") + "/"):
                moved = where / node[len(mount_path.rstrip("/")) + 1:]
                assert moved.is_file(), f"the config names {node}, which no mounted Secret item provides"
                return str(moved)
    return node


@dataclass
class Running:
    service: Service
    docs: list[dict[str, Any]]
    keys: list[str]
    laid: dict[str, Path]
    pem: dict[str, bytes]
    token: str
    entries: list[str]


def _start(values: dict[str, Any], secrets: dict[str, dict[str, bytes]], work: Path) -> tuple[Service, list[dict[str, Any]], dict[str, Path]]:
    docs = manifests(render(values))
    laid = _lay_out(docs, secrets, work / "root")
    config = _relocate(config_file(docs), laid)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    service = Service(_binary(), path, {})
    service.start()
    return service, docs, laid


@pytest.fixture(scope="module")
def tls_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    binary = _binary()
    work = tmp_path_factory.mktemp("security-tls")
    pem = _certificates(work)
    key, entry = _new_key(binary, "live-1")
    token = "scrape-" + os.urandom(16).hex()
    secrets = {
        "datalayer-keys": {"keys": _keys_file(entry)},
        # As cert-manager writes a Certificate's Secret.
        "datalayer-tls": {"tls.crt": pem["tls.crt"], "tls.key": pem["tls.key"], "ca.crt": pem["ca.crt"]},
        "metrics-token": {"token": (token + "\n").encode()},
    }
    values = {
        "auth": {"existingSecret": "datalayer-keys"},
        "tls": {"secretName": "datalayer-tls", "clientCa": True},
        "metrics": {"tokenSecret": "metrics-token"},
        "config": {
            "auth": {"clients": [{"common_name": CLIENT_CN, "tenant": "billing", "allow": ["*"]}]},
        },
    }
    service, docs, laid = _start(values, secrets, work)
    try:
        yield Running(service, docs, [key], laid, pem, token, [entry])
    finally:
        service.kill()


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    binary = _binary()
    work = tmp_path_factory.mktemp("security-plain")
    key, entry = _new_key(binary, "live-plain")
    service, docs, laid = _start(
        {"auth": {"existingSecret": "datalayer-keys", "existingSecretKey": "keys.yaml"}},
        {"datalayer-keys": {"keys.yaml": _keys_file(entry)}},
        work,
    )
    try:
        yield Running(service, docs, [key], laid, {}, "", [entry])
    finally:
        service.kill()


def _tls_channel(run: Running, client_cert: bool = False) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=run.pem["ca.crt"],
        private_key=run.pem["client.key"] if client_cert else None,
        certificate_chain=run.pem["client.crt"] if client_cert else None,
    )
    return grpc.secure_channel(run.service.grpc_addr, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def _health(channel: grpc.Channel, service: str = "") -> int:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    return int(answer.status)


def _get(channel: grpc.Channel, key: str | None = None) -> grpc.StatusCode:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GET)
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    try:
        call(GET_K, metadata=metadata, timeout=3)
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        return code
    return grpc.StatusCode.OK


# --- TLS: why the probes connect over TCP, and that TLS health needs no key ---------------


def test_a_plaintext_health_check_fails_on_the_tls_port(tls_run: Running) -> None:
    # What the kubelet's native gRPC probe sends: it cannot work here.
    with grpc.insecure_channel(tls_run.service.grpc_addr) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_datalayer_health_in_plaintext_cannot_ask_the_tls_port(tls_run: Running) -> None:
    # Nor can `datalayer health` without https:// (it would speak
    # plaintext): hence TCP probes, unless tls.healthProbes.
    done = subprocess.run(
        [str(_binary()), "health", "--addr", tls_run.service.grpc_addr, "--timeout", "2s"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2, done.stdout + done.stderr


def test_the_tcp_probe_connects(tls_run: Running) -> None:
    probe = only(tls_run.docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["tcpSocket"]["port"] == 50051  # rendered; the test service listens where it was told
    host, port = tls_run.service.grpc_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3):
        pass
    # The connect the kubelet makes leaves the service serving.
    with _tls_channel(tls_run) as channel:
        assert _health(channel) == SERVING


def test_tls_health_probes_run_datalayer_health_over_tls(tls_run: Running) -> None:
    # tls.healthProbes: the rendered exec probe, run as the kubelet would
    # (its files where the Secret volume puts them), is SERVING; the same
    # command against another server name fails.
    values = {
        "auth": {"existingSecret": "datalayer-keys"},
        "tls": {"secretName": "datalayer-tls", "clientCa": True, "healthProbes": True},
        "metrics": {"tokenSecret": "metrics-token"},
    }
    docs = manifests(render(values))
    probes = {n: container(docs)[n] for n in ("livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        command = probe["exec"]["command"]
        assert command[:2] == ["/usr/local/bin/datalayer", "health"], name
        assert command[command.index("--server-name") + 1] == SERVER_NAME
        assert "--cert" not in command, "client certificates are optional here"
        relocated = _relocate(command, tls_run.laid)
        relocated[0] = str(_binary())
        relocated[relocated.index("--addr") + 1] = f"https://{tls_run.service.grpc_addr}"
        done = subprocess.run(relocated, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        assert "SERVING" in done.stdout
    wrong = list(relocated)
    wrong[wrong.index("--server-name") + 1] = "elsewhere.svc"
    done = subprocess.run(wrong, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr


def test_tls_health_needs_no_key_but_calls_do(tls_run: Running) -> None:
    with _tls_channel(tls_run) as channel:
        assert _health(channel) == SERVING
        assert _health(channel, "liveness") == SERVING
        assert _get(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert _get(channel, "dlk_" + "0" * 64) == grpc.StatusCode.UNAUTHENTICATED
        assert _get(channel, tls_run.keys[0]) == grpc.StatusCode.OK


def test_a_key_added_to_the_secret_works_without_a_restart(tls_run: Running) -> None:
    key, entry = _new_key(_binary(), "live-2")
    keys_dir = tls_run.laid["/etc/datalayer-secrets/auth"]
    # The kubelet swaps a Secret volume's files atomically.
    fresh = keys_dir / ".keys.yaml.new"
    fresh.write_bytes(_keys_file(*tls_run.entries, entry))
    os.replace(fresh, keys_dir / "keys.yaml")
    # Waits for the reload in the log, not by trying the key: every refused
    # try counts as a failed authentication (auth.max_failures).
    poll("the keys file re-read with both keys", lambda: _reloads(tls_run.service, keys=2), timeout=15)
    with _tls_channel(tls_run) as channel:
        assert _get(channel, key) == grpc.StatusCode.OK
        assert _get(channel, tls_run.keys[0]) == grpc.StatusCode.OK


def _reloads(service: Service, keys: int) -> bool:
    for line in list(service.lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "keys_reloaded" and entry.get("keys") == keys:
            return True
    return False


def test_a_client_certificate_from_the_secrets_ca_is_a_tenant(tls_run: Running) -> None:
    # tls.clientCa: the ca.crt of the same Secret verifies client
    # certificates; CLIENT_CN is in config.auth.clients, so it needs no key.
    with _tls_channel(tls_run, client_cert=True) as channel:
        assert _get(channel) == grpc.StatusCode.OK
    assert tls_run.service.proc is not None and tls_run.service.proc.poll() is None


def test_metrics_need_the_mounted_token(tls_run: Running) -> None:
    url = f"http://{tls_run.service.metrics_addr}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=5)
    assert refused.value.code == 401
    # What the ServiceMonitor sends: the token from the same Secret (the
    # file's trailing newline trimmed by the service).
    right = urllib.request.Request(url, headers={"Authorization": f"Bearer {tls_run.token}"})
    with urllib.request.urlopen(right, timeout=5) as answer:
        assert answer.status == 200
        assert "datalayer_" in answer.read().decode()


# --- no TLS: the native probes and the helm test pod work with keys required -----------------


def test_native_probe_checks_need_no_key(plain_run: Running) -> None:
    c = container(plain_run.docs)
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    assert c["readinessProbe"]["grpc"]["service"] == ""
    with grpc.insecure_channel(plain_run.service.grpc_addr) as channel:
        # Plaintext, no metadata: what the kubelet sends.
        assert _health(channel, "liveness") == SERVING
        assert _health(channel, "") == SERVING
        assert _get(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert _get(channel, plain_run.keys[0]) == grpc.StatusCode.OK


def test_the_helm_test_pod_passes_without_a_key(plain_run: Running) -> None:
    (hook,) = only(plain_run.docs, "Pod")["spec"]["containers"]
    args: list[str] = list(hook["args"])
    args[args.index("--addr") + 1] = plain_run.service.grpc_addr
    done = subprocess.run([str(_binary()), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SERVING" in done.stdout
