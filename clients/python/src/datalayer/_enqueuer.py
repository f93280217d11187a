"""``client.queue.add(queue, message)``: enqueue one message, sent together
with the others added at the same time.

A unary ``Enqueue`` per job costs a bot more than the job: producers that
enqueue one job per event pay for the call. ``add`` queues the message and
sends what is queued per queue as ``EnqueueBatch`` calls of at most
:data:`MAX_ADD_BATCH` messages, with ``allow_partial`` (each message gets
its own answer, in order). One call per queue is in flight at a time:
messages added while it is out wait for it and go together in the next, so
under load batches grow instead of calls multiplying, an add waits at most
about one call longer, and one client's messages go in in the order they
were added. A message that is alone goes as a unary ``Enqueue``.

What each caller gets is what a unary ``enqueue`` of its message gives:

* its ``EnqueueResponse`` (``message_id``, ``deduplicated``);
* :class:`datalayer.ResourceExhausted` when the queue filled before its
  message (those before it are in, those after it are not);
* when the batch is refused as a whole for bad input (nothing of it was
  stored), each message is sent again alone, one after the other, so one
  caller's bad message is only that caller's
  :class:`datalayer.InvalidArgument`;
* any other failure (``Unavailable``, a deadline, a denied key) is raised
  to every caller of the batch. As after a failed unary call, a message
  may have been stored anyway: give it a ``dedup_id`` to make a retry safe.

The sync client's ``add`` blocks its thread: threads adding at once share
one call (the first sends; the others wait, and the first of them sends the
next batch). The asyncio client's ``add`` sends what was added during one
turn of the event loop together.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from datalayer.errors import Internal, InvalidArgument, ResourceExhausted
from datalayer._invoke import Metadata
from datalayer.queue.v1 import queue_pb2

__all__ = ["MAX_ADD_BATCH", "QueueAdders", "AsyncQueueAdders"]

#: Most messages per ``EnqueueBatch`` (the service's default ``queue.max_batch``).
MAX_ADD_BATCH = 100

_F = TypeVar("_F")


@dataclass
class _Added(Generic[_F]):
    message: queue_pb2.MessageSpec
    done: _F


def _full(queue: str) -> ResourceExhausted:
    return ResourceExhausted(f"queue {queue} is full (queue.max_messages): this message was not enqueued")


def _answers(
    queue: str, n: int, reply: queue_pb2.EnqueueBatchResponse
) -> list[queue_pb2.EnqueueResponse | BaseException]:
    """Each message's answer, from an ``allow_partial`` batch's reply."""
    if len(reply.results) != n:
        e = Internal(f"EnqueueBatch answered {len(reply.results)} results for {n} messages")
        return [e] * n
    out: list[queue_pb2.EnqueueResponse | BaseException] = []
    for r in reply.results:
        out.append(_full(queue) if r.queue_full else r)
    return out


def _batch(queue: str, items: list[_Added[_F]]) -> queue_pb2.EnqueueBatchRequest:
    return queue_pb2.EnqueueBatchRequest(
        queue=queue, messages=[a.message for a in items], allow_partial=True
    )


# ----------------------------------------------------------------- threads


@dataclass
class _Slot:
    """A thread's message: answered, or its turn to send the next batch."""

    answer: queue_pb2.EnqueueResponse | BaseException | None = None
    lead: bool = False


class _SyncAdder:
    def __init__(
        self,
        enqueue: Callable[[queue_pb2.EnqueueRequest], queue_pb2.EnqueueResponse],
        enqueue_batch: Callable[[queue_pb2.EnqueueBatchRequest], queue_pb2.EnqueueBatchResponse],
        max_batch: int,
    ) -> None:
        self._enqueue = enqueue
        self._enqueue_batch = enqueue_batch
        self._max = max_batch
        self._cond = threading.Condition()
        self._pending: dict[str, deque[_Added[_Slot]]] = {}
        self._busy: set[str] = set()

    def add(self, queue: str, message: queue_pb2.MessageSpec) -> queue_pb2.EnqueueResponse:
        slot = _Slot()
        with self._cond:
            self._pending.setdefault(queue, deque()).append(_Added(message, slot))
            if queue not in self._busy:
                self._busy.add(queue)
                slot.lead = True
            while slot.answer is None and not slot.lead:
                self._cond.wait()
        if slot.answer is None:
            self._send(queue)
        answer = slot.answer
        if isinstance(answer, BaseException):
            raise answer
        assert answer is not None
        return answer

    def _send(self, queue: str) -> None:
        with self._cond:
            waiting = self._pending[queue]
            items = [waiting.popleft() for _ in range(min(self._max, len(waiting)))]
        answers = self._answers(queue, items)
        with self._cond:
            for a, answer in zip(items, answers):
                a.done.answer = answer
                a.done.lead = False
            waiting = self._pending[queue]
            if waiting:
                waiting[0].done.lead = True
            else:
                del self._pending[queue]
                self._busy.discard(queue)
            self._cond.notify_all()

    def _answers(
        self, queue: str, items: list[_Added[_Slot]]
    ) -> list[queue_pb2.EnqueueResponse | BaseException]:
        if len(items) == 1:
            return [self._alone(queue, items[0])]
        try:
            reply = self._enqueue_batch(_batch(queue, items))
        except InvalidArgument:
            return [self._alone(queue, a) for a in items]
        except BaseException as e:  # noqa: BLE001 - every caller gets the failure
            return [e] * len(items)
        return _answers(queue, len(items), reply)

    def _alone(self, queue: str, a: _Added[_Slot]) -> queue_pb2.EnqueueResponse | BaseException:
        try:
            return self._enqueue(queue_pb2.EnqueueRequest(queue=queue, message=a.message))
        except BaseException as e:  # noqa: BLE001 - the caller's own answer
            return e


# ----------------------------------------------------------------- asyncio


@dataclass
class _AsyncAdder:
    enqueue: Callable[[queue_pb2.EnqueueRequest], Awaitable[queue_pb2.EnqueueResponse]]
    enqueue_batch: Callable[[queue_pb2.EnqueueBatchRequest], Awaitable[queue_pb2.EnqueueBatchResponse]]
    max_batch: int
    pending: dict[str, deque[_Added[asyncio.Future[queue_pb2.EnqueueResponse]]]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    scheduled: bool = False

    async def add(self, queue: str, message: queue_pb2.MessageSpec) -> queue_pb2.EnqueueResponse:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[queue_pb2.EnqueueResponse] = loop.create_future()
        self.pending.setdefault(queue, deque()).append(_Added(message, done))
        if not self.scheduled:
            # What is added during this turn of the loop goes together.
            self.scheduled = True
            loop.call_soon(self._flush)
        return await done

    def _flush(self) -> None:
        self.scheduled = False
        for queue in list(self.pending):
            self._start(queue)

    def _start(self, queue: str) -> None:
        waiting = self.pending.get(queue)
        if not waiting or queue in self.busy:
            return
        items = [waiting.popleft() for _ in range(min(self.max_batch, len(waiting)))]
        if not waiting:
            del self.pending[queue]
        self.busy.add(queue)
        task = asyncio.get_running_loop().create_task(self._send(queue, items))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, queue: str, items: list[_Added[asyncio.Future[queue_pb2.EnqueueResponse]]]) -> None:
        try:
            for a, answer in zip(items, await self._answers(queue, items)):
                if a.done.done():  # its caller stopped waiting
                    continue
                if isinstance(answer, BaseException):
                    a.done.set_exception(answer)
                else:
                    a.done.set_result(answer)
        finally:
            self.busy.discard(queue)
            self._start(queue)

    async def _answers(
        self, queue: str, items: list[_Added[asyncio.Future[queue_pb2.EnqueueResponse]]]
    ) -> list[queue_pb2.EnqueueResponse | BaseException]:
        if len(items) == 1:
            return [await self._alone(queue, items[0].message)]
        try:
            reply = await self.enqueue_batch(_batch(queue, items))
        except InvalidArgument:
            return [await self._alone(queue, a.message) for a in items]
        except Exception as e:  # noqa: BLE001 - every caller gets the failure
            return [e] * len(items)
        return _answers(queue, len(items), reply)

    async def _alone(self, queue: str, message: queue_pb2.MessageSpec) -> queue_pb2.EnqueueResponse | BaseException:
        try:
            return await self.enqueue(queue_pb2.EnqueueRequest(queue=queue, message=message))
        except Exception as e:  # noqa: BLE001 - the caller's own answer
            return e


# ------------------------------------------------------------------ mixins


class _SyncEnqueues(Protocol):
    def enqueue(
        self, request: queue_pb2.EnqueueRequest, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> queue_pb2.EnqueueResponse: ...

    def enqueue_batch(
        self, request: queue_pb2.EnqueueBatchRequest, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> queue_pb2.EnqueueBatchResponse: ...


class _AsyncEnqueues(Protocol):
    async def enqueue(
        self, request: queue_pb2.EnqueueRequest, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> queue_pb2.EnqueueResponse: ...

    async def enqueue_batch(
        self, request: queue_pb2.EnqueueBatchRequest, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> queue_pb2.EnqueueBatchResponse: ...


# One adder per client object, made on its first add (dict.setdefault is
# atomic: two threads adding first both get the same adder).
_ADDER = "_datalayer_queue_adder"


class QueueAdders:
    """``client.queue.add``: see :mod:`datalayer._enqueuer`."""

    def add(self: _SyncEnqueues, queue: str, message: queue_pb2.MessageSpec) -> queue_pb2.EnqueueResponse:
        """Enqueues ``message`` on ``queue``, sent together with the messages
        other threads add meanwhile; answers (or raises) as
        ``enqueue(EnqueueRequest(queue=queue, message=message))`` would::

            client.queue.add("analyses", MessageSpec(payload=b"...", max_attempts=5))
        """
        adder = vars(self).get(_ADDER)
        if adder is None:
            adder = vars(self).setdefault(_ADDER, _SyncAdder(self.enqueue, self.enqueue_batch, MAX_ADD_BATCH))
        assert isinstance(adder, _SyncAdder)
        return adder.add(queue, message)


class AsyncQueueAdders:
    """``AsyncClient.queue.add``: see :mod:`datalayer._enqueuer`."""

    async def add(self: _AsyncEnqueues, queue: str, message: queue_pb2.MessageSpec) -> queue_pb2.EnqueueResponse:
        """As :meth:`QueueAdders.add`, on asyncio: the messages added during
        one turn of the event loop go together::

            await client.queue.add("analyses", MessageSpec(payload=b"..."))
        """
        adder = vars(self).get(_ADDER)
        if adder is None:
            adder = vars(self).setdefault(_ADDER, _AsyncAdder(self.enqueue, self.enqueue_batch, MAX_ADD_BATCH))
        assert isinstance(adder, _AsyncAdder)
        return await adder.add(queue, message)
