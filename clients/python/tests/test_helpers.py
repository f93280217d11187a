"""The Upstash-style helpers (rate limiters, cache get_or_set / JSON,
sessions.validate) against the real binary, sync and async."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import (
    AsyncClient,
    AsyncRateLimiter,
    Client,
    InvalidArgument,
    Unavailable,
    LimitAllResult,
    LimitResult,
    RateLimiter,
    ReportResult,
    SettleResult,
    parse_ms,
)
from datalayer.cache.v1 import cache_pb2 as c
from datalayer.session.v1 import session_pb2 as s

from .conftest import Stack, _AsyncRecorder, _Recorder, configured_stack, free_port, require, unique, wait_for

RATELIMIT = "datalayer.ratelimit.v1.RateLimitService"
CACHE = "datalayer.cache.v1.CacheService"
SESSIONS = "datalayer.session.v1.SessionService"

#: The policies of `policy_stack`'s configuration.
POLICY_CONFIG = """\
[ratelimit.policies.auth]
algorithm = "sliding_window"
limit = 3
window = "1m"

[ratelimit.policies.burst]
limit = 2
period = "1s"

[ratelimit.policies.shadow]
limit = 1
period = "1h"
shadow_mode = true
"""


@pytest.fixture(scope="module")
def policy_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The binary on its own Redis with the policies `auth` (3 per rolling
    minute), `burst` (GCRA, 2 per second) and `shadow` (GCRA, 1 per hour,
    in shadow mode); its calls count for the coverage check."""
    require(stack, RATELIMIT)
    yield from configured_stack(stack, tmp_path_factory, "policies", POLICY_CONFIG)


@pytest.fixture
def policy_client(policy_stack: Stack) -> Iterator[Client]:
    with Client(policy_stack.addr, interceptors=[_Recorder(policy_stack.called)]) as client:
        yield client


@pytest.fixture
async def async_policy_client(policy_stack: Stack) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(policy_stack.addr, interceptors=[_AsyncRecorder(policy_stack.called)])
    yield client
    await client.close()


@pytest.fixture
def offline() -> Iterator[Client]:
    """A client of nothing: a call that were sent would fail, so a helper
    that raises TypeError / ValueError raised it before sending."""
    with Client(f"127.0.0.1:{free_port()}", retries=0, timeout=0.5) as client:
        yield client


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("10s", 10_000),
        ("1 m", 60_000),
        ("500ms", 500),
        ("2h", 7_200_000),
        ("1m30s", 90_000),
        ("1m 30s", 90_000),
        (" 1.5s ", 1_500),
        ("250us", 0.25),
        ("1d", 86_400_000),
        (timedelta(seconds=2, milliseconds=5), 2_005),
        (1500, 1_500),
        (0, 0),
    ],
)
def test_parse_ms(value: Any, ms: float) -> None:
    assert parse_ms(value) == ms


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        (1.5, TypeError, "ambiguous"),
        (True, TypeError, "duration"),
        (None, TypeError, "NoneType"),
        (b"10s", TypeError, "bytes"),
        ("10", ValueError, "add a unit"),
        ("", ValueError, "duration such as"),
        ("10 sec", ValueError, "units"),
        ("1 min", ValueError, "units"),
        ("s", ValueError, "duration such as"),
        ("-1s", ValueError, "duration such as"),
        (-5, ValueError, "negative"),
        (timedelta(seconds=-1), ValueError, "negative"),
    ],
)
def test_parse_ms_refuses(value: Any, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        parse_ms(value, "window")


def test_bad_limiter_arguments_fail_before_sending(offline: Client) -> None:
    rl = offline.ratelimit
    with pytest.raises(ValueError, match="limit must be at least 1"):
        rl.sliding_window(0, "10s")
    with pytest.raises(TypeError, match="limit must be an int"):
        rl.fixed_window("10", "10s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window must be longer than zero"):
        rl.sliding_window(10, "0s")
    with pytest.raises(TypeError, match="ambiguous"):
        rl.gcra(10, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window must be a duration"):
        rl.fixed_window(10, "10 seconds")
    with pytest.raises(ValueError, match="must not exceed capacity"):
        rl.token_bucket(20, "1s", 10)
    with pytest.raises(ValueError, match="policy name must not be empty"):
        rl.policy("")
    limiter = rl.sliding_window(10, "10s")
    assert repr(limiter).startswith("RateLimiter(sliding_window(")
    with pytest.raises(ValueError, match="id must not be empty"):
        limiter.limit("")
    with pytest.raises(TypeError, match="id must be a string"):
        limiter.limit(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost must not be negative"):
        limiter.limit("u", cost=-1)
    with pytest.raises(TypeError, match="cost must be an int"):
        limiter.limit("u", cost=True)
    with pytest.raises(TypeError, match="ambiguous"):
        limiter.block_until_ready("u", 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost must be at least 1"):
        limiter.report("u", 0)
    with pytest.raises(TypeError, match="cost must be an int"):
        limiter.report("u", 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="id must not be empty"):
        limiter.report("", 1)
    with pytest.raises(ValueError, match="at least one limiter"):
        rl.limit_all("u", [])
    with pytest.raises(TypeError, match="list of RateLimiter"):
        rl.limit_all("u", limiter)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RateLimiter objects"):
        rl.limit_all("u", [limiter, "gcra"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="cost must not be negative"):
        rl.limit_all("u", [limiter], cost=-1)
    with pytest.raises(ValueError, match="id must not be empty"):
        rl.limit_all("", [limiter])
    with pytest.raises(TypeError, match="tags must be a list"):
        offline.cache.set_json("k", 1, "1m", tags="t")
    with pytest.raises(ValueError, match="JSON"):
        offline.cache.set_json("k", float("nan"), "1m")
    with pytest.raises(TypeError, match="JSON"):
        offline.cache.set_json("k", object(), "1m")
    with pytest.raises(ValueError, match="ttl must be longer than zero"):
        offline.cache.get_or_set("k", lambda: 1, 0)
    with pytest.raises(TypeError, match="session token must be a string"):
        offline.sessions.validate(b"token")  # type: ignore[arg-type]


# ------------------------------------------------------------------ rate limits


def _limiters(client: Client, n: int) -> dict[str, RateLimiter]:
    p = unique("py:helpers")
    return {
        "sliding_window": client.ratelimit.sliding_window(n, "1m", prefix=p),
        "fixed_window": client.ratelimit.fixed_window(n, timedelta(hours=1), prefix=p),
        "token_bucket": client.ratelimit.token_bucket(1, "1h", n, prefix=p),
        "gcra": client.ratelimit.gcra(n, 3_600_000, prefix=p),
    }


@pytest.mark.parametrize("algorithm", ["sliding_window", "fixed_window", "token_bucket", "gcra"])
def test_limiter_admits_exactly_n_then_refuses(client: Client, algorithm: str) -> None:
    limiter, user = _limiters(client, 5)[algorithm], unique("user")
    results = [limiter.limit(user) for _ in range(5)]
    assert all(r.success and r.reason == "within_limit" and r.limit == 5 for r in results), results
    assert [r.remaining for r in results] == [4, 3, 2, 1, 0]
    assert all(r.retry_after is None and r.reset_at > time.time() for r in results)
    refused = limiter.limit(user)
    assert isinstance(refused, LimitResult) and not refused and not refused.success
    assert refused.reason == "over_limit" and refused.remaining == 0 and refused.limit == 5
    assert refused.retry_after is not None and refused.retry_after > 0
    assert refused.reset_after > 0 and abs(refused.reset_at - (time.time() + refused.reset_after)) < 1
    with pytest.raises(Exception):
        refused.success = True  # type: ignore[misc]  # frozen
    # Another id has its own budget; a cost larger than the limit never fits.
    assert limiter.limit(unique("other"), cost=5).remaining == 0
    never = limiter.limit(unique("other"), cost=6)
    assert not never.success and never.reason == "cost_exceeds_limit" and never.retry_after is None


def test_prefix_keeps_limiters_of_one_algorithm_apart(client: Client) -> None:
    user = unique("user")
    small = client.ratelimit.fixed_window(1, "1h", prefix=unique("py:small"))
    large = client.ratelimit.fixed_window(100, "1h", prefix=unique("py:large"))
    assert small.limit(user).success and not small.limit(user).success
    assert large.limit(user).remaining == 99


def test_block_until_ready_waits_then_succeeds(client: Client) -> None:
    limiter, user = client.ratelimit.gcra(2, "1s", prefix=unique("py:block")), unique("user")
    assert limiter.limit(user) and limiter.limit(user)
    refused = limiter.limit(user)
    assert not refused and refused.retry_after is not None and 0.3 < refused.retry_after <= 0.5
    started = time.monotonic()
    ready = limiter.block_until_ready(user, "3s")
    waited = time.monotonic() - started
    assert ready.success and ready.reason == "within_limit"
    assert 0.3 < waited < 2.0, waited


def test_block_until_ready_gives_up_at_the_timeout(client: Client) -> None:
    limiter, user = client.ratelimit.fixed_window(1, "1h", prefix=unique("py:block")), unique("user")
    assert limiter.limit(user).success
    started = time.monotonic()
    result = limiter.block_until_ready(user, 200)
    assert not result.success and result.reason == "over_limit" and result.retry_after
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    never = limiter.block_until_ready(user, "10s", cost=2)
    assert never.reason == "cost_exceeds_limit" and time.monotonic() - started < 1.0


def test_remaining_does_not_consume(client: Client) -> None:
    for name, limiter in _limiters(client, 3).items():
        user = unique("user")
        assert [limiter.remaining(user) for _ in range(5)] == [3] * 5, name
        assert limiter.limit(user, cost=2).remaining == 1, name
        assert [limiter.remaining(user) for _ in range(5)] == [1] * 5, name
        assert limiter.limit(user).success and not limiter.limit(user).success, name
        assert limiter.remaining(user) == 0, name


def test_reset_restores_the_budget(client: Client) -> None:
    for name, limiter in _limiters(client, 2).items():
        user = unique("user")
        assert limiter.limit(user, cost=2).success and not limiter.limit(user).success, name
        limiter.reset(user)
        assert limiter.remaining(user) == 2, name
        assert limiter.limit(user).success, name


def test_policy_limiter_uses_the_configured_policy(policy_client: Client) -> None:
    auth, user = policy_client.ratelimit.policy("auth"), unique("ip")
    assert repr(auth) == "RateLimiter(policy='auth')"
    assert auth.remaining(user) == 3
    assert [auth.limit(user).remaining for _ in range(3)] == [2, 1, 0]
    refused = auth.limit(user)
    assert not refused.success and refused.limit == 3 and refused.reason == "over_limit"
    assert refused.retry_after is not None and refused.retry_after > 0
    auth.reset(user)
    assert auth.remaining(user) == 3
    # A policy's state is apart from an inline limit's under the same id.
    inline = policy_client.ratelimit.sliding_window(10, "1m")
    assert inline.remaining(user) == 10
    # GCRA policy: 2 per second; block_until_ready waits for the next slot.
    burst = policy_client.ratelimit.policy("burst", prefix=unique("py"))
    assert burst.limit(user) and burst.limit(user) and not burst.limit(user)
    assert burst.block_until_ready(user, "2s").success
    with pytest.raises(InvalidArgument, match="unknown policy"):
        policy_client.ratelimit.policy("nope").limit(user)


def test_report_overdraws_then_limit_refuses_with_retry(client: Client) -> None:
    """25 units reported against GCRA 10 per 10 s: spent although they do
    not fit, so the next check waits for the overdraft to refill (16 s)."""
    limiter, user = client.ratelimit.gcra(10, "10s", prefix=unique("py:report")), unique("user")
    fits = limiter.report(unique("other"), 3)
    assert isinstance(fits, ReportResult)
    assert (fits.limit, fits.remaining, fits.overdrawn) == (10, 7, False)
    over = limiter.report(user, 25)
    assert (over.limit, over.remaining, over.overdrawn) == (10, 0, True)
    assert 24 < over.reset_after <= 25 and abs(over.reset_at - (time.time() + over.reset_after)) < 1
    refused = limiter.limit(user)
    assert not refused.success and refused.reason == "over_limit" and refused.remaining == 0
    assert refused.retry_after is not None and 15 < refused.retry_after <= 16, refused
    assert not limiter.limit(user, cost=0).remaining
    with pytest.raises(InvalidArgument, match="cost"):
        limiter.report(user, 1001)  # more than 100 times the limit
    limiter.reset(user)
    assert limiter.remaining(user) == 10


def test_reserve_then_settle_gives_back_the_unused_part(client: Client) -> None:
    """An LLM call reserves 8 of 10, uses 2: the 6 come back once; using
    more than reserved spends the rest."""
    for name, limiter in _limiters(client, 10).items():
        user = unique("user")
        r = limiter.reserve(user, 8)
        assert r.success and r.reservation and r.remaining == 2, (name, r)
        settled = limiter.settle(user, r.reservation, 2)
        assert isinstance(settled, SettleResult)
        assert (settled.outcome, settled.remaining, settled.overdrawn) == ("settled", 8, False), (name, settled)
        assert limiter.settle(user, r.reservation, 0).outcome == "already_settled", name
        over = limiter.reserve(user, 3)
        assert limiter.settle(user, over.reservation, 20).overdrawn, name
        assert not limiter.limit(user).success, name
    limiter = client.ratelimit.gcra(10, "1h", prefix=unique("py:reserve"))
    assert limiter.reserve(unique("user"), 11).reservation == ""  # refused: nothing reserved
    with pytest.raises(InvalidArgument, match="reservation"):
        limiter.settle(unique("user"), "not-a-reservation", 1)
    with pytest.raises(ValueError):
        limiter.settle(unique("user"), "", 1)


async def test_async_reserve_and_settle(async_client: AsyncClient) -> None:
    limiter = async_client.ratelimit.fixed_window(5, "1h", prefix=unique("py:async-reserve"))
    user = unique("user")
    r = await limiter.reserve(user, 5)
    assert r.reservation and not (await limiter.limit(user)).success
    assert (await limiter.settle(user, r.reservation, 1)).remaining == 4


def test_report_overdraws_every_algorithm(client: Client) -> None:
    for name, limiter in _limiters(client, 5).items():
        user = unique("user")
        assert limiter.limit(user).success, name
        report = limiter.report(user, 12)
        assert report.overdrawn and report.remaining == 0 and report.limit == 5, (name, report)
        refused = limiter.limit(user)
        assert not refused.success and refused.reason == "over_limit", (name, refused)
        assert refused.retry_after is not None and refused.retry_after > 0, (name, refused)


def _limit_all_ten_and_two(client: Client) -> None:
    p, user = unique("py:all"), unique("user")
    ten = client.ratelimit.gcra(10, "1m", prefix=f"{p}:ten")
    two = client.ratelimit.sliding_window(2, "1m", prefix=f"{p}:two")
    first, second = client.ratelimit.limit_all(user, [ten, two]), client.ratelimit.limit_all(user, [ten, two])
    assert isinstance(first, LimitAllResult) and first and second.success
    assert [r.remaining for r in first.results] == [9, 1] and [r.remaining for r in second.results] == [8, 0]
    assert first.retry_after is None and all(r.reason == "within_limit" for r in first.results)
    third = client.ratelimit.limit_all(user, [ten, two])
    assert not third and not third.success
    held, full = third.results
    assert (held.success, held.reason, held.remaining, held.retry_after) == (False, "batch_rejected", 8, None)
    assert (full.success, full.reason) == (False, "over_limit") and full.retry_after is not None
    assert third.retry_after == full.retry_after
    assert ten.remaining(user) == 8, "the 10-limit spent nothing on the refused call"
    assert two.remaining(user) == 0
    # A cost only one of them can ever take: refused, nothing spent, no retry time.
    never = client.ratelimit.limit_all(unique("user"), [ten, two], cost=3)
    assert [r.reason for r in never.results] == ["batch_rejected", "cost_exceeds_limit"]
    assert never.retry_after is None
    # The same limiter twice is a repeated (key, limit): the service refuses it.
    with pytest.raises(InvalidArgument):
        client.ratelimit.limit_all(user, [ten, ten])


def test_limit_all_spends_under_every_limiter_or_none(client: Client) -> None:
    _limit_all_ten_and_two(client)


def test_limit_all_on_the_memory_store(memory_client: Client) -> None:
    _limit_all_ten_and_two(memory_client)


def test_shadow_policy_answers_allowed_with_shadow_over_limit(policy_client: Client) -> None:
    shadow, user = policy_client.ratelimit.policy("shadow"), unique("user")
    first = shadow.limit(user)
    assert (first.success, first.reason, first.remaining) == (True, "within_limit", 0)
    would_refuse = shadow.limit(user)
    assert would_refuse.success and would_refuse.reason == "shadow_over_limit", would_refuse
    assert would_refuse.remaining == 0 and would_refuse.retry_after is not None and would_refuse.retry_after > 0
    # All or nothing: a shadow policy's refusal holds none of the others back.
    auth = policy_client.ratelimit.policy("auth")
    both = policy_client.ratelimit.limit_all(user, [shadow, auth])
    assert both.success and [r.reason for r in both.results] == ["shadow_over_limit", "within_limit"]
    assert auth.remaining(user) == 2


async def test_async_limiter(async_client: AsyncClient) -> None:
    limiter = async_client.ratelimit.sliding_window(3, "1m", prefix=unique("py:async"))
    assert isinstance(limiter, AsyncRateLimiter)
    user = unique("user")
    assert await limiter.remaining(user) == 3
    results = [await limiter.limit(user) for _ in range(4)]
    assert [r.success for r in results] == [True, True, True, False]
    assert results[-1].reason == "over_limit" and results[-1].retry_after
    assert await limiter.remaining(user) == 0
    await limiter.reset(user)
    assert await limiter.remaining(user) == 3

    gcra = async_client.ratelimit.gcra(2, "1s", prefix=unique("py:async"))
    assert (await gcra.limit(user)) and (await gcra.limit(user))
    started = time.monotonic()
    ready = await gcra.block_until_ready(user, "3s")
    assert ready.success and 0.3 < time.monotonic() - started < 2.0
    given_up = await async_client.ratelimit.fixed_window(1, "1h", prefix=unique("py")).block_until_ready(user, 0)
    assert given_up.success  # the first unit fits at once
    bucket = async_client.ratelimit.token_bucket(1, "1h", 2, prefix=unique("py"))
    assert (await bucket.limit(user, cost=2)).remaining == 0
    assert not (await bucket.block_until_ready(user, 100)).success


async def test_async_report_and_limit_all(async_client: AsyncClient) -> None:
    p, user = unique("py:async:all"), unique("user")
    tokens = async_client.ratelimit.gcra(10, "10s", prefix=f"{p}:tokens")
    report = await tokens.report(user, 15)
    assert report.overdrawn and report.remaining == 0
    refused = await tokens.limit(user)
    assert not refused.success and refused.retry_after is not None and refused.retry_after > 4
    ten = async_client.ratelimit.fixed_window(10, "1h", prefix=f"{p}:ten")
    two = async_client.ratelimit.token_bucket(1, "1h", 2, prefix=f"{p}:two")
    results = [await async_client.ratelimit.limit_all(user, [ten, two]) for _ in range(3)]
    assert [r.success for r in results] == [True, True, False]
    assert [r.reason for r in results[2].results] == ["batch_rejected", "over_limit"]
    assert await ten.remaining(user) == 8
    sync_limiter = Client("127.0.0.1:1").ratelimit.gcra(1, "1s")
    with pytest.raises(TypeError, match="AsyncRateLimiter objects"):
        await async_client.ratelimit.limit_all(user, [ten, sync_limiter])  # type: ignore[list-item]


async def test_async_policy_limiter(async_policy_client: AsyncClient) -> None:
    auth, user = async_policy_client.ratelimit.policy("auth"), unique("ip")
    assert [(await auth.limit(user)).success for _ in range(4)] == [True, True, True, False]
    assert await auth.remaining(user) == 0
    await auth.reset(user)
    assert (await auth.limit(user)).remaining == 2


# ------------------------------------------------------------------ cache


def test_set_json_get_json_round_trip(client: Client) -> None:
    key = unique("py:json")
    assert client.cache.get_json(key) is None
    value = {"name": "Ada ✓", "n": 42, "tags": ["a", "b"], "nested": {"x": None, "f": 1.5}, "ok": True}
    version = client.cache.set_json(key, value, "1m", tags=["py-json"])
    assert isinstance(version, int) and version > 0
    assert client.cache.get_json(key) == value
    raw = client.cache.get(c.GetRequest(key=key)).entry
    assert raw.content_type == "application/json" and list(raw.tags) == ["py-json"]
    assert raw.value == b'{"name":"Ada \xe2\x9c\x93","n":42,"tags":["a","b"],"nested":{"x":null,"f":1.5},"ok":true}'
    assert client.cache.set_json(key, [1, 2], timedelta(minutes=1)) > version
    assert client.cache.get_json(key) == [1, 2]
    client.cache.set_json(key, None, 60_000)
    assert client.cache.get_json(key) is None
    client.cache.set(c.SetRequest(key=key, value=b"<html>", content_type="text/html", ttl=Duration(seconds=60)))
    with pytest.raises(ValueError, match="not JSON"):
        client.cache.get_json(key)
    with pytest.raises(InvalidArgument, match="ttl"):
        client.cache.set_json(unique("py:json"), 1, None)  # no cache.default_ttl on the test service


def test_get_or_set_computes_once_across_20_threads(client: Client) -> None:
    key, calls, lock = unique("py:gos"), [], threading.Lock()
    start = threading.Barrier(20)

    def compute() -> dict[str, Any]:
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return {"report": 42, "rows": (1, 2)}

    def caller(_: int) -> Any:
        start.wait()
        return client.cache.get_or_set(key, compute, "1m")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(caller, range(20)))
    assert len(calls) == 1
    # Every caller, the computing one included, gets the value as JSON made it.
    assert results == [{"report": 42, "rows": [1, 2]}] * 20
    assert client.cache.get_or_set(key, lambda: pytest.fail("a hit must not compute"), "1m") == results[0]
    assert client.cache.get_json(key) == results[0]


async def test_get_or_set_computes_once_across_20_tasks(async_client: AsyncClient) -> None:
    key, calls = unique("py:gos:async"), []

    async def compute() -> list[int]:
        calls.append(1)
        await asyncio.sleep(0.3)
        return [1, 2, 3]

    results = await asyncio.gather(*(async_client.cache.get_or_set(key, compute, "1m") for _ in range(20)))
    assert len(calls) == 1 and results == [[1, 2, 3]] * 20
    # A plain function works too; a hit does not call it.
    assert await async_client.cache.get_or_set(key, lambda: pytest.fail("hit"), "1m") == [1, 2, 3]
    assert await async_client.cache.get_or_set(unique("py:gos"), lambda: {"a": 1}, "1m") == {"a": 1}


async def test_async_set_json_get_json(async_client: AsyncClient) -> None:
    key = unique("py:json:async")
    assert await async_client.cache.get_json(key) is None
    assert await async_client.cache.set_json(key, {"a": [1, "ü"]}, "1m", stale_ttl="1m") > 0
    assert await async_client.cache.get_json(key) == {"a": [1, "ü"]}


def test_get_or_set_serves_the_stale_value_while_one_refreshes(client: Client) -> None:
    key = unique("py:swr")
    client.cache.set_json(key, "old", "1s", stale_ttl="1m", tags=["py-swr"])
    time.sleep(1.1)
    assert client.cache.get(c.GetRequest(key=key)).entry.stale
    computing, release = threading.Event(), threading.Event()

    def slow() -> str:
        computing.set()
        release.wait(5)
        return "new"

    with ThreadPoolExecutor(1) as pool:
        refresher = pool.submit(client.cache.get_or_set, key, slow, "1m", stale_ttl="1m", tags=["py-swr"])
        assert computing.wait(5)
        started = time.monotonic()
        assert client.cache.get_or_set(key, lambda: pytest.fail("the lease is taken"), "1m") == "old"
        assert time.monotonic() - started < 0.5
        release.set()
        assert refresher.result(5) == "new"
    fresh = client.cache.get(c.GetRequest(key=key)).entry
    assert not fresh.stale and list(fresh.tags) == ["py-swr"] and fresh.expires_in.seconds > 60
    assert client.cache.get_or_set(key, lambda: pytest.fail("fresh"), "1m") == "new"


def test_get_or_set_gives_the_lease_back_when_compute_fails(client: Client) -> None:
    key = unique("py:gos:fail")

    def boom() -> int:
        raise RuntimeError("backend down")

    with pytest.raises(RuntimeError, match="backend down"):
        client.cache.get_or_set(key, boom, "1m", lease_ttl="30s")
    started = time.monotonic()
    assert client.cache.get_or_set(key, lambda: 7, "1m") == 7
    assert time.monotonic() - started < 1.0


def test_get_or_set_waits_boundedly_then_computes_itself(client: Client) -> None:
    key = unique("py:gos:wait")
    held = client.cache.get_or_lease(c.GetOrLeaseRequest(key=key, lease_ttl=Duration(seconds=5)))
    assert held.status == c.LEASE_STATUS_LEASED
    started = time.monotonic()
    assert client.cache.get_or_set(key, lambda: "mine", "1m", wait="300ms") == "mine"
    assert 0.25 < time.monotonic() - started < 2.0
    assert client.cache.get_json(key) is None  # not stored: the lease is someone else's
    # The lease holder's write still lands.
    stored = client.cache.set(c.SetRequest(key=key, value=b'"theirs"', ttl=Duration(seconds=60), lease_token=held.lease_token))
    assert stored.stored
    # A waiter that gets the value within its wait returns it.
    key2 = unique("py:gos:wait")
    held2 = client.cache.get_or_lease(c.GetOrLeaseRequest(key=key2, lease_ttl=Duration(seconds=5)))

    def later() -> None:
        time.sleep(0.3)
        client.cache.set(c.SetRequest(key=key2, value=b"[1]", ttl=Duration(seconds=60), lease_token=held2.lease_token))

    t = threading.Thread(target=later)
    t.start()
    assert client.cache.get_or_set(key2, lambda: pytest.fail("waits"), "1m", wait="3s") == [1]
    t.join()


# ------------------------------------------------------------------ sessions


def test_sessions_validate(client: Client) -> None:
    user = unique("py:user")
    token = client.sessions.create(s.CreateRequest(user_id=user, data={"role": "admin"})).token
    session = client.sessions.validate(token)
    assert session is not None and session.user_id == user and dict(session.data) == {"role": "admin"}
    assert client.sessions.validate(token, touch=True) is not None
    # Unknown (well-formed, never issued; or revoked), malformed, empty, None: all None.
    unknown = token[:16] + ("0" * 64 if token[16:] != "0" * 64 else "1" * 64)
    assert client.sessions.validate(unknown) is None
    assert client.sessions.validate("not-a-token") is None
    assert client.sessions.validate("x" * 80) is None
    assert client.sessions.validate("") is None
    assert client.sessions.validate(None) is None
    client.sessions.revoke(s.RevokeRequest(token=token))
    assert client.sessions.validate(token) is None
    # The raw RPC is still there, and raises as before; flags.validate is another RPC.
    with pytest.raises(InvalidArgument):
        client.sessions.get(s.GetRequest(token="not-a-token"))
    assert callable(client.flags.validate)


async def test_async_sessions_validate(async_client: AsyncClient) -> None:
    user = unique("py:user")
    token = (await async_client.sessions.create(s.CreateRequest(user_id=user))).token
    session = await async_client.sessions.validate(token)
    assert session is not None and session.user_id == user
    assert await async_client.sessions.validate("0" * 80) is None
    assert await async_client.sessions.validate("garbage") is None
    assert await async_client.sessions.validate(None) is None


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    for service in (RATELIMIT, CACHE, SESSIONS):
        require(stack, service)



# Last: it pauses the policy stack's Redis.
def test_fail_open_limiter_admits_while_the_store_is_down(policy_stack: Stack, policy_client: Client) -> None:
    user = unique("user")
    open_ = policy_client.ratelimit.fixed_window(1, "1h", fail_open=True, prefix=unique("py:open"))
    closed = policy_client.ratelimit.fixed_window(1, "1h", prefix=unique("py:closed"))
    assert repr(open_).endswith("fail_open=True), prefix=" + repr(open_._spec.prefix) + ")")
    assert open_.limit(user).success and not open_.limit(user).success
    policy_stack.redis.pause()
    try:
        down = open_.limit(user)
        assert down.success and down.reason == "fail_open" and down.retry_after is None
        with pytest.raises(Unavailable):
            closed.limit(user)
    finally:
        policy_stack.redis.resume()
    assert wait_for(lambda: not open_.limit(user).success, timeout=10)
