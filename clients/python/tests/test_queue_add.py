"""``client.queue.add``: one message per call, sent together with the
messages added meanwhile (threads on the sync client, one turn of the event
loop on the asyncio one), each caller answered as a unary ``Enqueue`` would
answer it, against the real binary on Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from datalayer import AsyncClient, Client, InvalidArgument, ResourceExhausted
from datalayer.queue.v1 import queue_pb2 as qp

from .conftest import Stack, _AsyncRecorder, _Recorder, configured_stack, require, unique

SERVICE = "datalayer.queue.v1.QueueService"


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


class _Calls:
    """Counts the calls a client's queue makes through two of its methods,
    which still go to the service."""

    def __init__(self, queue: Any) -> None:
        self.single = 0
        self.batches: list[int] = []
        self.lock = threading.Lock()
        one, many = queue.enqueue, queue.enqueue_batch

        def enqueue(request: qp.EnqueueRequest, **kw: Any) -> Any:
            with self.lock:
                self.single += 1
            return one(request, **kw)

        def enqueue_batch(request: qp.EnqueueBatchRequest, **kw: Any) -> Any:
            with self.lock:
                self.batches.append(len(request.messages))
            assert request.allow_partial, "add asks for one answer per message"
            return many(request, **kw)

        queue.enqueue, queue.enqueue_batch = enqueue, enqueue_batch


def _leased_payloads(c: Client, q: str, n: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < n:
        batch = c.queue.lease(qp.LeaseRequest(queue=q, max_messages=100)).messages
        assert batch, f"only {len(got)} of {n} messages were enqueued"
        got += [m.payload for m in batch]
    return got


def test_threads_adding_at_once_share_calls_and_each_gets_its_id(stack: Stack) -> None:
    q = unique("py.queue.add")
    with Client(stack.addr, interceptors=[_Recorder(stack.called)]) as c:
        calls = _Calls(c.queue)
        n = 40
        ids: list[str] = [""] * n
        start = threading.Barrier(n)

        def produce(i: int) -> None:
            start.wait()
            ids[i] = c.queue.add(q, qp.MessageSpec(payload=b"job-%d" % i)).message_id

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert all(ids) and len(set(ids)) == n, ids
        assert sorted(_leased_payloads(c, q, n)) == sorted(b"job-%d" % i for i in range(n))
        sent = calls.single + sum(calls.batches)
        assert sent == n, "every message was sent once"
        assert calls.single + len(calls.batches) < n, "adds made at once were batched"


def test_one_thread_adding_in_a_row_keeps_fifo_order(client: Client) -> None:
    q = unique("py.queue.add")
    for i in range(5):
        client.queue.add(q, qp.MessageSpec(payload=b"%d" % i))
    assert _leased_payloads(client, q, 5) == [b"0", b"1", b"2", b"3", b"4"]


def test_a_bad_message_fails_only_its_own_caller(stack: Stack) -> None:
    q = unique("py.queue.add")
    with Client(stack.addr, interceptors=[_Recorder(stack.called)]) as c:
        calls = _Calls(c.queue)
        n = 12
        results: list[Any] = [None] * n
        start = threading.Barrier(n)

        def produce(i: int) -> None:
            start.wait()
            spec = qp.MessageSpec(payload=b"%d" % i, priority=99 if i == 5 else 0)
            try:
                results[i] = c.queue.add(q, spec)
            except InvalidArgument as e:
                results[i] = e

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        bad = results[5]
        assert isinstance(bad, InvalidArgument), bad
        assert [v.field for v in bad.field_violations] == ["message.priority"]
        good = [r for i, r in enumerate(results) if i != 5]
        assert all(isinstance(r, qp.EnqueueResponse) and r.message_id for r in good), good
        assert len(_leased_payloads(c, q, n - 1)) == n - 1
        assert calls.single + sum(calls.batches) >= n


@pytest.fixture(scope="module")
def small_queue_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The binary on its own Redis with queue.max_messages = 5."""
    yield from configured_stack(stack, tmp_path_factory, "queue-add", "[queue]\nmax_messages = 5\n")


def test_messages_past_a_full_queue_are_resource_exhausted(small_queue_stack: Stack) -> None:
    q = unique("py.queue.add")

    async def run() -> list[Any]:
        async with AsyncClient(small_queue_stack.addr, interceptors=[_AsyncRecorder(small_queue_stack.called)]) as c:
            specs = [qp.MessageSpec(payload=b"%d" % i) for i in range(8)]
            return list(await asyncio.gather(*(c.queue.add(q, s) for s in specs), return_exceptions=True))

    results = asyncio.run(run())
    # One turn of the loop, one batch, in order: the first five are in.
    assert all(isinstance(r, qp.EnqueueResponse) for r in results[:5]), results
    assert all(isinstance(r, ResourceExhausted) for r in results[5:]), results
    assert "is full" in str(results[5])
    with Client(small_queue_stack.addr, interceptors=[_Recorder(small_queue_stack.called)]) as c:
        assert c.queue.stats(qp.StatsRequest(queue=q)).waiting == 5


async def test_asyncio_adds_of_one_turn_go_together(stack: Stack) -> None:
    q = unique("py.queue.add")
    batches: list[int] = []
    async with AsyncClient(stack.addr, interceptors=[_AsyncRecorder(stack.called)]) as c:
        many = c.queue.enqueue_batch

        async def counted(request: qp.EnqueueBatchRequest, **kw: Any) -> Any:
            batches.append(len(request.messages))
            return await many(request, **kw)

        c.queue.enqueue_batch = counted  # type: ignore[method-assign]
        specs = [qp.MessageSpec(payload=b"%d" % i, priority=99 if i == 3 else 0) for i in range(30)]
        results = await asyncio.gather(*(c.queue.add(q, s) for s in specs), return_exceptions=True)
        assert batches[0] == 30, f"one turn, one batch: {batches}"
        assert isinstance(results[3], InvalidArgument)
        ids = [r.message_id for i, r in enumerate(results) if i != 3 and isinstance(r, qp.EnqueueResponse)]
        assert len(set(ids)) == 29
        leased = await c.queue.lease(qp.LeaseRequest(queue=q, max_messages=100))
        assert [m.payload for m in leased.messages] == [b"%d" % i for i in range(30) if i != 3]
