"""grpc.health.v1 follows Redis: SERVING while it answers, NOT_SERVING while
it is gone or frozen, SERVING again when it returns, with no restart.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from support import (
    CONFIG,
    NOT_SERVING,
    RATELIMIT_SERVICE,
    SERVING,
    DynamicClient,
    RedisServer,
    Service,
    duration_seconds,
    health_status,
    poll,
    wait_for_health,
)

BOTH = ("", RATELIMIT_SERVICE)
# Probe every 200ms with a 500ms timeout (CONFIG in support.py): a change
# shows within about a second; allow for a loaded machine.
NOTICE = 5.0
RECOVER = 10.0


def test_serving_overall_and_per_service(channel):
    assert health_status(channel, "") == SERVING
    assert health_status(channel, RATELIMIT_SERVICE) == SERVING


def test_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as err:
        health_status(channel, "datalayer.ratelimit.v1.NoSuchService")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def check_auth(channel, key, timeout=2.0):
    check = DynamicClient(channel).unary("datalayer.ratelimit.v1.RateLimitService/Check")
    return check(key=key, policy="auth", timeout=timeout)


def test_redis_killed_then_restarted(channel, redis):
    key = f"user:{uuid.uuid4().hex}"
    assert check_auth(channel, key).remaining == 4

    redis.kill()
    wait_for_health(channel, NOT_SERVING, BOTH, timeout=NOTICE)

    # A closed limit answers UNAVAILABLE with RetryInfo, never hangs.
    with pytest.raises(grpc.RpcError) as err:
        check_auth(channel, key)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    retry = error_details_pb2.RetryInfo()
    details = rpc_status.from_call(err.value).details
    assert any(d.Unpack(retry) for d in details), details
    assert duration_seconds(retry.retry_delay) > 0

    redis.start()  # same port, empty data
    wait_for_health(channel, SERVING, BOTH, timeout=RECOVER)
    # Calls work again on the same process; the state went with the old Redis.
    poll(
        "Check answers after Redis is back",
        lambda: check_auth(channel, key).remaining,
        lambda remaining: remaining == 4,
        timeout=RECOVER,
    )


def test_redis_frozen_then_resumed(channel, redis):
    redis.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        wait_for_health(channel, NOT_SERVING, BOTH, timeout=NOTICE)

        # The answer comes before the caller's deadline, as UNAVAILABLE
        # (closed) or FAIL_OPEN (open), not as DEADLINE_EXCEEDED.
        client = DynamicClient(channel)
        check = client.unary("datalayer.ratelimit.v1.RateLimitService/Check")
        with pytest.raises(grpc.RpcError) as err:
            check(key="frozen", policy="auth", timeout=1.0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value

        r = check(key="frozen", policy="open", timeout=1.0)
        assert r.allowed
        assert r.reason == client.enum_value("datalayer.ratelimit.v1.Reason", "REASON_FAIL_OPEN")
    finally:
        redis.resume()
    wait_for_health(channel, SERVING, BOTH, timeout=RECOVER)
    poll(
        "Check answers after Redis resumes",
        lambda: check_auth(channel, f"user:{uuid.uuid4().hex}").allowed,
        lambda allowed: allowed is True,
        timeout=RECOVER,
    )


def test_watch_streams_the_changes(channel, redis):
    stub = health_pb2_grpc.HealthStub(channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=RATELIMIT_SERVICE), timeout=15)
    try:
        assert next(stream).status == SERVING
        redis.kill()
        assert next(stream).status == NOT_SERVING
        redis.start()
        assert next(stream).status == SERVING
    finally:
        stream.cancel()


def test_starts_not_serving_while_redis_is_down_then_serves(binary, tmp_path):
    # "The service starts even when Redis is down (health says so) and
    # reconnects by itself."
    redis = RedisServer(tmp_path)  # its port: nobody listens there yet
    service = Service(binary, tmp_path, CONFIG, redis.url).start(wait_serving=False)
    channel = grpc.insecure_channel(service.target)
    try:
        poll(
            "health answers NOT_SERVING with Redis down",
            lambda: health_status(channel, ""),
            lambda s: s == NOT_SERVING,
            timeout=10,
        )
        # and stays so for a few probes
        time.sleep(0.6)
        assert health_status(channel, "") == NOT_SERVING
        assert service.proc.poll() is None, service.log_tail()
        redis.start()
        wait_for_health(channel, SERVING, BOTH, timeout=RECOVER)
        assert check_auth(channel, "late").allowed
    finally:
        channel.close()
        rc, _ = service.terminate(timeout=15)
        redis.kill()
    assert rc == 0, service.log_tail()


def test_sigterm_exits_zero_promptly_with_idle_client(service, channel):
    # An idle client connection must not hold shutdown for the whole grace
    # period (10s): with nothing in flight the process exits at once.
    assert health_status(channel, "") == SERVING
    rc, took = service.terminate(timeout=15)
    assert rc == 0, service.log_tail()
    assert took < 3.0, f"took {took:.1f}s to exit after SIGTERM"
