"""`client.queue.work(...)` and `client.queue.consume(...)` end to end,
against the real binary: handlers that fail are retried and dead-lettered
per max_attempts, the concurrency (the stream's credits) is never
exceeded, no message is lost, and stopping, errors, lost leases and a
restarted service are handled; acks go on the stream (no unary Ack). On a
scripted stream: a refused ack raises, and the acks a break left unanswered
are sent again with the unary Ack."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import (
    AsyncClient,
    AsyncDelivery,
    Client,
    DeadlineExceeded,
    Delivery,
    FailedPrecondition,
    InvalidArgument,
    WorkerStats,
)
from datalayer._workers import AsyncConsumer, Consumer, _reason, error_reason
from datalayer.errors import from_rpc_error
from datalayer.queue.v1 import queue_pb2 as qp

from . import conftest
from .conftest import Stack, _Recorder, require, run_service, unique, wait_for

SERVICE = "datalayer.queue.v1.QueueService"
N = 50
MAX_ATTEMPTS = 3


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


@pytest.fixture(params=["redis", "memory"])
def queue_client(request: pytest.FixtureRequest) -> Client:
    c: Client = request.getfixturevalue("client" if request.param == "redis" else "memory_client")
    return c


def ms(n: int) -> Duration:
    return Duration(seconds=n // 1000, nanos=(n % 1000) * 1_000_000)


def fill(c: Client, q: str, n: int = N) -> dict[str, int]:
    """n messages (payload = their number); message id -> number."""
    specs = [
        qp.MessageSpec(payload=str(i).encode(), max_attempts=MAX_ATTEMPTS, backoff=qp.Backoff(fixed=ms(50)))
        for i in range(n)
    ]
    ids: dict[str, int] = {}
    for start in range(0, n, 25):
        answer = c.queue.enqueue_batch(qp.EnqueueBatchRequest(queue=q, messages=specs[start : start + 25]))
        ids.update({r.message_id: start + k for k, r in enumerate(answer.results)})
    return ids


def always_fails(i: int) -> bool:
    return i % 10 == 3


def fails_once(i: int) -> bool:
    return i % 10 == 7


def stats(c: Client, q: str) -> qp.StatsResponse:
    return c.queue.stats(qp.StatsRequest(queue=q))


def dead_ids(c: Client, q: str) -> dict[str, str]:
    return {d.message.message_id: d.reason for d in c.queue.list_dead(qp.ListDeadRequest(queue=q)).messages}


class Tracker:
    """What the handlers saw: attempts per message, handlers in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: dict[int, list[int]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self, d: Delivery | AsyncDelivery) -> int:
        i = int(d.payload)
        with self.lock:
            self.attempts[i].append(d.attempt)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return i

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    @staticmethod
    def outcome(i: int, attempt: int) -> None:
        if always_fails(i):
            raise ValueError(f"message {i} always fails\nsecond line")
        if fails_once(i) and attempt == 1:
            raise RuntimeError(f"message {i} fails once")


def check_outcome(c: Client, q: str, ids: dict[str, int], tracker: Tracker, ws: WorkerStats, concurrency: int) -> None:
    n = len(ids)
    doomed = {i for i in range(n) if always_fails(i)}
    once = {i for i in range(n) if fails_once(i)}
    s = stats(c, q)
    assert (s.acked_total, s.dead, s.waiting, s.delayed, s.leased) == (n - len(doomed), len(doomed), 0, 0, 0)
    # Nothing lost: every message was handled, and is acked or dead.
    assert set(tracker.attempts) == set(range(n))
    for i in range(n):
        expected = [1, 2, 3] if i in doomed else [1, 2] if i in once else [1]
        assert tracker.attempts[i] == expected, (i, tracker.attempts[i])
    dead = dead_ids(c, q)
    assert {ids[m] for m in dead} == doomed
    for reason in dead.values():
        # The exception's text, newline and all made acceptable.
        assert reason.startswith("ValueError: message ") and reason.endswith("always fails second line"), reason
    # Concurrency: never exceeded, and used.
    assert 2 <= tracker.max_in_flight <= concurrency, tracker.max_in_flight
    assert ws.max_in_flight <= concurrency
    assert ws.acked == n - len(doomed)
    assert ws.nacked == len(doomed) * MAX_ATTEMPTS + len(once)
    assert ws.dead == len(doomed)
    assert ws.received == ws.acked + ws.nacked
    assert (ws.settle_failed, ws.in_flight) == (0, 0)


def test_work_retries_dead_letters_and_bounds_concurrency(queue_client: Client) -> None:
    c, q, concurrency = queue_client, unique("py.work"), 5
    ids = fill(c, q)
    tracker = Tracker()

    def handle(d: Delivery) -> None:
        i = tracker.enter(d)
        try:
            time.sleep(0.01 + (i % 3) * 0.01)
            Tracker.outcome(i, d.attempt)
        finally:
            tracker.leave()

    with c.queue.work(q, handle, concurrency=concurrency) as worker:
        assert worker.running
        wait_for(lambda: stats(c, q).acked_total + stats(c, q).dead == N, timeout=30)
        wait_for(lambda: worker.stats.in_flight == 0)
    assert worker.finished and not worker.running and worker.error is None
    assert "Worker(queue=" in repr(worker)
    check_outcome(c, q, ids, tracker, worker.stats, concurrency)


async def test_async_work_retries_dead_letters_and_bounds_concurrency(async_client: AsyncClient, client: Client) -> None:
    q, concurrency = unique("py.awork"), 4
    ids = fill(client, q)
    tracker = Tracker()
    stop = asyncio.Event()

    async def handle(d: AsyncDelivery) -> None:
        i = tracker.enter(d)
        try:
            await asyncio.sleep(0.01 + (i % 3) * 0.01)
            Tracker.outcome(i, d.attempt)
        finally:
            tracker.leave()

    worker = async_client.queue.work(q, handle, concurrency=concurrency, stop_event=stop)
    deadline = time.monotonic() + 30
    while (s := await async_client.queue.stats(qp.StatsRequest(queue=q))).acked_total + s.dead < N:
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.05)
    assert not await worker.wait(timeout=0.05), "still running"
    stop.set()
    assert await worker.wait(timeout=5)
    assert worker.finished and not worker.running
    assert await worker.stop() is True  # once more: nothing to do
    check_outcome(client, q, ids, tracker, worker.stats, concurrency)


def test_consume_holds_at_most_concurrency_unsettled(client: Client) -> None:
    c, q = client, unique("py.consume")
    ids = fill(c, q, 6)
    with c.queue.consume(q, concurrency=2, lease="20s") as messages:
        first, second = next(messages), next(messages)
        assert [int(first.payload), int(second.payload)] == [0, 1]
        assert first.attempt == 1 and first.max_attempts == MAX_ATTEMPTS and first.lease_token
        assert first.message_id in ids and first.headers == {}
        assert first.lease_expires_at is not None
        assert 15 < first.lease_expires_at.timestamp() - time.time() <= 21, "lease="
        assert messages.unsettled == 2

        got: list[Delivery] = []
        taker = threading.Thread(target=lambda: got.append(next(messages)))
        taker.start()
        taker.join(0.7)
        assert taker.is_alive() and not got, "a third message came with two unsettled"
        first.ack()
        taker.join(5)
        assert [int(d.payload) for d in got] == [2]
        assert first.settled and "acked" in repr(first)
        with pytest.raises(RuntimeError, match="already acked"):
            first.ack()
        with pytest.raises(RuntimeError, match="already acked"):
            first.nack("again")

        # nack: retried (after retry_after), or dead-lettered on demand.
        assert second.nack("try later", retry_after="50ms") is False
        assert got[0].nack("give up", dead_letter=True) is True
        assert dead_ids(c, q) == {got[0].message_id: "give up"}

        # `with msg:` acks on the way out, nacks on an exception (which goes on).
        with next(messages) as third:
            assert int(third.payload) == 3
        assert third.settled
        with pytest.raises(KeyError):
            with next(messages) as fourth:
                raise KeyError("missing")
        assert fourth.settled

        # extend(): the lease's new time left.
        fifth = next(messages)
        new_end = fifth.extend("40s")
        assert 35 < new_end.timestamp() - time.time() <= 41
        assert fifth.lease_expires_at == new_end
        fifth.ack()
        with pytest.raises(RuntimeError):
            fifth.extend("1s")

        # The retried messages come back, attempt 2.
        again = sorted((int(d.payload), d.attempt) for d in (next(messages), next(messages)))
        assert again == [(1, 2), (4, 2)]
    assert messages.closed
    with pytest.raises(StopIteration):
        next(messages)
    # Messages delivered before close() can still be settled after it.
    s = stats(c, q)
    assert (s.leased, s.dead, s.acked_total) == (2, 1, 3)


async def test_async_consume(async_client: AsyncClient, client: Client) -> None:
    q = unique("py.aconsume")
    fill(client, q, 3)
    async with async_client.queue.consume(q, concurrency=1) as messages:
        first = await messages.__anext__()
        assert first.payload == b"0"
        pending = asyncio.ensure_future(messages.__anext__())
        done, _ = await asyncio.wait({pending}, timeout=0.5)
        assert not done, "a second message came with one unsettled"
        await first.ack()
        async with await asyncio.wait_for(pending, 5) as second:
            assert second.payload == b"1"
        assert second.settled
        async for d in messages:
            with pytest.raises(ZeroDivisionError):
                async with d:
                    1 / 0
            break
    assert messages.closed
    with pytest.raises(StopAsyncIteration):
        await messages.__anext__()
    s = await async_client.queue.stats(qp.StatsRequest(queue=q))
    assert (s.acked_total, s.retried_total, s.leased) == (2, 1, 0)


def test_a_lease_that_runs_out_is_delivered_again(client: Client) -> None:
    """work() extends nothing: a handler that outlives its lease loses the
    message, whose ack then fails (counted, not raised)."""
    c, q = client, unique("py.work.slow")
    c.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"slow", max_attempts=3)))
    seen: list[int] = []

    def handle(d: Delivery) -> None:
        seen.append(d.attempt)
        if d.attempt == 1:
            time.sleep(1.2)  # past the 0.5 s lease: delivered again meanwhile

    with c.queue.work(q, handle, concurrency=2, lease=0.5) as worker:
        wait_for(lambda: worker.stats.settle_failed == 1 and worker.stats.acked == 1, timeout=10)
    assert sorted(seen) == [1, 2]
    s = stats(c, q)
    assert (s.acked_total, s.leased, s.waiting) == (1, 0, 0)


def test_stop_event_stop_and_handlers_that_settle(client: Client) -> None:
    c, q = client, unique("py.work.stop")
    fill(c, q, 4)
    stop = threading.Event()
    from_handler: list[bool] = []

    def handle(d: Delivery) -> None:
        i = int(d.payload)
        if i == 0:
            d.nack("settled by the handler", dead_letter=True)
        elif i == 1:
            d.ack()
            raise ValueError("after acking: nothing more happens")
        elif i == 3:
            from_handler.append(worker.stop())  # does not wait for itself

    worker = c.queue.work(q, handle, concurrency=1, stop_event=stop)
    assert worker.wait(timeout=10)
    assert from_handler == [False]
    # The worker counts what it settled: not the messages its handler settled.
    assert worker.stats == WorkerStats(received=4, acked=2, nacked=0, dead=0, in_flight=0, max_in_flight=1)
    assert list(dead_ids(c, q).values()) == ["settled by the handler"]
    assert worker.stop(timeout=1) is True

    # stop_event, set from another thread, stops an idle worker.
    idle = c.queue.work(q, handle, stop_event=stop)
    assert not idle.wait(timeout=0.3)
    threading.Timer(0.1, stop.set).start()
    assert idle.wait(timeout=5) and not idle.running


def test_errors_end_a_consumer_and_a_worker(client: Client) -> None:
    with client.queue.consume("bad queue") as messages:
        with pytest.raises(InvalidArgument) as e:
            next(messages)
        assert [v.field for v in e.value.field_violations] == ["start.queue"]
        assert messages.closed

    worker = client.queue.work("bad queue", lambda d: None)
    with pytest.raises(InvalidArgument):
        worker.wait(timeout=10)
    assert isinstance(worker.error, InvalidArgument) and worker.finished
    with pytest.raises(InvalidArgument):
        with client.queue.work("bad queue", lambda d: None):
            time.sleep(0.5)

    for bad in (0, 10_001):
        with pytest.raises(ValueError, match="concurrency"):
            client.queue.consume("q", concurrency=bad)
    with pytest.raises(TypeError):
        client.queue.consume("q", concurrency=2.5)  # type: ignore[arg-type]

    async def coroutine(d: Delivery) -> None:
        pass

    with pytest.raises(TypeError, match="AsyncClient"):
        client.queue.work("q", coroutine)


async def test_async_errors_end_a_worker(async_client: AsyncClient) -> None:
    async def handle(d: AsyncDelivery) -> None:
        pass

    worker = async_client.queue.work("bad queue", handle)
    with pytest.raises(InvalidArgument):
        await worker.wait(timeout=10)
    messages = async_client.queue.consume("bad queue")
    with pytest.raises(InvalidArgument):
        await messages.__anext__()


async def test_async_stop_cancels_handlers_past_the_timeout(async_client: AsyncClient, client: Client) -> None:
    q = unique("py.awork.cancel")
    client.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"0", max_attempts=3)))
    started = asyncio.Event()

    async def forever(d: AsyncDelivery) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = async_client.queue.work(q, forever, concurrency=1)
    await asyncio.wait_for(started.wait(), 10)
    assert await worker.stop(timeout=0.2) is False
    assert worker.stats.nacked == 1
    s = client.queue.stats(qp.StatsRequest(queue=q))
    assert (s.leased, s.retried_total) == (0, 1)


def test_nack_reasons_fit_the_service() -> None:
    assert error_reason(ValueError("a\nb\tc")) == "ValueError: a b c"
    assert error_reason(KeyError()) == "KeyError"
    long = _reason("é" * 2000)
    assert len(long.encode()) <= 1024 and long.endswith("...")


@pytest.fixture
def restartable(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Stack]]:
    """A memory-store service that can be restarted on the same port."""
    port = conftest.free_port()
    monkeypatch.setattr(conftest, "free_port", lambda: port)
    running: list[Iterator[Stack]] = []

    def start() -> Stack:
        for gen in running:
            gen.close()  # stops the previous one
        running.clear()
        gen = run_service(None, called=stack.called, reflect=False)
        running.append(gen)
        return next(gen)

    yield start
    for gen in running:
        gen.close()


def test_a_worker_survives_a_service_restart(restartable: Callable[[], Stack]) -> None:
    first = restartable()
    q = unique("py.work.restart")
    got: list[bytes] = []
    fast = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
    with Client(first.addr, interceptors=[_Recorder(first.called)], options=fast) as c:
        c.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"before")))
        with c.queue.work(q, lambda d: got.append(d.payload), concurrency=3) as worker:
            wait_for(lambda: got == [b"before"])
            restartable()  # the stream ends; the worker opens it again once the service is back
            c.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"after")))
            wait_for(lambda: got == [b"before", b"after"], timeout=15)
            wait_for(lambda: worker.stats.acked == 2)
        assert worker.error is None


def test_ack_of_a_lost_lease_raises_from_a_delivery(client: Client) -> None:
    c, q = client, unique("py.consume.lost")
    c.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"x")))
    with c.queue.consume(q, concurrency=2, lease="200ms") as messages:
        d = next(messages)
        again = next(messages)  # the lease ran out: delivered again, on the second credit
        assert (again.message_id, again.attempt) == (d.message_id, 2)
    with pytest.raises(FailedPrecondition):
        d.ack()
    assert d.settled
    again.ack()


# ------------------------------------------------------- acks on the stream


class _Counting(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary calls of a client, by method name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.calls[str(details.method).rsplit("/", 1)[-1]] += 1
        return continuation(details, request)


class _AsyncCounting(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.calls[str(details.method).rsplit("/", 1)[-1]] += 1
        return await continuation(details, request)


def test_acks_go_on_the_stream(stack: Stack, client: Client) -> None:
    """No unary Ack: not from a worker, not from a loop that acks in the
    thread that iterates; a lost lease is FailedPrecondition from the
    stream's answer."""
    counting = _Counting()
    with Client(stack.addr, interceptors=[counting]) as c:
        q = unique("py.work.streamacks")
        ids = fill(client, q, N)
        with c.queue.work(q, lambda d: None, concurrency=8) as worker:
            wait_for(lambda: stats(client, q).acked_total == N, timeout=20)
            wait_for(lambda: worker.stats.acked == N)
        assert (worker.stats.received, worker.stats.settle_failed) == (N, 0)
        assert len(ids) == N

        loop_q = unique("py.consume.streamacks")
        fill(client, loop_q, 5)
        with c.queue.consume(loop_q, concurrency=2) as messages:
            for _ in range(5):
                next(messages).ack()  # answered while nobody iterates
            assert messages.unsettled == 0
        s = stats(client, loop_q)
        assert (s.acked_total, s.leased, s.waiting) == (5, 0, 0)

        lost_q = unique("py.consume.streamacks.lost")
        client.queue.enqueue(qp.EnqueueRequest(queue=lost_q, message=qp.MessageSpec(payload=b"x")))
        with c.queue.consume(lost_q, concurrency=2, lease="200ms") as messages:
            d = next(messages)
            again = next(messages)  # the lease ran out: delivered again
            assert (again.message_id, again.attempt) == (d.message_id, 2)
            again.ack()
            with pytest.raises(FailedPrecondition, match="lease lost"):
                d.ack()
            assert messages.unsettled == 0
    assert counting.calls["Ack"] == 0, counting.calls
    assert stats(client, lost_q).acked_total == 1


async def test_async_acks_go_on_the_stream(stack: Stack, client: Client) -> None:
    counting = _AsyncCounting()
    c = AsyncClient(stack.addr, interceptors=[counting])
    try:
        q = unique("py.awork.streamacks")
        fill(client, q, N)

        async def handle(d: AsyncDelivery) -> None:
            await asyncio.sleep(0.001)

        worker = c.queue.work(q, handle, concurrency=6)
        deadline = time.monotonic() + 20
        while worker.stats.acked < N:
            assert time.monotonic() < deadline, worker.stats
            await asyncio.sleep(0.05)
        await worker.stop()
        assert (worker.stats.acked, worker.stats.settle_failed, worker.stats.max_in_flight) <= (N, 0, 6)
        assert worker.stats.acked == N

        loop_q = unique("py.aconsume.streamacks")
        fill(client, loop_q, 3)
        async with c.queue.consume(loop_q, concurrency=1) as messages:
            for _ in range(3):
                await (await messages.__anext__()).ack()
            assert messages.unsettled == 0
    finally:
        await c.close()
    assert counting.calls["Ack"] == 0, counting.calls
    assert stats(client, loop_q).acked_total == 3


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self._code, self._message = code, message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> None:
        return None


def _scripted(i: int, acks: list[str]) -> list[object]:
    """What stream number ``i`` answers to the acks seen so far: m1 OK, m2
    refused (lease lost), m3 never (the stream breaks once all three came)."""
    if i != 1:
        return []
    out: list[object] = []
    last = acks[-1]
    if last == "m1":
        out.append(qp.ConsumeResponse(acked=qp.ConsumeResponse.Acked(message_id="m1", ok=True)))
    if last == "m2":
        refused = qp.ConsumeResponse.Acked(message_id="m2", ok=False, code=9, error="lease lost: m2")
        out.append(qp.ConsumeResponse(acked=refused))
    if len(set(acks)) == 3:
        out.append(_RpcError(grpc.StatusCode.UNAVAILABLE, "the service went away"))
    return out


def _message(i: int) -> qp.ConsumeResponse:
    return qp.ConsumeResponse(
        message=qp.Message(message_id=f"m{i}", lease_token=f"1-m{i}", attempt=1, max_attempts=3, payload=b"x")
    )


class _FakeSyncCall:
    def __init__(self, i: int, requests: Iterator[qp.ConsumeRequest], seen: list[qp.ConsumeRequest]) -> None:
        self.out: queue.Queue[object] = queue.Queue()
        for m in [1, 2, 3] if i == 1 else [4]:
            self.out.put(_message(m))
        threading.Thread(target=self._serve, args=(i, requests, seen), daemon=True).start()

    def _serve(self, i: int, requests: Iterator[qp.ConsumeRequest], seen: list[qp.ConsumeRequest]) -> None:
        acks: list[str] = []
        for r in requests:
            seen.append(r)
            if r.HasField("ack"):
                acks.append(r.ack.message_id)
                for item in _scripted(i, acks):
                    self.out.put(item)

    def __iter__(self) -> _FakeSyncCall:
        return self

    def __next__(self) -> object:
        item = self.out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.out.put(_RpcError(grpc.StatusCode.CANCELLED, "cancelled"))


class _FakeQueue:
    """What the consumers use of ``client.queue``: a scripted Consume stream
    and a unary Ack that records what it acks."""

    def __init__(self, aio: bool = False) -> None:
        self._invoke = SimpleNamespace(metadata=(), timeout=5.0, _error=from_rpc_error)
        self.streams: list[list[qp.ConsumeRequest]] = []
        self.unary: list[str] = []
        self.stub = SimpleNamespace(Consume=self._consume_aio if aio else self._consume)

    def _consume(self, requests: Iterator[qp.ConsumeRequest], metadata: object = ()) -> _FakeSyncCall:
        self.streams.append([])
        return _FakeSyncCall(len(self.streams), requests, self.streams[-1])

    def _consume_aio(self, requests: AsyncIterator[qp.ConsumeRequest], metadata: object = ()) -> _FakeAsyncCall:
        self.streams.append([])
        return _FakeAsyncCall(len(self.streams), requests, self.streams[-1])

    def _record(self, request: qp.AckRequest) -> qp.AckResponse:
        assert request.lease_token == f"1-{request.message_id}"
        self.unary.append(request.message_id)
        return qp.AckResponse()

    def ack(self, request: qp.AckRequest, *, timeout: float | None = None, metadata: object = ()) -> qp.AckResponse:
        return self._record(request)


class _FakeAsyncQueue(_FakeQueue):
    async def ack(  # type: ignore[override]
        self, request: qp.AckRequest, *, timeout: float | None = None, metadata: object = ()
    ) -> qp.AckResponse:
        return self._record(request)


class _FakeAsyncCall:
    def __init__(self, i: int, requests: AsyncIterator[qp.ConsumeRequest], seen: list[qp.ConsumeRequest]) -> None:
        self.out: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = False
        for m in [1, 2, 3] if i == 1 else [4]:
            self.out.put_nowait(_message(m))
        self._server = asyncio.get_running_loop().create_task(self._serve(i, requests, seen))

    async def _serve(self, i: int, requests: AsyncIterator[qp.ConsumeRequest], seen: list[qp.ConsumeRequest]) -> None:
        acks: list[str] = []
        async for r in requests:
            seen.append(r)
            if r.HasField("ack"):
                acks.append(r.ack.message_id)
                for item in _scripted(i, acks):
                    self.out.put_nowait(item)

    async def read(self) -> object:
        item = await self.out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self._cancelled = True
        self.out.put_nowait(asyncio.CancelledError())
        return True

    def cancelled(self) -> bool:
        return self._cancelled


def _check_scripted(fake: _FakeQueue) -> None:
    assert fake.unary == ["m3"], "only the ack the break left unanswered was sent again, unary"
    first, second = fake.streams[0], fake.streams[1]
    assert first[0].start.credits == 3 and second[0].start.credits == 3, "every credit back after the break"
    assert [r.WhichOneof("kind") for r in first[1:]] == ["ack", "ack", "ack"], "no credit messages"


def test_a_stream_break_re_acks_unanswered_acks_unary() -> None:
    fake = _FakeQueue()
    with Consumer(fake, "q", concurrency=3) as messages:  # type: ignore[arg-type]
        m1, m2, m3 = next(messages), next(messages), next(messages)
        m1.ack()
        with pytest.raises(FailedPrecondition, match="lease lost: m2"):
            m2.ack()
        m3.ack()  # the stream breaks instead of answering: acked again, unary
        assert messages.unsettled == 0
        m4 = next(messages)  # the stream is opened again
        assert m4.message_id == "m4"
        with pytest.raises(DeadlineExceeded):
            m4.ack(timeout=0.2)  # on the new stream, which never answers it
        _check_scripted(fake)
    # Given up on, its credit is released when the stream ends.
    wait_for(lambda: messages.unsettled == 0)


async def test_async_a_stream_break_re_acks_unanswered_acks_unary() -> None:
    fake = _FakeAsyncQueue(aio=True)
    async with AsyncConsumer(fake, "q", concurrency=3) as messages:  # type: ignore[arg-type]
        m1, m2, m3 = [await messages.__anext__() for _ in range(3)]
        await m1.ack()
        with pytest.raises(FailedPrecondition, match="lease lost: m2"):
            await m2.ack()
        await m3.ack()
        assert messages.unsettled == 0
        m4 = await messages.__anext__()
        assert m4.message_id == "m4"
        _check_scripted(fake)
