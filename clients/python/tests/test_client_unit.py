"""The hand-written layer on its own: bearer token, TLS settings, retry
timing. Uses an in-process gRPC server (no datalayer binary needed)."""

from __future__ import annotations

from concurrent import futures
from typing import Any, Iterator

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from datalayer import Client, RetryPolicy, Unavailable
from datalayer.ratelimit.v1 import ratelimit_pb2 as rl
from datalayer.ratelimit.v1 import ratelimit_pb2_grpc


class Recorder(ratelimit_pb2_grpc.RateLimitServiceServicer):
    """Answers Check after failing `fail` times with UNAVAILABLE + RetryInfo."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.metadata: list[dict[str, Any]] = []

    def Check(self, request: rl.CheckRequest, context: grpc.ServicerContext) -> rl.CheckResponse:
        self.metadata.append(dict(context.invocation_metadata()))
        if self.fail > 0:
            self.fail -= 1
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=100_000_000)))
            status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="store down", details=[detail])
            context.abort_with_status(_RichStatus(status))
        return rl.CheckResponse(allowed=True, remaining=7)


class _RichStatus(grpc.Status):  # type: ignore[misc]
    def __init__(self, status: status_pb2.Status) -> None:
        self.code = grpc.StatusCode.UNAVAILABLE
        self.details = status.message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)


@pytest.fixture
def fake() -> Iterator[tuple[str, Recorder]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recorder = Recorder()
    ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", recorder
    server.stop(None)


def test_token_is_sent_as_bearer_authorization(fake: tuple[str, Recorder]) -> None:
    addr, recorder = fake
    with Client(addr, token="s3cret") as client:
        client.ratelimit.check(rl.CheckRequest(key="k"), metadata=[("x-extra", "1")])
    assert recorder.metadata[-1]["authorization"] == "Bearer s3cret"
    assert recorder.metadata[-1]["x-extra"] == "1"


def test_no_token_no_authorization(fake: tuple[str, Recorder]) -> None:
    addr, recorder = fake
    with Client(addr) as client:
        client.ratelimit.check(rl.CheckRequest(key="k"))
    assert "authorization" not in recorder.metadata[-1]


def test_retries_honour_retry_info(fake: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    addr, recorder = fake
    recorder.fail = 2
    slept: list[float] = []
    monkeypatch.setattr("datalayer._invoke.time.sleep", slept.append)
    with Client(addr, retry_policy=RetryPolicy(retries=3, initial_backoff=0.05)) as client:
        answer = client.ratelimit.check(rl.CheckRequest(key="k"))
    assert answer.remaining == 7 and len(recorder.metadata) == 3
    assert len(slept) == 2
    assert 0.1 <= slept[0] < 0.15 and 0.1 <= slept[1] < 0.2  # RetryInfo 100 ms + jitter


def test_retries_give_up_with_the_last_error(fake: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    addr, recorder = fake
    recorder.fail = 5
    monkeypatch.setattr("datalayer._invoke.time.sleep", lambda s: None)
    with Client(addr, retries=1) as client, pytest.raises(Unavailable) as info:
        client.ratelimit.check(rl.CheckRequest(key="k"))
    assert len(recorder.metadata) == 2
    assert info.value.retry_after == pytest.approx(0.1) and info.value.message == "store down"


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3)
    for attempt, cap in [(0, 0.1), (1, 0.2), (2, 0.3), (5, 0.3)]:
        delays = [policy.delay(attempt, None) for _ in range(50)]
        assert all(0 <= d <= cap for d in delays)
    assert all(0.25 <= policy.delay(3, 0.25) <= 0.55 for _ in range(50))


def test_tls_client_needs_a_tls_server(fake: tuple[str, Recorder]) -> None:
    addr, _ = fake
    with Client(addr, tls=True, retries=0, timeout=2) as client, pytest.raises(Unavailable):
        client.ratelimit.check(rl.CheckRequest(key="k"))
