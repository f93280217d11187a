"""RateLimitService through the Python client, against the real binary."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import AsyncClient, Client, DeadlineExceeded, InvalidArgument, Unavailable
from datalayer.ratelimit.v1 import ratelimit_pb2 as rl
from datalayer.ratelimit.v1 import ratelimit_pb2_grpc

from .conftest import Stack, require, unique, wait_for

SERVICE = "datalayer.ratelimit.v1.RateLimitService"


def gcra(limit: int, seconds: int) -> rl.Limit:
    return rl.Limit(gcra=rl.Gcra(limit=limit, period=Duration(seconds=seconds)))


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


def test_check_spends_and_rejects(client: Client) -> None:
    key = unique("py:check")
    limit = gcra(2, 60)
    first = client.ratelimit.check(rl.CheckRequest(key=key, limit=limit))
    assert first.allowed and first.reason == rl.REASON_WITHIN_LIMIT
    assert (first.limit, first.remaining) == (2, 1)
    client.ratelimit.check(rl.CheckRequest(key=key, limit=limit))
    third = client.ratelimit.check(rl.CheckRequest(key=key, limit=limit))
    assert not third.allowed and third.reason == rl.REASON_OVER_LIMIT
    assert third.HasField("retry_after") and third.retry_after.ToTimedelta().total_seconds() > 0


def test_check_batch_answers_in_order(client: Client) -> None:
    key = unique("py:batch")
    answer = client.ratelimit.check_batch(
        rl.CheckBatchRequest(
            checks=[
                rl.CheckRequest(key=key, limit=gcra(1, 60)),
                rl.CheckRequest(key=key, limit=gcra(1, 60)),
                rl.CheckRequest(key=key + ":other", limit=gcra(1, 60), cost=0),
            ]
        )
    )
    assert [r.allowed for r in answer.results] == [True, False, True]
    assert answer.results[2].remaining == 1


def test_reset_forgets_the_key(client: Client) -> None:
    key = unique("py:reset")
    limit = gcra(1, 3600)
    assert client.ratelimit.check(rl.CheckRequest(key=key, limit=limit)).allowed
    assert not client.ratelimit.check(rl.CheckRequest(key=key, limit=limit)).allowed
    client.ratelimit.reset(rl.ResetRequest(key=key, limit=limit))
    assert client.ratelimit.check(rl.CheckRequest(key=key, limit=limit)).allowed


def test_bad_input_raises_invalid_argument_with_field_violations(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.ratelimit.check(rl.CheckRequest(key="", limit=gcra(10, 60)))
    err = info.value
    assert ("key", "must not be empty") in [(v.field, v.description) for v in err.field_violations]
    assert err.field_violations[0].field == "key"
    assert err.status is not None and err.status.code == 3


def test_batch_violation_names_the_nested_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.ratelimit.check_batch(
            rl.CheckBatchRequest(
                checks=[
                    rl.CheckRequest(key="ok", limit=gcra(1, 60)),
                    rl.CheckRequest(key="ok", limit=rl.Limit(gcra=rl.Gcra(limit=1))),
                ]
            )
        )
    fields = [v.field for v in info.value.field_violations]
    assert any(f.startswith("checks[1].") for f in fields), fields


def test_deadline_exceeded_when_the_service_does_not_answer(stack: Stack, make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(retries=0)
    client.ratelimit.check(rl.CheckRequest(key=unique("py:warm"), limit=gcra(5, 60)))  # connected
    stack.pause_service()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            client.ratelimit.check(rl.CheckRequest(key=unique("py:dl"), limit=gcra(5, 60)), timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 2.0
        assert info.value.code.name == "DEADLINE_EXCEEDED"
    finally:
        stack.resume_service()


def test_store_down_raises_unavailable_with_no_retry_of_a_check(stack: Stack, make_client) -> None:  # type: ignore[no-untyped-def]
    """Redis paused: the Check went out and no answer came within
    redis.command_timeout (250 ms). It may have spent budget, so the service
    answers UNAVAILABLE without RetryInfo and the client does not repeat it.
    (Repeating it, as the client once did, spent the 1 s deadline on four
    attempts of 250 ms, the last of which started with less than 250 ms left
    and so rightly ended DEADLINE_EXCEEDED.)"""
    client = make_client(retries=3)
    client.ratelimit.check(rl.CheckRequest(key=unique("py:warm"), limit=gcra(5, 60)))
    stack.redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.ratelimit.check(rl.CheckRequest(key=unique("py:down"), limit=gcra(5, 60)), timeout=1.0)
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 0.6, f"one attempt of redis.command_timeout, no retry: {elapsed:.3f}s"
        assert info.value.retry_after is None
        assert "may have been applied" in info.value.message
    finally:
        stack.redis.resume()
    stack.wait_serving()


def outage_is_retryable(client: Client) -> bool:
    """A few Checks all answer UNAVAILABLE with RetryInfo: the service's
    connections to Redis have noticed it is gone (each one that still held a
    connection to the dead Redis first answers "broken pipe", which may have
    been applied, without RetryInfo)."""
    for _ in range(4):
        try:
            client.ratelimit.check(rl.CheckRequest(key=unique("py:probe"), limit=gcra(5, 60)))
        except Unavailable as e:
            if e.retry_after is None:
                return False
        else:
            return False
    return True


def test_unavailable_is_retried_until_the_store_is_back(stack: Stack, make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(retries=20, timeout=15.0)
    probe = make_client(retries=0)
    key = unique("py:retry")
    stack.redis.kill()
    wait_for(lambda: outage_is_retryable(probe))
    restart = threading.Timer(0.6, stack.redis.start)
    restart.start()
    try:
        started = time.monotonic()
        answer = client.ratelimit.check(rl.CheckRequest(key=key, limit=gcra(5, 60)))
        assert answer.allowed
        assert time.monotonic() - started >= 0.5, "answered before Redis was back: no retry happened?"
    finally:
        restart.join()
    stack.wait_serving()


def test_generated_stub_is_usable_directly(stack: Stack) -> None:
    import grpc

    with grpc.insecure_channel(stack.addr) as channel:
        stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        answer = stub.Check(rl.CheckRequest(key=unique("py:raw"), limit=gcra(3, 60)), timeout=2)
        assert answer.allowed and answer.remaining == 2


async def test_async_client_check_batch_reset_and_errors(async_client: AsyncClient) -> None:
    key = unique("py:async")
    limit = gcra(1, 60)
    first = await async_client.ratelimit.check(rl.CheckRequest(key=key, limit=limit))
    batch = await async_client.ratelimit.check_batch(rl.CheckBatchRequest(checks=[rl.CheckRequest(key=key, limit=limit)]))
    assert first.allowed and not batch.results[0].allowed
    await async_client.ratelimit.reset(rl.ResetRequest(key=key, limit=limit))
    assert (await async_client.ratelimit.check(rl.CheckRequest(key=key, limit=limit))).allowed
    with pytest.raises(InvalidArgument) as info:
        await async_client.ratelimit.check(rl.CheckRequest(key=key, limit=rl.Limit()))
    assert info.value.field_violations, "BadRequest details decoded on the aio path"


async def test_async_deadline_exceeded(stack: Stack, async_client: AsyncClient) -> None:
    await async_client.ratelimit.check(rl.CheckRequest(key=unique("py:warm"), limit=gcra(5, 60)))
    stack.pause_service()
    try:
        with pytest.raises(DeadlineExceeded):
            await async_client.ratelimit.check(rl.CheckRequest(key=unique("py:adl"), limit=gcra(5, 60)), timeout=0.3)
    finally:
        stack.resume_service()
    await asyncio.sleep(0)
