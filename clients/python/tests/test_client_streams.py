"""Server-streaming calls through the hand-written layer on their own
(`client.flags.watch`): metadata, deadlines, retries before the first answer
only, error mapping, cancellation. Uses in-process gRPC servers (no
datalayer binary needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from typing import Any, AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from datalayer import AsyncClient, Client, InvalidArgument, RetryPolicy, Unavailable
from datalayer.flags.v1 import flags_pb2 as f
from datalayer.flags.v1 import flags_pb2_grpc


def not_yet(retry_info: bool = True) -> status_pb2.Status:
    """UNAVAILABLE "not yet", with a RetryInfo of 10 ms (a repeat is safe)
    when `retry_info`."""
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="not yet")
    if retry_info:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10_000_000)))
        status.details.append(detail)
    return status


class Watcher(flags_pb2_grpc.FlagServiceServicer):
    """Watch fails `fail_before` times with UNAVAILABLE (with RetryInfo
    unless not `retry_info`), then yields `answers` changes, then fails with
    `fail_after` (or ends, or blocks until cancelled when `block`)."""

    def __init__(self) -> None:
        self.fail_before = 0
        self.retry_info = True
        self.answers = 2
        self.fail_after: grpc.StatusCode | None = None
        self.block = False
        self.calls: list[dict[str, Any]] = []
        self.time_remaining: list[float | None] = []
        self.ended = threading.Event()

    def Watch(self, request: f.WatchRequest, context: grpc.ServicerContext) -> Iterator[f.WatchResponse]:
        self.calls.append(dict(context.invocation_metadata()))
        self.time_remaining.append(context.time_remaining())
        if self.fail_before > 0:
            self.fail_before -= 1
            context.abort_with_status(rpc_status.to_status(not_yet(self.retry_info)))
        try:
            for i in range(self.answers):
                yield f.WatchResponse(flag_set=request.flag_set, key=f"k{i}", type=f.CHANGE_TYPE_WRITE, version=i + 1)
            while self.block and context.is_active():
                time.sleep(0.01)
            if self.fail_after is not None:
                context.abort(self.fail_after, "gone")
        finally:
            # With `block`, the stream ends only when the caller cancels it.
            self.ended.set()


@pytest.fixture
def watcher() -> Iterator[tuple[str, Watcher]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    w = Watcher()
    flags_pb2_grpc.add_FlagServiceServicer_to_server(w, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", w
    server.stop(None)


def keys(stream: Any) -> list[str]:
    return [c.key for c in stream]


def test_a_stream_yields_every_answer_with_the_token_and_no_default_deadline(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    with Client(addr, token="s3cret", timeout=0.5) as client:
        stream = client.flags.watch(f.WatchRequest(flag_set="s"), metadata=[("x-extra", "1")])
        assert keys(stream) == ["k0", "k1"]
        assert keys(stream) == []  # exhausted
    assert w.calls[-1]["authorization"] == "Bearer s3cret" and w.calls[-1]["x-extra"] == "1"
    # The client's default timeout (0.5 s) is for unary calls only: no
    # deadline (grpcio reports "none" as None or as ~2**63 seconds).
    [remaining] = w.time_remaining
    assert remaining is None or remaining > 1e9


def test_the_timeout_of_a_stream_is_its_deadline(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    with Client(addr) as client:
        keys(client.flags.watch(f.WatchRequest(), timeout=30))
    remaining = w.time_remaining[-1]
    assert remaining is not None and 25 < remaining < 31  # grpc-timeout is rounded


def test_unavailable_before_the_first_answer_is_retried(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    w.fail_before = 2
    with Client(addr, retry_policy=RetryPolicy(retries=3, initial_backoff=0.01)) as client:
        assert keys(client.flags.watch(f.WatchRequest())) == ["k0", "k1"]
    assert len(w.calls) == 3


def test_retries_before_the_first_answer_give_up_with_the_last_error(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    w.fail_before = 5
    with Client(addr, retry_policy=RetryPolicy(retries=1, initial_backoff=0.01)) as client:
        with pytest.raises(Unavailable) as info:
            keys(client.flags.watch(f.WatchRequest()))
    assert len(w.calls) == 2 and info.value.message == "not yet"


def test_unavailable_without_retry_info_before_the_first_answer_is_not_retried(
    watcher: tuple[str, Watcher],
) -> None:
    addr, w = watcher
    w.fail_before, w.retry_info = 2, False
    with Client(addr, retry_policy=RetryPolicy(retries=3, initial_backoff=0.01)) as client:
        with pytest.raises(Unavailable) as info:
            keys(client.flags.watch(f.WatchRequest()))
    assert len(w.calls) == 1 and info.value.message == "not yet" and info.value.retry_after is None


def test_a_stream_that_yielded_is_not_retried(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    w.fail_after = grpc.StatusCode.UNAVAILABLE
    with Client(addr, retry_policy=RetryPolicy(retries=3, initial_backoff=0.01)) as client:
        stream = client.flags.watch(f.WatchRequest())
        assert [next(stream).key, next(stream).key] == ["k0", "k1"]
        with pytest.raises(Unavailable) as info:
            next(stream)
        assert info.value.message == "gone"
        assert keys(stream) == []  # the stream is over
    assert len(w.calls) == 1


def test_stream_errors_are_mapped(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    w.answers, w.fail_after = 0, grpc.StatusCode.INVALID_ARGUMENT
    with Client(addr) as client, pytest.raises(InvalidArgument):
        keys(client.flags.watch(f.WatchRequest()))


def test_cancel_from_another_thread_ends_the_iteration(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    w.block = True
    with Client(addr) as client:
        stream = client.flags.watch(f.WatchRequest())
        timer = threading.Timer(0.3, stream.cancel)
        timer.start()
        assert keys(stream) == ["k0", "k1"]  # ends, no error
        timer.join()
    assert w.ended.wait(5)


def test_leaving_the_with_block_cancels(watcher: tuple[str, Watcher]) -> None:
    addr, w = watcher
    w.block = True
    with Client(addr) as client:
        with client.flags.watch(f.WatchRequest()) as stream:
            assert next(stream).key == "k0"
        assert not stream.cancel()
        assert keys(stream) == []
    assert w.ended.wait(5)


class AsyncWatcher(flags_pb2_grpc.FlagServiceServicer):
    def __init__(self) -> None:
        self.fail_before = 0
        self.fail_after = False
        self.block = False
        self.calls = 0

    async def Watch(  # type: ignore[override]
        self, request: f.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[f.WatchResponse]:
        self.calls += 1
        if self.fail_before > 0:
            self.fail_before -= 1
            status = not_yet()
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                status.message,
                trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
            )
        for i in range(2):
            yield f.WatchResponse(key=f"k{i}")
        if self.block:
            await asyncio.sleep(3600)
        if self.fail_after:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gone")


@pytest.fixture
async def async_watcher() -> AsyncIterator[tuple[str, AsyncWatcher]]:
    server = grpc.aio.server()
    w = AsyncWatcher()
    flags_pb2_grpc.add_FlagServiceServicer_to_server(w, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", w
    await server.stop(None)


async def test_async_retries_only_before_the_first_answer(async_watcher: tuple[str, AsyncWatcher]) -> None:
    addr, w = async_watcher
    w.fail_before, w.fail_after = 2, True
    async with AsyncClient(addr, retry_policy=RetryPolicy(retries=3, initial_backoff=0.01)) as client:
        got: list[str] = []
        with pytest.raises(Unavailable) as info:
            async for change in client.flags.watch(f.WatchRequest()):
                got.append(change.key)
    assert got == ["k0", "k1"] and info.value.message == "gone" and w.calls == 3


async def test_async_cancel_ends_the_iteration(async_watcher: tuple[str, AsyncWatcher]) -> None:
    addr, w = async_watcher
    w.block = True
    async with AsyncClient(addr) as client:
        stream = client.flags.watch(f.WatchRequest())
        asyncio.get_running_loop().call_later(0.3, stream.cancel)
        assert [c.key async for c in stream] == ["k0", "k1"]
        assert not stream.cancel()


async def test_async_task_cancellation_propagates(async_watcher: tuple[str, AsyncWatcher]) -> None:
    addr, w = async_watcher
    w.block = True
    async with AsyncClient(addr) as client:
        stream = client.flags.watch(f.WatchRequest())

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream.cancel()
