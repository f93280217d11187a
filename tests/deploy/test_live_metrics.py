"""The chart's alerts and Grafana dashboard against the real service: the
binary runs with the config file the chart renders, against a real
redis-server, takes real gRPC calls, and /metrics is scraped while Redis
serves and again after Redis died. Every metric name the PrometheusRule and
the dashboard query must be in those scrapes (histograms as their _bucket,
_sum and _count series), and the `helm test` hook's command must pass
against the service while it is SERVING."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy_helpers import CHART, MONITORING_APIS, REPO, config_file, manifests, only, render
from live import RedisServer, Service, datalayer_bin, poll
from promql import dashboard_exprs, family, load_dashboard, metric_names, sample, scraped_names

FLAG_SET = "flags/allFlags.json"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Run:
    """What one run of the service showed."""

    config: dict[str, Any]
    serving: str  # /metrics while Redis served
    outage: str  # /metrics after Redis died
    # `datalayer health` as the helm test pod runs it: (exit status, output),
    # or None where the binary has no `health` subcommand yet.
    hook_serving: tuple[int, str] | None = None
    hook_outage: tuple[int, str] | None = None
    hook_liveness_outage: tuple[int, str] | None = None
    notes: list[str] = field(default_factory=list)


def _hook_args() -> list[str]:
    """The helm test pod's arguments, as the chart renders them."""
    pod = only(manifests(render()), "Pod")
    (c,) = pod["spec"]["containers"]
    args: list[str] = c["args"]
    return args


def _run_hook(binary: Path, address: str, service: str | None = None) -> tuple[int, str] | None:
    args = _hook_args()
    args[args.index("--addr") + 1] = address
    if service is not None:
        args += ["--service", service]
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    if done.returncode == 2 and "unexpected argument 'health'" in output:
        return None  # a binary from before the subcommand
    return done.returncode, output


class _Receiver:
    """An HTTP endpoint on a free loopback port answering 200 to every POST:
    a push queue's destination (datalayer_queue_push_deliveries_total)."""

    def __init__(self) -> None:
        posts: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                posts.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.posts = posts
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _push(channel: grpc.Channel, receiver: _Receiver) -> None:
    """One message of a push queue delivered to `receiver`."""
    from datalayer.queue.v1 import queue_pb2, queue_pb2_grpc

    queue = queue_pb2_grpc.QueueServiceStub(channel)
    destination = queue_pb2.Destination(url=f"http://127.0.0.1:{receiver.port}/hook")
    queue.SetDestination(queue_pb2.SetDestinationRequest(queue="hooks", destination=destination))
    queue.Enqueue(queue_pb2.EnqueueRequest(queue="hooks", message=queue_pb2.MessageSpec(payload=b"fill 42")))
    poll("the push queue's message delivered", lambda: b"fill 42" in b"".join(receiver.posts), timeout=15)


def _traffic(channel: grpc.Channel, grpc_addr: str) -> None:
    """Real calls touching every metric the service exports."""
    from datalayer.cache.v1 import cache_pb2, cache_pb2_grpc
    from datalayer.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
    from datalayer.state.v1 import state_pb2, state_pb2_grpc

    ratelimit = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
    ten_a_minute = ratelimit_pb2.Limit(gcra=ratelimit_pb2.Gcra(limit=10, period=Duration(seconds=60)))
    assert ratelimit.Check(ratelimit_pb2.CheckRequest(key="user:42", limit=ten_a_minute)).allowed
    assert ratelimit.Check(ratelimit_pb2.CheckRequest(key="user:42", policy="login")).allowed
    # Over the limit: the denial is cached (a miss), then answered from the
    # cache (a hit) -- datalayer_ratelimit_denial_cache_lookups_total.
    flood = [ratelimit.Check(ratelimit_pb2.CheckRequest(key="flood:1", policy="login")) for _ in range(5)]
    assert [r.allowed for r in flood] == [True, True, True, False, False]
    with pytest.raises(grpc.RpcError) as refused:
        ratelimit.Check(ratelimit_pb2.CheckRequest(key="", limit=ten_a_minute))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    cache = cache_pb2_grpc.CacheServiceStub(channel)
    cache.Set(cache_pb2.SetRequest(key="price:BTC", value=b"67250.5", ttl=Duration(seconds=60)))
    assert cache.Get(cache_pb2.GetRequest(key="price:BTC")).entry.value == b"67250.5"

    # A server stream (datalayer_rpc_streams_active), then its end.
    state = state_pb2_grpc.StateServiceStub(channel)
    watch = state.Watch(state_pb2.WatchRequest(collection="bots"))
    state.Put(state_pb2.PutRequest(collection="bots", key="grid-1", value=b"{}"))
    assert next(watch).key == "grid-1"
    watch.cancel()

    # A flagd evaluation (datalayer_flag_evaluations_total), over flagd's own
    # protocol: ResolveBooleanRequest{flag_key = "new-ui"}, encoded by hand.
    resolve: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/flagd.evaluation.v1.Service/ResolveBoolean"
    )
    key = b"new-ui"
    answer = resolve(b"\x0a" + bytes([len(key)]) + key, metadata=(("flagd-selector", FLAG_SET),))
    assert answer.startswith(b"\x08\x01"), answer  # value: true

    # A request that is not protobuf (datalayer_rpc_decode_errors_total).
    raw_get: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/datalayer.cache.v1.CacheService/Get")
    with pytest.raises(grpc.RpcError) as undecodable:
        raw_get(b"\xff\xff\xff")
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    host, port = grpc_addr.rsplit(":", 1)
    # Not HTTP/2 (datalayer_connections_dropped_total{reason="not_http2"}).
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: datalayer\r\n\r\n")
        try:
            s.recv(64)
        except OSError:
            pass
    # Past server.max_connections (datalayer_connections_refused_total): the
    # channel holds one connection, these idle ones fill the rest and more.
    extra = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]
    time.sleep(0.2)
    for s in extra:
        s.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    binary = datalayer_bin()
    if not binary.is_file():
        pytest.fail(
            f"the datalayer binary is missing: {binary} (build it first, e.g. `cargo build`, "
            "or set DATALAYER_BIN)",
            pytrace=False,
        )
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (Debian: apt-get install redis-server)", pytrace=False)
    work = tmp_path_factory.mktemp("live")
    flags = work / "flags.json"
    flags.write_text(
        json.dumps(
            {"flags": {"new-ui": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}}}
        )
    )
    signing_keys = work / "push-keys"
    signing_keys.write_text("0123456789abcdef0123456789abcdef\n")
    receiver = _Receiver()
    redis = RedisServer(work).start()
    # The config file exactly as the chart renders it (the listen addresses
    # and the Redis URL come from the environment, which overrides the file,
    # as DATALAYER__REDIS__URL does in the pods).
    values = {
        "redis": {"url": redis.url},
        "config": {
            "health": {"probe_interval": "100ms"},
            "server": {"max_connections": 3},
            "ratelimit": {"denial_cache": True, "policies": {"login": {"limit": 3, "period": "1m"}}},
            "flags": {"sources": [{"selector": FLAG_SET, "path": str(flags)}]},
            "queue": {
                "push": {
                    "allowed_hosts": [f"127.0.0.1:{receiver.port}"],
                    "signing_key_file": str(signing_keys),
                    "poll_interval": "50ms",
                }
            },
        },
    }
    config = config_file(manifests(render(values)))
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    service = Service(binary, config_path, {"DATALAYER__REDIS__URL": redis.url})
    try:
        service.start()
        channel = grpc.insecure_channel(service.grpc_addr)
        health = health_pb2_grpc.HealthStub(channel)

        def status(name: str = "") -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status)

        poll("health SERVING", lambda: status() == SERVING)
        _traffic(channel, service.grpc_addr)
        _push(channel, receiver)
        hook_serving = _run_hook(binary, service.grpc_addr)
        def counted_refusals() -> str | None:
            text = service.scrape()
            return text if "datalayer_connections_refused_total" in text else None

        serving = poll("a scrape with the refused connections counted", counted_refusals)

        # Redis dies: calls fail as UNAVAILABLE, health turns NOT_SERVING.
        redis.kill()
        from datalayer.cache.v1 import cache_pb2, cache_pb2_grpc

        cache = cache_pb2_grpc.CacheServiceStub(channel)
        with pytest.raises(grpc.RpcError) as outage:
            cache.Set(cache_pb2.SetRequest(key="k", value=b"v", ttl=Duration(seconds=60)), timeout=2)
        assert outage.value.code() == grpc.StatusCode.UNAVAILABLE
        poll("health NOT_SERVING", lambda: status() != SERVING)
        hook_outage = _run_hook(binary, service.grpc_addr)
        hook_liveness = _run_hook(binary, service.grpc_addr, service="liveness")
        # Opening a connection is timed as a pool wait. The first opening
        # may happen before the service installs its metrics recorder; a
        # reconnect attempt (the probe's, every 100 ms here) is counted.
        def reconnect_counted() -> str | None:
            text = service.scrape()
            return text if "datalayer_redis_pool_wait_seconds_bucket" in text else None

        outage_scrape = poll("a scrape with a Redis reconnect attempt counted", reconnect_counted)
        channel.close()
        assert service.terminate() == 0, service.log()
        yield Run(
            config=config,
            serving=serving,
            outage=outage_scrape,
            hook_serving=hook_serving,
            hook_outage=hook_outage,
            hook_liveness_outage=hook_liveness,
        )
    finally:
        service.kill()
        redis.kill()
        receiver.close()


def _exported(run: Run) -> set[str]:
    return scraped_names(run.serving) | scraped_names(run.outage)


def _rule_exprs() -> list[str]:
    values = {"metrics": {"prometheusRule": {"enabled": True}}}
    rule = only(manifests(render(values, api_versions=MONITORING_APIS)), "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_the_chart_config_file_runs_the_service(run: Run) -> None:
    # The service started from the rendered file and served (the fixture
    # made calls through it): the chart writes only keys the binary accepts.
    assert run.config["ratelimit"]["policies"]["login"] == {"limit": 3, "period": "1m"}
    assert run.config["redis"] == {"mode": "standalone"}


def test_every_alert_metric_is_exported(run: Run) -> None:
    used = set().union(*(metric_names(e) for e in _rule_exprs()))
    assert {"datalayer_store_up", "datalayer_rpc_requests_total", "datalayer_rpc_duration_seconds_bucket"} <= used
    missing = used - _exported(run)
    assert not missing, f"the PrometheusRule queries metrics the service does not export: {sorted(missing)}"


def test_every_dashboard_metric_is_exported(run: Run) -> None:
    dashboard = load_dashboard(CHART / "dashboards" / "datalayer.json")
    used = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard)))
    assert len(used) >= 15
    missing = used - _exported(run)
    assert not missing, f"the dashboard queries metrics the service does not export: {sorted(missing)}"


def test_every_exported_metric_is_on_the_dashboard_and_documented(run: Run) -> None:
    # The converse: a metric the service exports has a panel and a row in
    # docs/operations.md#metrics.
    dashboard = load_dashboard(CHART / "dashboards" / "datalayer.json")
    on_dashboard = {family(n) for e in dashboard_exprs(dashboard) for n in metric_names(e)}
    documented = set(_documented_metrics())
    exported = {family(n) for n in _exported(run) if n.startswith("datalayer_")}
    assert not exported - on_dashboard, f"exported but on no dashboard panel: {sorted(exported - on_dashboard)}"
    assert not exported - documented, f"exported but not in docs/operations.md: {sorted(exported - documented)}"


def _documented_metrics() -> list[str]:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(datalayer_\w+)` \|", section, re.M)


def test_store_up_is_what_the_store_down_alerts_read(run: Run) -> None:
    # DatalayerStoreDown fires on datalayer_store_up == 0: 1 while Redis
    # takes writes, 0 once it is gone.
    assert sample(run.serving, "datalayer_store_up") == 1
    assert sample(run.outage, "datalayer_store_up") == 0
    assert sample(run.outage, "datalayer_redis_errors_total", {"kind": "unavailable"})


def test_the_error_ratio_counts_outages_not_callers_mistakes(run: Run) -> None:
    # The codes the alert and the dashboard match are spelled as the service
    # labels them: an outage is counted, a caller's mistake is not.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    codes = set(values["metrics"]["prometheusRule"]["errorCodes"])
    unavailable = {"service": "datalayer.cache.v1.CacheService", "method": "Set", "code": "Unavailable"}
    invalid = {"service": "datalayer.ratelimit.v1.RateLimitService", "method": "Check", "code": "InvalidArgument"}
    assert sample(run.outage, "datalayer_rpc_requests_total", unavailable) == 1
    assert sample(run.outage, "datalayer_rpc_requests_total", invalid) == 1
    assert "Unavailable" in codes and "InvalidArgument" not in codes


def test_latency_histogram_has_the_labels_the_alert_groups_by(run: Run) -> None:
    labels = {"service": "datalayer.cache.v1.CacheService", "method": "Get", "le": "+Inf"}
    assert sample(run.serving, "datalayer_rpc_duration_seconds_bucket", labels) == 1
    # Streams end up in the histogram with their whole life: the alert and
    # the dashboard leave them out by method name.
    assert sample(run.serving, "datalayer_rpc_duration_seconds_count", {"method": "Watch"}) == 1


def test_helm_test_hook_passes_while_serving_and_fails_in_an_outage(run: Run) -> None:
    if run.hook_serving is None:
        pytest.skip(f"{datalayer_bin()} has no `health` subcommand yet (the hook needs `datalayer health`)")
    assert run.hook_serving[0] == 0, run.hook_serving[1]
    assert run.hook_outage is not None and run.hook_outage[0] != 0, run.hook_outage
    # `liveness` stays SERVING while Redis is down (tests.service: liveness).
    assert run.hook_liveness_outage is not None and run.hook_liveness_outage[0] == 0, run.hook_liveness_outage
