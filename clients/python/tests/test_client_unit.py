"""The hand-written layer on its own: bearer token, TLS settings, retry
timing, targets, request types, AsyncClient's event loop. Uses an
in-process gRPC server (no datalayer binary needed)."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent import futures
from datetime import timedelta
from typing import Any, Iterator

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from datalayer import (
    AsyncClient,
    Client,
    DatalayerError,
    DeadlineExceeded,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
    retryable,
)
from datalayer.errors import from_rpc_error
from datalayer.ratelimit.v1 import ratelimit_pb2 as rl
from datalayer.ratelimit.v1 import ratelimit_pb2_grpc


class Recorder(ratelimit_pb2_grpc.RateLimitServiceServicer):
    """Answers Check after failing `fail` times with UNAVAILABLE, with a
    RetryInfo of 100 ms when `retry_info` (what the service sends when a
    repeat is safe), else without (the call may have been applied)."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.retry_info = True
        self.metadata: list[dict[str, Any]] = []

    def Check(self, request: rl.CheckRequest, context: grpc.ServicerContext) -> rl.CheckResponse:
        self.metadata.append(dict(context.invocation_metadata()))
        if self.fail > 0:
            self.fail -= 1
            if not self.retry_info:
                context.abort(grpc.StatusCode.UNAVAILABLE, "store: timeout; the write may have been applied")
            context.abort_with_status(_RichStatus(unavailable(retry_delay=0.1)))
        return rl.CheckResponse(allowed=True, remaining=7)


def unavailable(message: str = "store down", retry_delay: float | None = None) -> status_pb2.Status:
    """A google.rpc.Status UNAVAILABLE, with a RetryInfo when `retry_delay`."""
    details = []
    if retry_delay is not None:
        detail = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=retry_delay))
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(detail)
    return status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=message, details=details)


class _RichStatus(grpc.Status):  # type: ignore[misc]
    def __init__(self, status: status_pb2.Status) -> None:
        self.code = grpc.StatusCode.UNAVAILABLE
        self.details = status.message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)


def serve(recorder: Recorder, addr: str = "127.0.0.1:0") -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port(addr)
    server.start()
    return server, port


@pytest.fixture
def fake() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    server, port = serve(recorder)
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


def test_unavailable_without_retry_info_is_not_retried(
    fake: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No RetryInfo: the call may have been applied, so it is not repeated."""
    addr, recorder = fake
    recorder.fail, recorder.retry_info = 1, False
    slept: list[float] = []
    monkeypatch.setattr("datalayer._invoke.time.sleep", slept.append)
    with Client(addr, retries=3) as client, pytest.raises(Unavailable) as info:
        client.ratelimit.check(rl.CheckRequest(key="k"))
    assert len(recorder.metadata) == 1 and slept == []
    assert info.value.retry_after is None and "may have been applied" in info.value.message
    # The same server, with RetryInfo: retried, and answered.
    recorder.fail, recorder.retry_info = 1, True
    with Client(addr, retries=3) as client:
        assert client.ratelimit.check(rl.CheckRequest(key="k")).remaining == 7
    assert len(recorder.metadata) == 3 and len(slept) == 1 and slept[0] >= 0.1


class _FakeCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call as grpc raises it: code, message, trailers."""

    def __init__(self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None) -> None:
        self._code, self._message = code, message
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),) if status is not None else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailers

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def error(code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None) -> DatalayerError:
    return from_rpc_error(_FakeCall(code, message, status))


REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
    "Failed to connect to remote host: Connection refused"
)


def test_only_retry_info_or_a_call_never_sent_is_retryable() -> None:
    down = unavailable("store: redis is unreachable or failing: Connection refused", retry_delay=0.25)
    with_info = error(grpc.StatusCode.UNAVAILABLE, down.message, down)
    assert isinstance(with_info, Unavailable) and with_info.retry_after == pytest.approx(0.25)
    assert retryable(with_info)
    # RetryInfo without a delay still says a repeat is safe (backoff only).
    no_delay = unavailable("down")
    no_delay.details.add().Pack(error_details_pb2.RetryInfo())
    assert retryable(error(grpc.StatusCode.UNAVAILABLE, "down", no_delay))

    # The service's "may have been applied" (a plain status, or a rich one
    # without RetryInfo): not retryable.
    unknown = "store: the store did not answer within 250ms (redis.command_timeout); the write may have been applied"
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, unknown))
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, unknown, unavailable(unknown)))
    # Misconfigured store (READONLY): no RetryInfo, not retryable.
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, "store: redis is read-only"))
    # A connection lost mid-call may have delivered the call: not retryable.
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer"))

    # No connection could be made: the call never left the client.
    assert retryable(error(grpc.StatusCode.UNAVAILABLE, REFUSED))
    # ... but a status a server sent never counts as that, whatever it says.
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, REFUSED, unavailable(REFUSED)))

    # Other codes are never retried, RetryInfo or not.
    quota = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="quota")
    quota.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    exhausted = error(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", quota)
    assert isinstance(exhausted, ResourceExhausted) and exhausted.retry_after == 1.0
    assert not retryable(exhausted)
    late = error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert isinstance(late, DeadlineExceeded) and not retryable(late)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_is_retried_until_the_server_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens: grpc fails the call before sending it, so it is
    retried (here until a server starts on the port, at the first wait)."""
    port = free_port()
    recorder = Recorder()
    servers: list[grpc.Server] = []
    real_sleep = time.sleep

    def start_then_sleep(seconds: float) -> None:
        if not servers:
            servers.append(serve(recorder, f"127.0.0.1:{port}")[0])
        real_sleep(seconds)

    monkeypatch.setattr("datalayer._invoke.time.sleep", start_then_sleep)
    fast_reconnect = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]
    try:
        policy = RetryPolicy(retries=50, initial_backoff=0.05, max_backoff=0.1)
        with Client(f"127.0.0.1:{port}", retry_policy=policy, options=fast_reconnect) as client:
            assert client.ratelimit.check(rl.CheckRequest(key="k"), timeout=10).remaining == 7
        assert servers and len(recorder.metadata) == 1, "the refused attempts never reached a server"
    finally:
        for server in servers:
            server.stop(None)


def test_a_refused_connection_gives_up_after_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("datalayer._invoke.time.sleep", slept.append)
    with Client(f"127.0.0.1:{free_port()}", retries=2) as client, pytest.raises(Unavailable) as info:
        client.ratelimit.check(rl.CheckRequest(key="k"))
    assert len(slept) == 2 and info.value.message.startswith("failed to connect to all addresses")


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


def test_targets_http_dns_and_bare_are_plaintext_https_is_tls(fake: tuple[str, Recorder]) -> None:
    addr, recorder = fake
    for target, expected in [(f"http://{addr}", addr), (f"http://{addr}/", addr), (f"dns:///{addr}", f"dns:///{addr}"), (addr, addr)]:
        with Client(target, timeout=2) as client:
            assert client.target == expected
            assert client.ratelimit.check(rl.CheckRequest(key="k")).remaining == 7, target
    assert len(recorder.metadata) == 4
    # https:// is TLS: a plaintext server does not answer it.
    with Client(f"https://{addr}", retries=0, timeout=2) as client, pytest.raises(Unavailable):
        client.ratelimit.check(rl.CheckRequest(key="k"))
    assert len(recorder.metadata) == 4


def test_a_dict_request_is_a_type_error_before_sending(fake: tuple[str, Recorder]) -> None:
    addr, recorder = fake
    with Client(addr, timeout=2) as client:
        with pytest.raises(TypeError, match=r"protobuf message.*not dict.*CheckRequest\(\*\*d\)"):
            client.ratelimit.check({"key": "k", "policy": "auth"})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not str"):
            client.ratelimit.check("k")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not dict"):
            client.flags.watch({"flag_set": "flags/app.json"})  # type: ignore[arg-type]
    assert recorder.metadata == [], "nothing was sent"

    async def on_aio() -> None:
        async with AsyncClient(addr, timeout=2) as client:
            with pytest.raises(TypeError, match="not dict"):
                await client.ratelimit.check({"key": "k"})  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="not dict"):
                client.flags.watch({"flag_set": "flags/app.json"})  # type: ignore[arg-type]

    asyncio.run(on_aio())
    assert recorder.metadata == [], "nothing was sent"


def test_an_async_client_made_outside_a_running_loop_works_inside_one(fake: tuple[str, Recorder]) -> None:
    addr, recorder = fake
    client = AsyncClient(addr, token="t", timeout=2)  # no event loop runs here
    assert client.channel.get_state() == grpc.ChannelConnectivity.IDLE

    async def check() -> int:
        return (await client.ratelimit.check(rl.CheckRequest(key="k"))).remaining

    assert asyncio.run(check()) == 7
    # The first loop has closed: the next asyncio.run gets a channel of its own.
    assert asyncio.run(check()) == 7
    assert [m["authorization"] for m in recorder.metadata] == ["Bearer t", "Bearer t"]
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        client.ratelimit.stub.Check(rl.CheckRequest(key="k"))

    async def from_another_loop() -> None:
        await client.ratelimit.check(rl.CheckRequest(key="k"))

    async def bound_elsewhere() -> None:
        await client.ratelimit.check(rl.CheckRequest(key="k"))  # binds to this loop
        other = asyncio.new_event_loop()
        try:
            # A second loop, while the first still runs (in another thread).
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                future = pool.submit(other.run_until_complete, from_another_loop())
                with pytest.raises(RuntimeError, match="another event loop"):
                    await asyncio.wrap_future(future)
        finally:
            other.close()
        await client.close()

    asyncio.run(bound_elsewhere())
