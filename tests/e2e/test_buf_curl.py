"""`buf curl` (from npm @bufbuild/buf) standing in for grpcurl: the gRPC
protocol over h2c, schema from server reflection only, no proto files.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from support import REPO_ROOT

BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def buf():
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run `bash scripts/setup.sh` (npm install)", pytrace=False)
    return BUF


@pytest.fixture
def curl(buf, service, tmp_path):
    """Runs `buf curl --protocol grpc --http2-prior-knowledge ARGS...`."""
    cache = tmp_path / "buf-cache"
    cache.mkdir()
    base = f"http://{service.target}"

    def run(*args: str, path: str = "") -> subprocess.CompletedProcess:
        cmd = [str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args, base + path]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BUF_CACHE_DIR": str(cache)},
        )

    return run


def ok_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, f"buf curl failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def test_list_methods(curl):
    result = curl("--list-methods")
    assert result.returncode == 0, result.stderr
    methods = result.stdout.split()
    for method in ["Check", "CheckBatch", "Reset"]:
        assert f"datalayer.ratelimit.v1.RateLimitService/{method}" in methods, methods
    assert "grpc.health.v1.Health/Check" in methods


def test_list_services_over_each_reflection_version(curl):
    for protocol in ["grpc-v1", "grpc-v1alpha"]:
        result = curl("--reflect-protocol", protocol, "--list-services")
        assert result.returncode == 0, result.stderr
        assert "datalayer.ratelimit.v1.RateLimitService" in result.stdout.split(), (protocol, result.stdout)


def test_check_by_policy(curl):
    key = f"k:{uuid.uuid4().hex}"
    path = "/datalayer.ratelimit.v1.RateLimitService/Check"
    body = json.dumps({"key": key, "policy": "auth"})
    first = ok_json(curl("-d", body, path=path))
    assert first["allowed"] is True
    assert first["limit"] == "5"  # uint64 is a string in proto3 JSON
    assert first["remaining"] == "4"
    assert first["reason"] == "REASON_WITHIN_LIMIT"
    second = ok_json(curl("-d", body, path=path))
    assert (second["allowed"], second["remaining"]) == (True, "3")


def test_readme_gcra_example(curl):
    # The README's grpcurl example, answer included.
    body = json.dumps({"key": f"user:{uuid.uuid4().hex}", "limit": {"gcra": {"limit": "10", "period": "60s"}}})
    answer = ok_json(curl("-d", body, path="/datalayer.ratelimit.v1.RateLimitService/Check"))
    assert answer == {
        "allowed": True,
        "limit": "10",
        "remaining": "9",
        "resetAfter": "6s",
        "reason": "REASON_WITHIN_LIMIT",
    }


def test_invalid_argument_exit_code_and_details(curl):
    result = curl("-d", '{"key":"","policy":"auth"}', path="/datalayer.ratelimit.v1.RateLimitService/Check")
    # buf curl exits with the gRPC code shifted left by 3: INVALID_ARGUMENT (3) -> 24.
    assert result.returncode == 3 << 3, (result.returncode, result.stderr)
    error = json.loads(result.stderr[result.stderr.index("{"):])
    assert error["code"] == "invalid_argument"
    assert [d["type"] for d in error["details"]] == ["google.rpc.BadRequest"]


def test_health_check(curl):
    answer = ok_json(curl("-d", '{"service":""}', path="/grpc.health.v1.Health/Check"))
    assert answer == {"status": "SERVING"}
    answer = ok_json(curl("-d", '{"service":"datalayer.ratelimit.v1.RateLimitService"}', path="/grpc.health.v1.Health/Check"))
    assert answer == {"status": "SERVING"}


def test_analytics_doc_example(curl):
    # docs/analytics.md's buf curl example: Track, then Query by exchange.
    import re

    doc = (REPO_ROOT / "docs" / "analytics.md").read_text()
    track_body = re.search(r"\$BUF -d '(\{\"events\".*?)' \\", doc).group(1)
    answer = ok_json(curl("-d", track_body, path="/datalayer.analytics.v1.AnalyticsService/Track"))
    assert answer == {"accepted": 2}
    query_body = re.search(r"\$BUF -d '(\{\"metric\":\"orders\".*?)' \\", doc).group(1)
    series = ok_json(curl("-d", query_body, path="/datalayer.analytics.v1.AnalyticsService/Query"))
    assert series["resolution"] == "1h"
    [kraken] = [s for s in series["series"] if s["dimensions"] == {"exchange": "kraken"}]
    assert sum(int(p.get("count", "0")) for p in kraken["points"]) >= 2
