"""The chart's monitoring pieces, statically: the PrometheusRule (when it
renders, its alerts, its selectors), the Grafana dashboard ConfigMap and its
JSON, and the PromQL metric-name extractor the live test relies on
(test_live_metrics.py checks the names against a real scrape)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy_helpers import (
    CHART,
    MONITORING_API,
    MONITORING_APIS,
    NAMESPACE,
    PROMETHEUS_RULE_API,
    RELEASE,
    REPO,
    kinds,
    manifests,
    only,
    render,
)
from promql import dashboard_exprs, family, load_dashboard, metric_names, panels, selectors

FULLNAME = f"{RELEASE}-datalayer"
DASHBOARD = CHART / "dashboards" / "datalayer.json"
RULE_VALUES: dict[str, Any] = {"metrics": {"prometheusRule": {"enabled": True}}}
ALERTS = {
    "DatalayerStoreDown",
    "DatalayerPodStoreDown",
    "DatalayerMetricsAbsent",
    "DatalayerHighErrorRatio",
    "DatalayerHighLatencyP99",
    "DatalayerRedisPoolSaturated",
    "DatalayerRedisOverloaded",
}
DURATION = re.compile(r"[0-9]+(ms|s|m|h|d|w|y)")


def chart_defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def rule(values: dict[str, Any] | None = None, api_versions: list[str] = MONITORING_APIS) -> dict[str, Any]:
    return only(manifests(render(values or RULE_VALUES, api_versions=api_versions)), "PrometheusRule")


def rules(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in doc["spec"]["groups"] for r in g["rules"] if "alert" in r}


def documented_metrics() -> set[str]:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(datalayer_\w+)` \|", section, re.M))


def streaming_rpcs() -> set[str]:
    """Every server-streaming (and bidirectional) rpc declared under proto/."""
    names = set()
    for path in (REPO / "proto").rglob("*.proto"):
        names |= set(re.findall(r"^\s*rpc (\w+)\((?:stream )?\w+\) returns \(stream ", path.read_text(), re.M))
    return names


def unary_rpcs() -> set[str]:
    names = set()
    for path in (REPO / "proto").rglob("*.proto"):
        names |= set(re.findall(r"^\s*rpc (\w+)\(\w+\) returns \((?!stream )", path.read_text(), re.M))
    return names


# --- the PromQL extractor ---------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        ('rate(foo_total{a="b", c=~"x|y"}[5m])', {"foo_total"}),
        ("sum by (le, service) (rate(x_bucket[$__rate_interval]))", {"x_bucket"}),
        ("histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le))", {"h_bucket"}),
        ("a / on (pod) group_left (node) b > bool 1e3", {"a", "b"}),
        ('max_over_time(g{job="j"}[5m:1m] offset 1h) or vector(0)', {"g"}),
        ('absent(m{name="label_with_{braces}"})', {"m"}),
        ("c unless d and e", {"c", "d", "e"}),
        ("-Inf < f", {"f"}),
    ],
)
def test_the_metric_name_extractor_is_live(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_histogram_families() -> None:
    assert family("a_seconds_bucket") == family("a_seconds_count") == family("a_seconds_sum") == "a_seconds"
    assert family("a_total") == "a_total"


# --- PrometheusRule: when it renders ------------------------------------------------


def test_no_prometheus_rule_by_default() -> None:
    assert "PrometheusRule" not in kinds(manifests(render(None, api_versions=MONITORING_APIS)))


def test_prometheus_rule_needs_the_prometheus_rule_api() -> None:
    # The group version alone is not enough: the cluster must serve the kind.
    for apis in ([], [MONITORING_API]):
        rendered = render(RULE_VALUES, api_versions=apis)
        assert "PrometheusRule" not in kinds(manifests(rendered)), apis
        assert "no PrometheusRule was created" in rendered["datalayer/templates/NOTES.txt"]
    assert "PrometheusRule" in kinds(manifests(render(RULE_VALUES, api_versions=[PROMETHEUS_RULE_API])))


def test_skip_api_check_renders_without_the_api() -> None:
    # For `helm template` and GitOps renderers that cannot see the cluster.
    values = {"metrics": {"prometheusRule": {"enabled": True, "skipApiCheck": True},
                          "serviceMonitor": {"enabled": True, "skipApiCheck": True}}}
    rendered = render(values)
    assert {"PrometheusRule", "ServiceMonitor"} <= set(kinds(manifests(rendered)))
    assert "was created" not in rendered["datalayer/templates/NOTES.txt"]


def test_no_prometheus_rule_without_metrics() -> None:
    values = {"metrics": {"enabled": False, "prometheusRule": {"enabled": True, "skipApiCheck": True}}}
    assert "PrometheusRule" not in kinds(manifests(render(values, api_versions=MONITORING_APIS)))


# --- PrometheusRule: the alerts -----------------------------------------------------


def test_the_alerts_are_well_formed() -> None:
    doc = rule()
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["namespace"] == NAMESPACE
    found = rules(doc)
    assert set(found) == ALERTS
    for name, r in found.items():
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert DURATION.fullmatch(r["for"]), name
        assert r["labels"]["severity"] in {"critical", "warning"}, name
        assert r["annotations"]["summary"] and r["annotations"]["description"], name
        # Prometheus' own templates reach Prometheus: Helm did not eat them.
        assert "{{ $labels." in r["annotations"]["summary"] or "{{" not in r["annotations"]["summary"]
    assert "{{ $labels.pod }}" in found["DatalayerPodStoreDown"]["annotations"]["summary"]
    assert found["DatalayerStoreDown"]["labels"]["severity"] == "critical"


def test_every_selector_is_the_releases() -> None:
    # Each series selector carries the release's namespace and job (the
    # Service name prometheus-operator gives the ServiceMonitor's targets).
    own = f'namespace="{NAMESPACE}", job="{FULLNAME}"'
    for name, r in rules(rule()).items():
        for metric in metric_names(r["expr"]):
            for body in selectors(r["expr"], metric):
                assert body.startswith(own), f"{name}: {metric}{{{body}}}"
    custom = {"metrics": {"prometheusRule": {"enabled": True, "selector": 'cluster="prod", app="dl"'}}}
    for name, r in rules(rule(custom)).items():
        for metric in metric_names(r["expr"]):
            assert all(b.startswith('cluster="prod", app="dl"') for b in selectors(r["expr"], metric)), name


def test_alert_thresholds_and_labels_follow_the_values() -> None:
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "errorRatio": 0.02,
                "errorCodes": ["Internal", "Unavailable"],
                "latencyP99Seconds": 0.1,
                "latencyExcludedMethods": ["Watch", "EventStream", "AcquireLock", "Slow"],
                "alertLabels": {"team": "bots"},
                "labels": {"release": "kube-prometheus"},
                "additionalRules": [{"record": "datalayer:calls:rate5m", "expr": "sum(rate(datalayer_rpc_requests_total[5m]))"}],
            }
        }
    }
    doc = rule(values)
    found = rules(doc)
    assert doc["metadata"]["labels"]["release"] == "kube-prometheus"
    assert 'code=~"Internal|Unavailable"' in found["DatalayerHighErrorRatio"]["expr"]
    assert found["DatalayerHighErrorRatio"]["expr"].rstrip().endswith("> 0.02")
    assert "More than 2% of the calls" in found["DatalayerHighErrorRatio"]["annotations"]["description"]
    assert 'method!~"Watch|EventStream|AcquireLock|Slow"' in found["DatalayerHighLatencyP99"]["expr"]
    assert found["DatalayerHighLatencyP99"]["expr"].rstrip().endswith("> 0.1")
    assert 'kind="overloaded"' in found["DatalayerRedisOverloaded"]["expr"]
    for name, r in found.items():
        assert r["labels"]["team"] == "bots", name
    extra = [g for g in doc["spec"]["groups"] if g["name"] == "datalayer.rules.additional"]
    assert extra == [{"name": "datalayer.rules.additional", "rules": values["metrics"]["prometheusRule"]["additionalRules"]}]


def test_error_codes_are_spelled_as_the_service_labels_them() -> None:
    # src/metrics.rs code_label: the `code` label values of
    # datalayer_rpc_requests_total.
    source = (REPO / "src" / "metrics.rs").read_text()
    body = source.split("pub fn code_label", 1)[1].split("\n}\n", 1)[0]
    spelled = set(re.findall(r'=> "(\w+)"', body))
    assert len(spelled) == 17
    defaults = set(chart_defaults()["metrics"]["prometheusRule"]["errorCodes"])
    assert defaults <= spelled
    # The callers' mistakes are not the service's failures.
    assert not defaults & {"OK", "InvalidArgument", "NotFound", "FailedPrecondition", "OutOfRange", "Cancelled"}
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["errorCodes"]["items"]["enum"]
    assert set(allowed) == spelled


def test_latency_leaves_out_every_stream() -> None:
    # A stream's duration is its whole life: every server-streaming rpc of
    # proto/ is excluded by method name, and no unary rpc shares such a name
    # (it would be left out too).
    excluded = set(chart_defaults()["metrics"]["prometheusRule"]["latencyExcludedMethods"])
    streams = streaming_rpcs()
    assert {"Watch", "EventStream"} <= streams
    assert streams <= excluded
    assert not (streams & unary_rpcs())
    assert "AcquireLock" in excluded  # waits up to state.max_lock_wait on purpose


def test_alert_metrics_are_documented() -> None:
    used = {family(n) for r in rules(rule()).values() for n in metric_names(r["expr"])}
    assert used <= documented_metrics(), sorted(used - documented_metrics())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    # Prometheus' own checker parses every expression and template.
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule()["spec"]))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_dashboard_queries(tmp_path: Path) -> None:
    # Each dashboard query, with Grafana's variables replaced, as a
    # recording rule: promtool parses it.
    exprs = []
    for expr in dashboard_exprs(load_dashboard(DASHBOARD)):
        expr = expr.replace("$__rate_interval", "5m")
        exprs.append(re.sub(r"\$\w+", ".*", expr))
    group = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump(group))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the Grafana dashboard -----------------------------------------------------------


def dashboard_configmap(values: dict[str, Any]) -> dict[str, Any]:
    docs = manifests(render(values))
    found = [d for d in docs if d["kind"] == "ConfigMap" and "datalayer.json" in d.get("data", {})]
    assert len(found) == 1
    return found[0]


def test_no_dashboard_by_default() -> None:
    docs = manifests(render())
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "datalayer.json" in d.get("data", {})]


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    cm = dashboard_configmap({"metrics": {"grafanaDashboard": {"enabled": True}}})
    assert cm["metadata"]["name"] == f"{FULLNAME}-dashboard"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["datalayer.json"]) == load_dashboard(DASHBOARD)

    cm = dashboard_configmap(
        {
            "metrics": {
                "grafanaDashboard": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "labels": {"grafana_dashboard": "yes"},
                    "annotations": {"grafana_folder": "Bots"},
                }
            }
        }
    )
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Bots"}


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = load_dashboard(DASHBOARD)
    assert dashboard["uid"] == "datalayer" and dashboard["title"] == "datalayer"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "job", "pod", "service"} <= set(variables)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_queries_follow_the_variables() -> None:
    # Every series selector of a panel is narrowed by the namespace, job and
    # pod variables, so the dashboard shows one release at a time.
    dashboard = load_dashboard(DASHBOARD)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for metric in metric_names(expr):
                for body in selectors(expr, metric):
                    for var in ("namespace", "job", "pod"):
                        assert f'{var}=~"${var}"' in body, f"{panel['title']}: {metric}{{{body}}}"


def test_dashboard_agrees_with_the_alerts() -> None:
    # The same failure codes and the same methods left out of latency.
    defaults = chart_defaults()["metrics"]["prometheusRule"]
    codes = "|".join(defaults["errorCodes"])
    slow = "|".join(defaults["latencyExcludedMethods"])
    exprs = [t["expr"] for p in panels(load_dashboard(DASHBOARD)) for t in p.get("targets", [])]
    for expr in exprs:
        if "code=~" in expr:
            assert f'code=~"{codes}"' in expr, expr
        if "datalayer_rpc_duration_seconds" in expr:
            assert f'method!~"{slow}"' in expr, expr
    assert any("code=~" in e for e in exprs) and any("datalayer_rpc_duration_seconds" in e for e in exprs)


def test_dashboard_metrics_are_documented() -> None:
    used = {family(n) for e in dashboard_exprs(load_dashboard(DASHBOARD)) for n in metric_names(e)}
    assert used <= documented_metrics(), sorted(used - documented_metrics())
    # ... and the dashboard shows every documented metric.
    assert documented_metrics() <= used, sorted(documented_metrics() - used)


def _rule_unit_test() -> dict[str, Any]:
    """promtool unit tests of the alerts, on series labelled exactly as the
    service labels them (and as prometheus-operator adds namespace, job and
    pod), one sample a minute."""
    own = f'namespace="{NAMESPACE}", job="{FULLNAME}"'
    cache_get = 'service="datalayer.cache.v1.CacheService", method="Get"'
    check = 'service="datalayer.ratelimit.v1.RateLimitService", method="Check"'
    watch = 'service="datalayer.state.v1.StateService", method="Watch"'

    def series(name: str, labels: str, values: str) -> dict[str, str]:
        return {"series": f"{name}{{{own}, {labels}}}", "values": values}

    def buckets(name: str, labels: str, per_minute: dict[str, int]) -> list[dict[str, str]]:
        # Cumulative buckets: each le counts every observation at or below it.
        out, total = [], 0
        for le, count in per_minute.items():
            total += count
            out.append(series(name, f'{labels}, le="{le}"', f"0+{total}x30"))
        return out

    input_series = [
        series("datalayer_store_up", 'pod="p1"', "1 1 0x28"),
        series("datalayer_store_up", 'pod="p2"', "1 1 0x28"),
        # Cache Get: 1 in 6 calls fails (Unavailable). Check: half the calls
        # are callers' mistakes, which do not count.
        series("datalayer_rpc_requests_total", f'pod="p1", {cache_get}, code="OK"', "0+100x30"),
        series("datalayer_rpc_requests_total", f'pod="p1", {cache_get}, code="Unavailable"', "0+20x30"),
        series("datalayer_rpc_requests_total", f'pod="p1", {check}, code="OK"', "0+50x30"),
        series("datalayer_rpc_requests_total", f'pod="p1", {check}, code="InvalidArgument"', "0+50x30"),
        # Get takes 0.5 to 1 s; Watch streams live for minutes (left out).
        *buckets("datalayer_rpc_duration_seconds_bucket", f'pod="p1", {cache_get}',
                 {"0.25": 0, "0.5": 0, "1": 60, "+Inf": 0}),
        *buckets("datalayer_rpc_duration_seconds_bucket", f'pod="p1", {check}',
                 {"0.001": 60, "0.25": 0, "0.5": 0, "1": 0, "+Inf": 0}),
        *buckets("datalayer_rpc_duration_seconds_bucket", f'pod="p1", {watch}',
                 {"0.25": 0, "1": 0, "10": 0, "+Inf": 5}),
        series("datalayer_redis_pool_waiting_calls", 'pod="p1"', "3x30"),
        series("datalayer_redis_pool_waiting_calls", 'pod="p2"', "0x30"),
        # p1 refuses 10 calls a minute as overloaded; p2 has refused 5 once,
        # long ago, and no more since.
        series("datalayer_redis_errors_total", 'pod="p1", kind="overloaded"', "0+10x30"),
        series("datalayer_redis_errors_total", 'pod="p2", kind="overloaded"', "5x30"),
        series("datalayer_redis_errors_total", 'pod="p2", kind="timeout"', "0+10x30"),
    ]
    found = rules(rule())
    description = {name: r["annotations"]["description"] for name, r in found.items()}

    def alert(name: str, labels: dict[str, str], summary: str, **subst: str) -> dict[str, Any]:
        text = description[name]
        for key, value in subst.items():
            text = text.replace("{{ $labels.%s }}" % key, value)
        return {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": text}}

    ns, job = NAMESPACE, FULLNAME
    base = {"namespace": ns, "job": job}
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "DatalayerStoreDown", "exp_alerts": []},
                    {
                        "eval_time": "10m",
                        "alertname": "DatalayerStoreDown",
                        "exp_alerts": [
                            alert("DatalayerStoreDown", {"severity": "critical", **base},
                                  f"No datalayer pod of {ns}/{job} can write to its store")
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "DatalayerPodStoreDown",
                        "exp_alerts": [
                            alert("DatalayerPodStoreDown", {"severity": "warning", **base, "pod": pod},
                                  f"datalayer pod {ns}/{pod} cannot write to its store")
                            for pod in ("p1", "p2")
                        ],
                    },
                    {"eval_time": "20m", "alertname": "DatalayerMetricsAbsent", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "DatalayerHighErrorRatio",
                        "exp_alerts": [
                            alert("DatalayerHighErrorRatio",
                                  {"severity": "warning", **base, "service": "datalayer.cache.v1.CacheService"},
                                  "datalayer datalayer.cache.v1.CacheService: 16.67% of calls fail",
                                  service="datalayer.cache.v1.CacheService", namespace=ns, job=job)
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "DatalayerHighLatencyP99",
                        "exp_alerts": [
                            alert("DatalayerHighLatencyP99",
                                  {"severity": "warning", **base, "service": "datalayer.cache.v1.CacheService", "method": "Get"},
                                  "datalayer datalayer.cache.v1.CacheService/Get: p99 latency 995ms",
                                  service="datalayer.cache.v1.CacheService", method="Get")
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "DatalayerRedisPoolSaturated",
                        "exp_alerts": [
                            alert("DatalayerRedisPoolSaturated", {"severity": "warning", "namespace": ns, "pod": "p1"},
                                  f"datalayer pod {ns}/p1: calls wait for a Redis connection to open")
                        ],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "DatalayerRedisOverloaded",
                        "exp_alerts": [
                            alert("DatalayerRedisOverloaded", {"severity": "warning", "namespace": ns, "pod": "p1"},
                                  f"datalayer pod {ns}/p1: calls refused, too many wait for Redis")
                        ],
                    },
                ],
            }
        ],
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)")
def test_the_alerts_fire_on_the_series_the_service_exports(tmp_path: Path) -> None:
    # Every alert, on series shaped like the service's: each fires when it
    # should and for what it should (not a caller's mistake, not a stream).
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule()["spec"]))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(_rule_unit_test(), sort_keys=False))
    done = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
