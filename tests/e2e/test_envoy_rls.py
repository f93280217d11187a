"""Envoy's global rate-limit protocol, end to end: the real binary serves
`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, and every
call goes through Envoy's own generated Python stubs (PyPI `xds-protos`),
not through datalayer's vendored copy of the protos, so the wire format is
checked against Envoy's API as Envoy's clients see it.

The limits come from a domain file in envoyproxy/ratelimit's YAML, named by
`ratelimit.envoy.config_files` in the service's TOML file. Every test runs
against the in-process memory store and against a real redis-server.

The counting limits are per hour, in fixed windows aligned to the epoch:
before it counts, a test waits out the last seconds of an hour so that no
window ends under it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from support import CONFIG, RedisServer, Service, free_port, poll

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
HOUR = rls_pb2.RateLimitResponse.RateLimit.HOUR
MAX_U32 = 2**32 - 1

DOMAIN = "e2e"

# envoyproxy/ratelimit's shape. Exact values win over prefixes (`/api/*`),
# and prefixes over the value-less `path` (a counter per path).
DOMAIN_YAML = f"""\
domain: {DOMAIN}
descriptors:
  - key: user_id                       # any value: a counter per user
    rate_limit: {{unit: hour, requests_per_unit: 3, name: per-user}}
  - key: path
    value: /login
    rate_limit: {{unit: hour, requests_per_unit: 100, name: login, replaces: [{{name: per-user}}]}}
  - key: path
    value: /api/*
    rate_limit: {{unit: hour, requests_per_unit: 2}}
  - key: path
    value: /beta/*
    shadow_mode: true
    rate_limit: {{unit: hour, requests_per_unit: 1}}
  - key: path
    value: /closed
    rate_limit: {{unit: hour, requests_per_unit: 0}}
  - key: path
    rate_limit: {{unit: hour, requests_per_unit: 5}}
  - key: internal
    rate_limit: {{unlimited: true}}
  - key: api_key
    descriptors:
      - key: method
        value: POST
        rate_limit: {{unit: hour, requests_per_unit: 2}}
"""

# A window must not end while a test counts (a test takes a few seconds).
WINDOW_MARGIN = 20.0


def _outside_window_edge(unit_seconds: int = 3600) -> None:
    left = unit_seconds - time.time() % unit_seconds
    if left < WINDOW_MARGIN:
        time.sleep(left + 0.2)


class MetricsService(Service):
    """The service with its metrics endpoint on a known free port."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        port = free_port()
        while port == self.port:  # the OS may hand out the same free port twice
            port = free_port()
        self.metrics_addr = f"127.0.0.1:{port}"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["DATALAYER__METRICS__ADDR"] = self.metrics_addr
        return env

    def scrape(self) -> str:
        url = f"http://{self.metrics_addr}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.read().decode()


class Rls:
    """One running service and an Envoy `RateLimitServiceStub` on it."""

    def __init__(self, service: MetricsService, domain_file: Path):
        self.service = service
        self.domain_file = domain_file
        self.channel = grpc.insecure_channel(service.target)
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    def ask(
        self,
        *descriptors: ratelimit_pb2.RateLimitDescriptor,
        hits: int = 0,
        domain: str = DOMAIN,
    ) -> rls_pb2.RateLimitResponse:
        request = rls_pb2.RateLimitRequest(
            domain=domain, descriptors=list(descriptors), hits_addend=hits
        )
        return self.stub.ShouldRateLimit(request, timeout=5)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`."""
        total = 0.0
        for line in self.service.scrape().splitlines():
            m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
            if not m:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total


def d(*entries: tuple[str, str], hits: int | None = None) -> ratelimit_pb2.RateLimitDescriptor:
    """A descriptor of (key, value) entries; `hits` sets its own
    `hits_addend` (a google.protobuf.UInt64Value: 0 is set, not absent)."""
    desc = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        desc.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
        assert desc.HasField("hits_addend")
    return desc


def codes(r: rls_pb2.RateLimitResponse) -> list[int]:
    return [s.code for s in r.statuses]


@pytest.fixture(params=["memory", "redis"])
def backend(request, tmp_path):
    """None (the memory store) or a fresh redis-server."""
    if request.param == "memory":
        yield None
        return
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir).start()
    yield server
    server.kill()


@pytest.fixture
def start(binary, backend, tmp_path):
    """Starts the service with the domain file and `[ratelimit.envoy]`
    settings added to the suite's CONFIG; stops it after the test."""
    started: list[Rls] = []

    def _start(envoy_settings: str = "", domain_yaml: str = DOMAIN_YAML) -> Rls:
        workdir = tmp_path / f"service{len(started)}"
        workdir.mkdir()
        domain_file = workdir / "envoy-e2e.yaml"
        domain_file.write_text(domain_yaml)
        config = (
            CONFIG
            + "\n[ratelimit.envoy]\n"
            + f"config_files = [{json.dumps(str(domain_file))}]\n"
            + envoy_settings
        )
        url = backend.url if backend is not None else None
        service = MetricsService(binary, workdir, config, url).start()
        rls = Rls(service, domain_file)
        started.append(rls)
        _outside_window_edge()
        return rls

    yield _start
    for rls in started:
        rls.channel.close()
        if rls.service.running:
            rc, _ = rls.service.terminate(timeout=15)
            assert rc == 0, f"datalayer exited with {rc}:\n{rls.service.log_tail()}"


@pytest.fixture
def rls(start) -> Rls:
    return start()


# --------------------------------------------------------------------------
# counting and matching


def test_each_value_counts_apart_until_over_limit(rls):
    remaining = []
    for _ in range(3):
        r = rls.ask(d(("user_id", "alice")))
        assert r.overall_code == OK
        (s,) = r.statuses
        assert s.code == OK
        assert (s.current_limit.requests_per_unit, s.current_limit.unit) == (3, HOUR)
        assert s.current_limit.name == "per-user"
        remaining.append(s.limit_remaining)
    assert remaining == [2, 1, 0]

    over = rls.ask(d(("user_id", "alice")))
    assert over.overall_code == OVER_LIMIT
    (s,) = over.statuses
    assert (s.code, s.limit_remaining) == (OVER_LIMIT, 0)
    assert s.current_limit.requests_per_unit == 3
    # The window is the hour aligned to the epoch: it ends on the hour.
    to_the_hour = 3600 - time.time() % 3600
    assert s.duration_until_reset.nanos == 0
    assert abs(s.duration_until_reset.seconds - to_the_hour) <= 2, (
        s.duration_until_reset,
        to_the_hour,
    )

    # Another value of the same key has its own counter.
    bob = rls.ask(d(("user_id", "bob")))
    assert (bob.overall_code, bob.statuses[0].limit_remaining) == (OK, 2)
    # Without response_headers, no headers are added.
    assert list(over.response_headers_to_add) == []


def test_exact_then_prefix_then_any_value(rls):
    def limit_of(path: str) -> int:
        s = rls.ask(d(("path", path))).statuses[0]
        return s.current_limit.requests_per_unit

    assert limit_of("/login") == 100  # the exact value
    assert limit_of("/api/v1") == 2  # the prefix `/api/*`
    assert limit_of("/api/") == 2  # the prefix alone matches too
    assert limit_of("/apix") == 5  # not the prefix: the value-less `path`
    assert limit_of("/anything") == 5

    # A prefix counts each value apart, as a value-less node does.
    assert [rls.ask(d(("path", "/api/a"))).statuses[0].code for _ in range(3)] == [
        OK,
        OK,
        OVER_LIMIT,
    ]
    assert rls.ask(d(("path", "/api/b"))).overall_code == OK

    # Nothing configured for the key: OK, with no limit told.
    r = rls.ask(d(("tenant", "acme")))
    assert (r.overall_code, codes(r)) == (OK, [OK])
    assert not r.statuses[0].HasField("current_limit")


def test_nested_descriptors_apply_at_the_last_entry(rls):
    post = d(("api_key", "k1"), ("method", "POST"))
    # The first entry alone reaches a node without a limit.
    alone = rls.ask(d(("api_key", "k1")))
    assert (alone.overall_code, alone.statuses[0].HasField("current_limit")) == (OK, False)
    # An entry the tree does not have below api_key: no limit.
    get = rls.ask(d(("api_key", "k1"), ("method", "GET")))
    assert get.statuses[0].HasField("current_limit") is False
    # More entries than the tree is deep: no limit either.
    deeper = rls.ask(d(("api_key", "k1"), ("method", "POST"), ("x", "y")))
    assert deeper.statuses[0].HasField("current_limit") is False

    # Two descriptors with the same entries in one request share a counter.
    both = rls.ask(post, post)
    assert [s.limit_remaining for s in both.statuses] == [1, 0]
    assert rls.ask(post).overall_code == OVER_LIMIT
    # Per api_key value.
    assert rls.ask(d(("api_key", "k2"), ("method", "POST"))).overall_code == OK


def test_the_overall_code_is_the_worst_and_statuses_keep_request_order(rls):
    for _ in range(3):
        rls.ask(d(("user_id", "carol")))
    r = rls.ask(
        d(("tenant", "nothing-configured")),
        d(("user_id", "carol")),
        d(("user_id", "dave")),
    )
    assert codes(r) == [OK, OVER_LIMIT, OK]
    assert r.overall_code == OVER_LIMIT
    assert [s.limit_remaining for s in r.statuses] == [0, 0, 2]
    fine = rls.ask(d(("user_id", "dave")), d(("tenant", "x")))
    assert (fine.overall_code, codes(fine)) == (OK, [OK, OK])


# --------------------------------------------------------------------------
# hits_addend


def test_hits_addend_per_request_and_per_descriptor(rls):
    # The request's hits_addend counts for every descriptor (0 means 1).
    r = rls.ask(d(("user_id", "erin")), d(("path", "/api/e")), hits=2)
    assert [s.limit_remaining for s in r.statuses] == [1, 0]
    assert r.overall_code == OK
    # A descriptor's own hits_addend wins over the request's; 0 only looks.
    peek = rls.ask(d(("user_id", "erin"), hits=0), hits=50)
    assert (peek.overall_code, peek.statuses[0].limit_remaining) == (OK, 1)
    one = rls.ask(d(("user_id", "erin"), hits=1), hits=50)
    assert (one.overall_code, one.statuses[0].limit_remaining) == (OK, 0)
    # At the limit, looking is still OK, and one more hit is over.
    assert rls.ask(d(("user_id", "erin"), hits=0)).overall_code == OK
    assert rls.ask(d(("user_id", "erin"))).overall_code == OVER_LIMIT

    # More hits than are left is over the limit.
    assert rls.ask(d(("user_id", "frank")), hits=4).overall_code == OVER_LIMIT
    r = rls.ask(d(("user_id", "frank")), hits=3)
    assert (r.overall_code, r.statuses[0].limit_remaining) == (OK, 0)


# --------------------------------------------------------------------------
# shadow mode, unlimited, blocked, replaces, unknown domains


def test_a_shadow_mode_descriptor_counts_but_answers_ok(rls):
    first = rls.ask(d(("path", "/beta/x")))
    assert (first.overall_code, first.statuses[0].limit_remaining) == (OK, 0)
    over = rls.ask(d(("path", "/beta/x")))
    (s,) = over.statuses
    assert (over.overall_code, s.code, s.limit_remaining) == (OK, OK, 0)
    assert s.current_limit.requests_per_unit == 1
    # It never hides another descriptor's OVER_LIMIT.
    for _ in range(3):
        rls.ask(d(("user_id", "gina")))
    mixed = rls.ask(d(("path", "/beta/x")), d(("user_id", "gina")))
    assert codes(mixed) == [OK, OVER_LIMIT]
    assert mixed.overall_code == OVER_LIMIT


def test_unlimited_and_zero_requests_per_unit(rls):
    free = rls.ask(d(("internal", "yes")), hits=1000)
    (s,) = free.statuses
    assert (free.overall_code, s.code, s.limit_remaining) == (OK, OK, MAX_U32)
    assert not s.HasField("current_limit")
    for _ in range(2):
        closed = rls.ask(d(("path", "/closed")))
        (s,) = closed.statuses
        assert (closed.overall_code, s.code, s.limit_remaining) == (OVER_LIMIT, OVER_LIMIT, 0)
        assert (s.current_limit.requests_per_unit, s.current_limit.unit) == (0, HOUR)
        assert s.duration_until_reset.seconds > 0


def test_replaces_switches_the_named_limit_off(rls):
    for _ in range(3):
        rls.ask(d(("user_id", "hank")))
    assert rls.ask(d(("user_id", "hank"))).overall_code == OVER_LIMIT
    # `login` replaces `per-user` for the requests that match both.
    r = rls.ask(d(("user_id", "hank")), d(("path", "/login")))
    assert (r.overall_code, codes(r)) == (OK, [OK, OK])
    assert not r.statuses[0].HasField("current_limit")
    assert r.statuses[1].current_limit.name == "login"


def test_an_unknown_domain_is_ok(rls):
    r = rls.ask(d(("user_id", "x")), d(("path", "/closed")), domain="not-configured")
    assert (r.overall_code, codes(r)) == (OK, [OK, OK])
    assert not any(s.HasField("current_limit") for s in r.statuses)


def limited(*entries: tuple[str, str], rpu: int, unit: int) -> ratelimit_pb2.RateLimitDescriptor:
    """A descriptor carrying Envoy's own limit (the `limit` action's
    `RateLimitOverride`)."""
    desc = d(*entries)
    desc.limit.CopyFrom(
        ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=rpu, unit=unit)
    )
    return desc


def test_a_limit_sent_by_envoy_replaces_the_files_and_counts_apart(rls):
    unit = ratelimit_unit_pb2.HOUR
    first = rls.ask(limited(("user_id", "omar"), rpu=1, unit=unit))
    (s,) = first.statuses
    assert (first.overall_code, s.limit_remaining) == (OK, 0)
    assert (s.current_limit.requests_per_unit, s.current_limit.unit) == (1, HOUR)
    assert rls.ask(limited(("user_id", "omar"), rpu=1, unit=unit)).overall_code == OVER_LIMIT
    # The file's per-user rule (3 an hour) has not counted those.
    assert rls.ask(d(("user_id", "omar"))).statuses[0].limit_remaining == 2
    # Over a shadow-mode rule of the file, the override is not shadow.
    rls.ask(limited(("path", "/beta/o"), rpu=1, unit=unit))
    assert rls.ask(limited(("path", "/beta/o"), rpu=1, unit=unit)).overall_code == OVER_LIMIT
    name = "datalayer_envoy_ratelimit_decisions_total"
    assert rls.metric(name, domain=DOMAIN, descriptor="(override)", result="over_limit") == 2
    # YEAR is not a unit the service counts in: the field is named.
    with pytest.raises(grpc.RpcError) as err:
        rls.ask(limited(("user_id", "omar"), rpu=1, unit=ratelimit_unit_pb2.YEAR))
    assert _bad_fields(err.value) == ["descriptors[0].limit.unit"]


# --------------------------------------------------------------------------
# bad requests


def _bad_fields(err: grpc.RpcError) -> list[str]:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields += [v.field for v in br.field_violations]
    return fields


@pytest.mark.parametrize(
    ("domain", "descriptors", "field"),
    [
        ("", [d(("user_id", "x"))], "domain"),
        (DOMAIN, [], "descriptors"),
        (DOMAIN, [d(("user_id", str(i))) for i in range(65)], "descriptors"),
        (DOMAIN, [d()], "descriptors[0].entries"),
        (DOMAIN, [d(*[(f"k{i}", "v") for i in range(17)])], "descriptors[0].entries"),
        (DOMAIN, [d(("user_id", "x")), d(("", "v"))], "descriptors[1].entries[0]"),
        (DOMAIN, [d(("k" * 257, "v"))], "descriptors[0].entries[0]"),
        (DOMAIN, [d(("user_id", "v" * 257))], "descriptors[0].entries[0]"),
    ],
    ids=[
        "empty-domain",
        "no-descriptors",
        "65-descriptors",
        "no-entries",
        "17-entries",
        "empty-key",
        "long-key",
        "long-value",
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(rls, domain, descriptors, field):
    request = rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors)
    with pytest.raises(grpc.RpcError) as err:
        rls.stub.ShouldRateLimit(request, timeout=5)
    assert _bad_fields(err.value) == [field]


def test_the_bounds_themselves_are_accepted(rls):
    r = rls.ask(*[d(("tenant", str(i))) for i in range(64)])
    assert len(r.statuses) == 64 and r.overall_code == OK
    r = rls.ask(d(*[(f"k{i}", "v") for i in range(16)]))
    assert r.overall_code == OK
    r = rls.ask(d(("k" * 256, "v" * 256)), d(("user_id", "")))
    assert codes(r) == [OK, OK]


# --------------------------------------------------------------------------
# settings: response headers, global shadow mode


def test_response_headers_tell_the_most_constrained_limit(start):
    rls = start("response_headers = true\n")
    r = rls.ask(d(("user_id", "ivan")), d(("path", "/api/i")), d(("tenant", "none")))
    headers = {h.key: h.value for h in r.response_headers_to_add}
    assert set(headers) == {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    # /api/* (2 per hour, 1 left) is tighter than per-user (3, 2 left).
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("2", "1")
    assert abs(int(headers["RateLimit-Reset"]) - (3600 - time.time() % 3600)) <= 2
    # Only descriptors with no limit: no headers.
    none = rls.ask(d(("tenant", "none")), d(("internal", "x")))
    assert list(none.response_headers_to_add) == []


def test_global_shadow_mode_answers_ok_while_statuses_tell(start):
    rls = start("shadow_mode = true\n")
    for _ in range(3):
        rls.ask(d(("user_id", "judy")))
    r = rls.ask(d(("user_id", "judy")), d(("path", "/closed")))
    assert r.overall_code == OK
    assert codes(r) == [OVER_LIMIT, OVER_LIMIT]


# --------------------------------------------------------------------------
# reload and metrics


def test_the_domain_file_reloads_and_a_bad_one_keeps_the_previous(start):
    rls = start('reload_interval = "1s"\n')

    def limit_of_user() -> int:
        status = rls.ask(d(("user_id", "probe"), hits=0)).statuses[0]
        return status.current_limit.requests_per_unit

    assert limit_of_user() == 3
    rls.domain_file.write_text(
        DOMAIN_YAML.replace("requests_per_unit: 3,", "requests_per_unit: 7,")
    )
    poll("the changed file in force", limit_of_user, lambda n: n == 7, timeout=10, interval=0.2)
    poll(
        "a successful reload counted",
        lambda: rls.metric("datalayer_envoy_ratelimit_config_reloads_total", result="ok"),
        lambda n: n >= 1,
    )

    rls.domain_file.write_text(
        f"domain: {DOMAIN}\n"
        "descriptors:\n"
        "  - key: user_id\n"
        "    rate_limit: {unit: fortnight, requests_per_unit: 1}\n"
    )
    poll(
        "a refused reload counted",
        lambda: rls.metric("datalayer_envoy_ratelimit_config_reloads_total", result="invalid"),
        lambda n: n >= 1,
    )
    assert limit_of_user() == 7, "the previous configuration stays"
    log = rls.service.log_path.read_text(errors="replace")
    assert "descriptors[0].rate_limit.unit" in log, rls.service.log_tail()
    assert rls.service.proc.poll() is None, "a bad file never stops the service"


def test_decisions_are_counted_by_domain_descriptor_and_result(rls):
    for _ in range(4):
        rls.ask(d(("user_id", "kate")))
    rls.ask(d(("path", "/beta/k")))
    rls.ask(d(("path", "/beta/k")))
    rls.ask(d(("internal", "1")))
    rls.ask(d(("api_key", "k"), ("method", "POST")))
    name = "datalayer_envoy_ratelimit_decisions_total"

    def count(descriptor: str, result: str) -> float:
        return rls.metric(name, domain=DOMAIN, descriptor=descriptor, result=result)

    # The value of a value-less node is not a label: no label per user.
    assert count("user_id", "ok") == 3
    assert count("user_id", "over_limit") == 1
    assert count("path_/beta/*", "ok") == 1
    assert count("path_/beta/*", "shadow_over_limit") == 1
    assert count("internal", "unlimited") == 1
    assert count("api_key.method_POST", "ok") == 1
    assert "kate" not in rls.service.scrape()


# --------------------------------------------------------------------------
# the store unavailable (Redis only)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_gone_is_unavailable_so_envoys_failure_mode_decides(rls, backend):
    assert rls.ask(d(("user_id", "lena"))).overall_code == OK
    backend.kill()
    with pytest.raises(grpc.RpcError) as err:
        rls.ask(d(("user_id", "lena")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # A request that needs no counter still answers.
    r = rls.ask(d(("internal", "yes")), d(("tenant", "x")))
    assert r.overall_code == OK
