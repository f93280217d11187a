"""Queue consumers and workers on ``QueueService/Consume``, the
bidirectional stream whose credits bound how many messages a consumer
holds.

Reached as ``client.queue.consume(...)`` and ``client.queue.work(...)``::

    # A worker: handler(msg) on at most 10 messages at once; a return acks,
    # an exception nacks (retried with the message's backoff, then dead-lettered).
    with client.queue.work("analyses", analyse, concurrency=10) as worker:
        worker.wait()                      # until worker.stop(), stop_event or Ctrl-C

    # The messages themselves: settle each with ack() / nack().
    with client.queue.consume("analyses", concurrency=10) as messages:
        for msg in messages:
            try:
                analyse(msg)
            except Exception as e:
                msg.nack(str(e))
            else:
                msg.ack()

``concurrency`` is the stream's credit: the service sends a message only
while fewer than ``concurrency`` messages this consumer got are unsettled
(neither acked nor nacked), and each settlement grants one more.

Acks go on the stream itself (an ``ack`` request, answered on the stream as
``acked``, which also gives the credit back): no unary call per message.
An ack the service refused raises as the unary ``Ack`` would
(``FailedPrecondition`` "lease lost"). When the stream breaks with acks
unanswered, those are sent again with the unary ``Ack`` (acks of one lease
are idempotent); an ack made while no stream is open (after ``close()``,
or while it is being opened again) is a unary ``Ack``. Nacks and
``extend`` are unary calls. A reader (a thread, or a task with asyncio)
reads each stream's answers, so an ack is answered whether or not the
consumer is being iterated. A message
is leased to this consumer for ``lease`` (default: the message's own lease,
``queue.default_lease``); nothing here extends it (see
:meth:`Delivery.extend`): a handler that runs longer loses the message,
which is delivered again, and its ack then fails (``FAILED_PRECONDITION``
"lease lost", logged by a worker).

The stream is opened again, with capped exponential backoff, when it breaks
(``UNAVAILABLE``, the service restarting, ...); messages already handed
out stay leased and are settled as usual. Other errors (an invalid queue
name, a key that may not consume) end the consumer: ``next()`` raises them,
and a worker's ``wait()`` / ``stop()`` re-raises them.

Stopping closes the stream at once. A message the service had leased for
this consumer but not delivered yet when it closed (at most the unused
credits) is delivered again when its lease runs out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue as _queue
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import AsyncIterator, Awaitable, Callable, Iterator, Protocol

import grpc
import grpc.aio

from datalayer._invoke import AsyncInvoker, Metadata, SyncInvoker
from datalayer._locks import DurationLike, _duration_pb, parse_duration
from datalayer.errors import (
    _BY_CODE,
    Aborted,
    Cancelled,
    DatalayerError,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
)
from datalayer.queue.v1 import queue_pb2, queue_pb2_grpc

__all__ = [
    "AsyncConsumer",
    "AsyncDelivery",
    "AsyncQueueWorkers",
    "AsyncWorker",
    "Consumer",
    "Delivery",
    "QueueWorkers",
    "Worker",
    "WorkerStats",
]

_log = logging.getLogger("datalayer.queue")

#: Most credits a consumer may hold (the service's limit).
MAX_CONCURRENCY = 10_000
#: Backoff between attempts to open the stream again: first, cap (seconds).
_RECONNECT = (0.1, 5.0)
#: A stream that lived this long before it broke starts the backoff over.
_HEALTHY_S = 10.0
#: Longest nack reason the service keeps, in bytes.
_REASON_BYTES = 1024
#: How often a sync worker looks at its ``stop_event``.
_STOP_POLL_S = 0.1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Errors after which the stream is opened again rather than given up on.
_TRANSIENT = (Unavailable, DeadlineExceeded, Cancelled, ResourceExhausted, Aborted)


def _reason(text: str) -> str:
    """A nack reason the service accepts: no control characters, at most
    1024 bytes."""
    text = _CONTROL.sub(" ", text).strip()
    raw = text.encode("utf-8")
    if len(raw) <= _REASON_BYTES:
        return text
    return raw[: _REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def error_reason(e: BaseException) -> str:
    """The nack reason a worker gives for a handler's exception:
    ``"ValueError: bad input"``."""
    text = str(e)
    return _reason(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def _concurrency(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"concurrency must be an int, got {value!r}")
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1 to {MAX_CONCURRENCY}, got {value}")
    return value


def _start(queue: str, credits: int, lease: float | None) -> queue_pb2.ConsumeRequest:
    start = queue_pb2.ConsumeRequest.Start(queue=queue, credits=credits)
    if lease is not None:
        start.lease_duration.CopyFrom(_duration_pb(lease))
    return queue_pb2.ConsumeRequest(start=start)


def _backoff(attempt: int, err: DatalayerError | None) -> float:
    cap = min(_RECONNECT[1], _RECONNECT[0] * 2**attempt)
    floor = err.retry_after if err is not None and err.retry_after else 0.0
    return floor + random.uniform(cap / 2, cap)


def _log_reopen(queue: str, err: DatalayerError | None, delay: float, attempt: int) -> None:
    # Quiet for a service restart; louder when it goes on.
    level = logging.INFO if attempt <= 3 else logging.WARNING
    why = err or "the service ended it"
    _log.log(level, "consume stream of queue %s ended (%s); opening it again in %.2fs", queue, why, delay)


def _expires_at(m: queue_pb2.Message) -> datetime | None:
    return m.lease_expires_at.ToDatetime(tzinfo=timezone.utc) if m.HasField("lease_expires_at") else None


_STATUS_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _ack_error(acked: queue_pb2.ConsumeResponse.Acked) -> DatalayerError:
    """The error the unary ``Ack`` would have raised, from a refused ack's answer."""
    code = _STATUS_CODES.get(acked.code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, DatalayerError)(acked.error or f"ack of message {acked.message_id} failed", code=code)


def _ack_on_stream(d: _DeliveryBase) -> queue_pb2.ConsumeRequest:
    return queue_pb2.ConsumeRequest(
        ack=queue_pb2.ConsumeRequest.Settle(message_id=d.message_id, lease_token=d.lease_token)
    )


def _unanswered(message_id: str, budget: float | None) -> DeadlineExceeded:
    return DeadlineExceeded(f"the ack of message {message_id} on the Consume stream was not answered within {budget}s")


#: What a stream ack came to: answered OK (None), refused (the error), or
#: not answered before the stream ended (_BROKEN: ack it again, unary).
_BROKEN = object()
_WAITING = object()


class _PendingAck:
    """An ack sent on a stream, waiting for its ``acked`` answer."""

    def __init__(self) -> None:
        self.outcome: object = _WAITING
        #: Its waiter gave up (timeout, cancellation): the answer, or the
        #: stream's end, still releases its credit.
        self.abandoned = False
        self.done = threading.Event()


class _End:
    """The end of a stream's answers: why (None: the service ended it)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


@dataclass(frozen=True)
class WorkerStats:
    """What a worker did so far.

    Attributes:
        received: messages handed to the handler.
        acked: messages acked after the handler returned.
        nacked: messages nacked after the handler raised (``dead`` of them
            went to the dead-letter list).
        dead: nacked messages the service moved to the dead-letter list.
        settle_failed: acks or nacks the service refused or that failed
            (e.g. "lease lost": the handler outlived the lease).
        in_flight: handlers running now (from their start to their return;
            settling the message is not counted).
        max_in_flight: the most handlers that ran at once.
    """

    received: int = 0
    acked: int = 0
    nacked: int = 0
    dead: int = 0
    settle_failed: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


class _Counters:
    def __init__(self) -> None:
        self.received = self.acked = self.nacked = self.dead = self.settle_failed = 0
        self.in_flight = self.max_in_flight = 0

    def snapshot(self) -> WorkerStats:
        return WorkerStats(
            self.received, self.acked, self.nacked, self.dead, self.settle_failed, self.in_flight, self.max_in_flight
        )


class _DeliveryBase:
    """What both deliveries share: the message and its state."""

    def __init__(self, queue: str, message: queue_pb2.Message) -> None:
        self.queue = queue
        #: The delivered ``queue_pb2.Message``.
        self.message = message
        self._state: str | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def payload(self) -> bytes:
        return self.message.payload

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.message.headers)

    @property
    def attempt(self) -> int:
        """This delivery's number: 1 for the first."""
        return self.message.attempt

    @property
    def max_attempts(self) -> int:
        return self.message.max_attempts

    @property
    def lease_token(self) -> str:
        return self.message.lease_token

    @property
    def lease_expires_at(self) -> datetime | None:
        """When the lease ends (UTC), unless extended."""
        return _expires_at(self.message)

    @property
    def settled(self) -> bool:
        """True once :meth:`ack` or :meth:`nack` was called (whatever it answered)."""
        return self._state is not None

    def _claim(self, what: str) -> None:
        if self._state is not None:
            raise RuntimeError(f"message {self.message_id} of queue {self.queue} was already {self._state}")
        self._state = what

    def _ack_request(self) -> queue_pb2.AckRequest:
        return queue_pb2.AckRequest(queue=self.queue, message_id=self.message_id, lease_token=self.lease_token)

    def _nack_request(
        self, reason: str, retry_after: DurationLike | None, dead_letter: bool
    ) -> queue_pb2.NackRequest:
        req = queue_pb2.NackRequest(
            queue=self.queue,
            message_id=self.message_id,
            lease_token=self.lease_token,
            dead_letter=dead_letter,
            reason=_reason(reason),
        )
        if retry_after is not None:
            req.retry_after.CopyFrom(_duration_pb(parse_duration(retry_after, "retry_after")))
        return req

    def _extend_request(self, lease: DurationLike) -> queue_pb2.ExtendLeaseRequest:
        if self._state is not None:
            raise RuntimeError(f"message {self.message_id} of queue {self.queue} was already {self._state}")
        return queue_pb2.ExtendLeaseRequest(
            queue=self.queue,
            message_id=self.message_id,
            lease_token=self.lease_token,
            lease_duration=_duration_pb(parse_duration(lease, "lease")),
        )

    def __repr__(self) -> str:
        state = self._state or "leased"
        return (
            f"{type(self).__name__}(queue={self.queue!r}, message_id={self.message_id!r}, "
            f"attempt={self.attempt}/{self.max_attempts}, {state})"
        )


# --------------------------------------------------------------------- sync


class _SyncQueueRPCs(Protocol):
    """What the sync helpers need of ``client.queue`` (the generated class)."""

    _invoke: SyncInvoker
    stub: queue_pb2_grpc.QueueServiceStub

    def ack(
        self, request: queue_pb2.AckRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> queue_pb2.AckResponse: ...

    def nack(
        self, request: queue_pb2.NackRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> queue_pb2.NackResponse: ...

    def extend_lease(
        self, request: queue_pb2.ExtendLeaseRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> queue_pb2.ExtendLeaseResponse: ...


class Delivery(_DeliveryBase):
    """A message delivered by :meth:`QueueWorkers.consume`, leased to this
    consumer: settle it exactly once with :meth:`ack` or :meth:`nack`
    (from any thread). Each settlement lets the consumer take one more
    message; one never settled holds its credit (and is delivered again, to
    someone, when its lease runs out).

    Attributes: ``queue``, ``message`` (the ``queue_pb2.Message``), and its
    ``message_id``, ``payload``, ``headers``, ``attempt``, ``max_attempts``,
    ``lease_token``, ``lease_expires_at``.
    """

    def __init__(
        self,
        rpcs: _SyncQueueRPCs,
        queue: str,
        message: queue_pb2.Message,
        on_settled: Callable[[], None],
        stream_ack: Callable[[Delivery, float | None], bool] | None = None,
    ) -> None:
        super().__init__(queue, message)
        self._rpcs = rpcs
        self._on_settled = on_settled
        self._stream_ack = stream_ack
        self._mu = threading.Lock()

    def _settle(self, what: str) -> None:
        with self._mu:
            self._claim(what)

    def ack(self, *, timeout: float | None = None) -> None:
        """Completes the message, on its consumer's stream while that is
        open (else with the unary ``Ack``). Raises ``FailedPrecondition``
        ("lease lost") if the lease ran out (the message is someone else's
        now), ``DeadlineExceeded`` if the answer did not come within
        ``timeout`` (default: the client's)."""
        self._settle("acked")
        if self._stream_ack is not None and self._stream_ack(self, timeout):
            return
        try:
            self._rpcs.ack(self._ack_request(), timeout=timeout)
        finally:
            self._on_settled()

    def nack(
        self,
        reason: str = "",
        *,
        retry_after: DurationLike | None = None,
        dead_letter: bool = False,
        timeout: float | None = None,
    ) -> bool:
        """Gives the message back: retried after ``retry_after`` (default:
        the message's backoff), or dead-lettered when it was its last
        attempt or ``dead_letter`` is true. ``reason`` (kept with a dead
        message) is trimmed to what the service accepts. True when the
        message went to the dead-letter list."""
        self._settle("nacked")
        try:
            return self._rpcs.nack(self._nack_request(reason, retry_after, dead_letter), timeout=timeout).dead
        finally:
            self._on_settled()

    def extend(self, lease: DurationLike, *, timeout: float | None = None) -> datetime:
        """Sets the lease's time left to ``lease``; answers its new end (UTC)."""
        answer = self._rpcs.extend_lease(self._extend_request(lease), timeout=timeout)
        self.message.lease_expires_at.CopyFrom(answer.lease_expires_at)
        return answer.lease_expires_at.ToDatetime(tzinfo=timezone.utc)

    def __enter__(self) -> Delivery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving a ``with msg:`` block acks the message, or nacks it with
        the exception (which goes on), unless it was settled inside."""
        if self.settled:
            return
        if exc is None:
            self.ack()
        else:
            self.nack(error_reason(exc))


def _outbound(requests: _queue.Queue[queue_pb2.ConsumeRequest | None]) -> Iterator[queue_pb2.ConsumeRequest]:
    while (r := requests.get()) is not None:
        yield r


class _SyncStream:
    """One open Consume stream: its requests, its answers (read by its
    reader thread) and its acks not answered yet, by message id."""

    def __init__(
        self,
        requests: _queue.Queue[queue_pb2.ConsumeRequest | None],
        call: grpc._CallIterator[queue_pb2.ConsumeResponse],
    ) -> None:
        self.requests = requests
        self.call = call
        self.answers: _queue.Queue[queue_pb2.Message | _End] = _queue.Queue()
        self.acks: dict[str, _PendingAck] = {}
        self.ended = False


class Consumer(Iterator[Delivery]):
    """The messages of a queue as an iterator of :class:`Delivery`, from a
    ``Consume`` stream holding at most ``concurrency`` unsettled messages
    (see :meth:`QueueWorkers.consume`). The stream opens when the consumer
    is made; iterating blocks for the next message; :meth:`close` (from any
    thread) or leaving a ``with`` block ends the iteration. Messages already
    delivered can still be settled after it.
    """

    def __init__(
        self,
        rpcs: _SyncQueueRPCs,
        queue: str,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        metadata: Metadata = (),
    ) -> None:
        self.queue = queue
        self.concurrency = _concurrency(concurrency)
        self._lease = None if lease is None else parse_duration(lease, "lease")
        self._rpcs = rpcs
        self._metadata = rpcs._invoke.metadata + tuple(metadata)
        self._mu = threading.Lock()
        self._closed = threading.Event()
        self._unsettled = 0
        self._stream: _SyncStream | None = None
        self._opened_at = 0.0
        self._attempt = 0
        self._open()

    @property
    def unsettled(self) -> int:
        """Messages received and not settled yet."""
        return self._unsettled

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _open(self) -> None:
        with self._mu:
            if self._closed.is_set():
                return
            requests: _queue.Queue[queue_pb2.ConsumeRequest | None] = _queue.Queue()
            requests.put(_start(self.queue, self.concurrency - self._unsettled, self._lease))
            stream = _SyncStream(requests, self._rpcs.stub.Consume(_outbound(requests), metadata=self._metadata))
            self._stream = stream
            self._opened_at = time.monotonic()
        reader = threading.Thread(target=self._read, args=(stream,), name=f"datalayer-consume-{self.queue}", daemon=True)
        reader.start()

    def _read(self, stream: _SyncStream) -> None:
        """The reader of one stream: messages to ``answers``, answers to
        the acks that wait for them; then the end, and the acks left
        unanswered are handed back to be sent again, unary."""
        end = _End(None)
        try:
            for answer in stream.call:
                if answer.HasField("acked"):
                    self._answered(stream, answer.acked)
                else:
                    with self._mu:
                        self._unsettled += 1
                    stream.answers.put(answer.message)
        except BaseException as e:  # grpc.RpcError, mostly
            end = _End(e)
        finally:
            with self._mu:
                stream.ended = True
                pending = list(stream.acks.values())
                stream.acks.clear()
                for p in pending:
                    if p.abandoned:
                        self._unsettled -= 1
                    else:
                        p.outcome = _BROKEN
                        p.done.set()
            stream.answers.put(end)

    def _answered(self, stream: _SyncStream, acked: queue_pb2.ConsumeResponse.Acked) -> None:
        with self._mu:
            p = stream.acks.pop(acked.message_id, None)
            if p is None:
                return  # nothing waits for it
            self._unsettled -= 1  # its credit is back at the service
            p.outcome = None if acked.ok else _ack_error(acked)
            p.done.set()

    def _stream_ack(self, d: Delivery, timeout: float | None) -> bool:
        """Acks ``d`` on the open stream: True once answered OK (raises
        what a refused ack answered); False when there is no stream, or it
        ended before answering: ack with the unary ``Ack`` then."""
        with self._mu:
            stream = self._stream
            if stream is None or stream.ended or self._closed.is_set() or d.message_id in stream.acks:
                return False
            p = _PendingAck()
            stream.acks[d.message_id] = p
            stream.requests.put(_ack_on_stream(d))
        budget = timeout if timeout is not None else self._rpcs._invoke.timeout
        p.done.wait(budget)
        with self._mu:
            if p.outcome is _WAITING:
                p.abandoned = True
                raise _unanswered(d.message_id, budget)
        if p.outcome is _BROKEN:
            return False
        if isinstance(p.outcome, DatalayerError):
            raise p.outcome
        return True

    def _drop_stream(self) -> None:
        with self._mu:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.requests.put(None)
            stream.call.cancel()

    def _settled(self) -> None:
        with self._mu:
            self._unsettled -= 1
            if self._stream is not None and not self._stream.ended:
                self._stream.requests.put(queue_pb2.ConsumeRequest(credit=1))

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Delivery:
        while True:
            with self._mu:
                stream = self._stream
            if stream is None or self._closed.is_set():
                raise StopIteration
            err: DatalayerError | None = None
            answer = stream.answers.get()
            if not isinstance(answer, _End):
                self._attempt = 0
                return Delivery(self._rpcs, self.queue, answer, self._settled, self._stream_ack)
            stream.answers.put(answer)  # for a next() that waits on it too
            if self._closed.is_set():
                raise StopIteration
            with self._mu:
                if self._stream is not stream:
                    continue  # another next() saw this end first
            if isinstance(answer.error, grpc.RpcError):
                err = self._rpcs._invoke._error(answer.error)
                if not isinstance(err, _TRANSIENT):
                    self._drop_stream()
                    self._closed.set()
                    raise err from answer.error
            elif answer.error is not None:
                self._drop_stream()
                self._closed.set()
                raise answer.error
            # else: the service ended the stream (it is shutting down): open another
            self._drop_stream()
            if time.monotonic() - self._opened_at >= _HEALTHY_S:
                self._attempt = 0
            delay = _backoff(self._attempt, err)
            self._attempt += 1
            _log_reopen(self.queue, err, delay, self._attempt)
            if self._closed.wait(delay):
                raise StopIteration
            self._open()

    def close(self) -> None:
        """Ends the stream; delivered messages can still be settled."""
        self._closed.set()
        self._drop_stream()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


SyncHandler = Callable[[Delivery], object]


class Worker:
    """Runs ``handler(delivery)`` on the messages of a queue, at most
    ``concurrency`` at once, in a pool of threads (see
    :meth:`QueueWorkers.work`). It runs from when it is made until
    :meth:`stop`, the end of a ``with`` block, ``stop_event`` being set, or
    an error the stream cannot recover from; :meth:`wait` blocks until then.

    A handler that returns gets its message acked, one that raises gets it
    nacked with the exception as the reason (``"ValueError: ..."``); a
    message the handler settled itself is left as it is. Failed
    settlements are logged (``datalayer.queue``) and counted in
    :attr:`stats`, never raised.
    """

    def __init__(
        self,
        rpcs: _SyncQueueRPCs,
        queue: str,
        handler: SyncHandler,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        stop_event: threading.Event | None = None,
        metadata: Metadata = (),
    ) -> None:
        if inspect.iscoroutinefunction(handler):
            raise TypeError("handler is a coroutine function: use AsyncClient's queue.work for it")
        self.queue = queue
        self._handler = handler
        self._consumer = Consumer(rpcs, queue, concurrency=concurrency, lease=lease, metadata=metadata)
        self._pool = ThreadPoolExecutor(max_workers=self._consumer.concurrency, thread_name_prefix=f"datalayer-{queue}")
        self._counters = _Counters()
        self._mu = threading.Condition()
        #: Messages received and not yet handled and settled.
        self._active = 0
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._local = threading.local()
        self._reader = threading.Thread(target=self._read, name=f"datalayer-consume-{queue}", daemon=True)
        self._reader.start()
        if stop_event is not None:
            watcher = threading.Thread(target=self._watch, args=(stop_event,), daemon=True)
            watcher.start()

    @property
    def stats(self) -> WorkerStats:
        with self._mu:
            return self._counters.snapshot()

    @property
    def running(self) -> bool:
        """False once the worker stopped taking messages."""
        return not self._consumer.closed

    @property
    def finished(self) -> bool:
        """True once the worker stopped and every handler returned."""
        return self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the worker, if any."""
        return self._error

    def _watch(self, stop_event: threading.Event) -> None:
        while not self._finished.is_set():
            if stop_event.wait(_STOP_POLL_S):
                self._consumer.close()
                return

    def _read(self) -> None:
        try:
            for d in self._consumer:
                with self._mu:
                    self._counters.received += 1
                    self._active += 1
                self._pool.submit(self._run, d)
        except BaseException as e:
            self._error = e
            _log.error("worker of queue %s stopped: %s", self.queue, e)
        finally:
            self._consumer.close()
            with self._mu:
                self._mu.wait_for(lambda: self._active == 0)
            self._pool.shutdown(wait=False)
            self._finished.set()

    def _run(self, d: Delivery) -> None:
        self._local.in_handler = True
        with self._mu:
            c = self._counters
            c.in_flight += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        running = True
        try:
            try:
                self._handler(d)
            except BaseException as e:
                with self._mu:
                    self._counters.in_flight -= 1
                running = False
                if not isinstance(e, Exception):  # SystemExit, KeyboardInterrupt: stop
                    self._error = e
                    self._consumer.close()
                _log.warning(
                    "handler of queue %s failed on message %s (attempt %d of %d)",
                    self.queue,
                    d.message_id,
                    d.attempt,
                    d.max_attempts,
                    exc_info=e,
                )
                if not d.settled:
                    self._nack(d, error_reason(e))
            else:
                with self._mu:
                    self._counters.in_flight -= 1
                running = False
                if not d.settled:
                    self._ack(d)
        finally:
            self._local.in_handler = False
            with self._mu:
                if running:
                    self._counters.in_flight -= 1
                self._active -= 1
                self._mu.notify_all()

    def _ack(self, d: Delivery) -> None:
        try:
            d.ack()
        except DatalayerError as e:
            self._failed(d, "ack", e)
        else:
            with self._mu:
                self._counters.acked += 1

    def _nack(self, d: Delivery, reason: str) -> None:
        try:
            dead = d.nack(reason)
        except DatalayerError as e:
            self._failed(d, "nack", e)
        else:
            with self._mu:
                self._counters.nacked += 1
                self._counters.dead += dead

    def _failed(self, d: Delivery, what: str, e: DatalayerError) -> None:
        with self._mu:
            self._counters.settle_failed += 1
        _log.warning("%s of message %s of queue %s failed: %s", what, d.message_id, self.queue, e)

    def stop(self, timeout: float | None = None) -> bool:
        """Stops taking messages and waits up to ``timeout`` seconds (default:
        without limit) for the running handlers to return and their messages
        to be settled. True when they did. Raises the error that stopped the
        worker, if one did. From inside a handler it does not wait."""
        self._consumer.close()
        if getattr(self._local, "in_handler", False):
            return False
        done = self._finished.wait(timeout)
        self._raise()
        return done

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the worker has stopped (:meth:`stop` from another
        thread, ``stop_event``, or an error, re-raised here) and its handlers
        returned, or ``timeout`` passes (False). ``KeyboardInterrupt``
        stops the worker (waiting for its handlers) and goes on."""
        try:
            done = self._finished.wait(timeout)
        except KeyboardInterrupt:
            self.stop()
            raise
        self._raise()
        return done

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()
        self._finished.wait()
        if exc is None:
            self._raise()

    def __repr__(self) -> str:
        return f"Worker(queue={self.queue!r}, concurrency={self._consumer.concurrency}, {self.stats})"


class QueueWorkers:
    """Consumer and worker helpers of ``Client.queue``."""

    def consume(
        self: _SyncQueueRPCs,
        queue: str,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        metadata: Metadata = (),
    ) -> Consumer:
        """The messages of ``queue``, as they are ready, as a
        :class:`Consumer` (an iterator of :class:`Delivery`) on a
        ``Consume`` stream: at most ``concurrency`` (1 to 10000) delivered
        and not yet settled at a time; settle each with ``msg.ack()`` /
        ``msg.nack(reason)`` or a ``with msg:`` block (acks, or nacks on an
        exception)::

            with client.queue.consume("analyses", concurrency=10) as messages:
                for msg in messages:
                    with msg:
                        analyse(msg.payload)

        ``lease``: each message's lease (default: its own). Broken streams
        are opened again; other errors are raised by ``next()``.
        """
        return Consumer(self, queue, concurrency=concurrency, lease=lease, metadata=metadata)

    def work(
        self: _SyncQueueRPCs,
        queue: str,
        handler: SyncHandler,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        stop_event: threading.Event | None = None,
        metadata: Metadata = (),
    ) -> Worker:
        """Starts a :class:`Worker`: ``handler(delivery)`` in up to
        ``concurrency`` threads, acked when it returns, nacked with the
        exception when it raises::

            stop = threading.Event()   # set it, e.g. on SIGTERM, to stop
            client.queue.work("analyses", analyse, concurrency=10, stop_event=stop).wait()

            with client.queue.work("analyses", analyse) as worker:
                ...                    # runs in the background; leaving stops it

        Stopping waits for the running handlers; messages are not extended
        (give a ``lease`` longer than a handler runs).
        """
        return Worker(
            self, queue, handler, concurrency=concurrency, lease=lease, stop_event=stop_event, metadata=metadata
        )


# -------------------------------------------------------------------- async


class _AsyncQueueRPCs(Protocol):
    """What the async helpers need of ``AsyncClient.queue``."""

    _invoke: AsyncInvoker
    stub: queue_pb2_grpc.QueueServiceAsyncStub

    async def ack(
        self, request: queue_pb2.AckRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> queue_pb2.AckResponse: ...

    async def nack(
        self, request: queue_pb2.NackRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> queue_pb2.NackResponse: ...

    async def extend_lease(
        self, request: queue_pb2.ExtendLeaseRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> queue_pb2.ExtendLeaseResponse: ...


class AsyncDelivery(_DeliveryBase):
    """The asyncio twin of :class:`Delivery`: ``await msg.ack()``,
    ``await msg.nack(reason)``, ``await msg.extend(lease)``, ``async with msg:``."""

    def __init__(
        self,
        rpcs: _AsyncQueueRPCs,
        queue: str,
        message: queue_pb2.Message,
        on_settled: Callable[[], None],
        stream_ack: Callable[[AsyncDelivery, float | None], Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__(queue, message)
        self._rpcs = rpcs
        self._on_settled = on_settled
        self._stream_ack = stream_ack

    async def ack(self, *, timeout: float | None = None) -> None:
        """As :meth:`Delivery.ack` (on the stream while it is open)."""
        self._claim("acked")
        if self._stream_ack is not None and await self._stream_ack(self, timeout):
            return
        try:
            await self._rpcs.ack(self._ack_request(), timeout=timeout)
        finally:
            self._on_settled()

    async def nack(
        self,
        reason: str = "",
        *,
        retry_after: DurationLike | None = None,
        dead_letter: bool = False,
        timeout: float | None = None,
    ) -> bool:
        """As :meth:`Delivery.nack`."""
        self._claim("nacked")
        try:
            answer = await self._rpcs.nack(self._nack_request(reason, retry_after, dead_letter), timeout=timeout)
            return answer.dead
        finally:
            self._on_settled()

    async def extend(self, lease: DurationLike, *, timeout: float | None = None) -> datetime:
        """As :meth:`Delivery.extend`."""
        answer = await self._rpcs.extend_lease(self._extend_request(lease), timeout=timeout)
        self.message.lease_expires_at.CopyFrom(answer.lease_expires_at)
        return answer.lease_expires_at.ToDatetime(tzinfo=timezone.utc)

    async def __aenter__(self) -> AsyncDelivery:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """As :meth:`Delivery.__exit__`."""
        if self.settled:
            return
        if exc is None:
            await self.ack()
        else:
            await self.nack(error_reason(exc))


async def _aoutbound(
    requests: asyncio.Queue[queue_pb2.ConsumeRequest | None],
) -> AsyncIterator[queue_pb2.ConsumeRequest]:
    while (r := await requests.get()) is not None:
        yield r


class _AsyncStream:
    """As :class:`_SyncStream`, read by a task."""

    def __init__(
        self,
        requests: asyncio.Queue[queue_pb2.ConsumeRequest | None],
        call: grpc.aio.StreamStreamCall[queue_pb2.ConsumeRequest, queue_pb2.ConsumeResponse],
    ) -> None:
        self.requests = requests
        self.call = call
        self.answers: asyncio.Queue[queue_pb2.Message | _End] = asyncio.Queue()
        self.acks: dict[str, tuple[_PendingAck, asyncio.Future[None]]] = {}
        self.ended = False
        self.reader: asyncio.Task[None] | None = None


class AsyncConsumer(AsyncIterator[AsyncDelivery]):
    """The asyncio twin of :class:`Consumer`: ``async for msg in consumer``,
    ``async with consumer``, :meth:`close` (from the event loop's thread).
    Made inside a running event loop; the stream opens at once."""

    def __init__(
        self,
        rpcs: _AsyncQueueRPCs,
        queue: str,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        metadata: Metadata = (),
    ) -> None:
        self.queue = queue
        self.concurrency = _concurrency(concurrency)
        self._lease = None if lease is None else parse_duration(lease, "lease")
        self._rpcs = rpcs
        self._metadata = rpcs._invoke.metadata + tuple(metadata)
        self._closed = asyncio.Event()
        self._unsettled = 0
        self._stream: _AsyncStream | None = None
        self._opened_at = 0.0
        self._attempt = 0
        self._open()

    @property
    def unsettled(self) -> int:
        return self._unsettled

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _open(self) -> None:
        if self._closed.is_set():
            return
        requests: asyncio.Queue[queue_pb2.ConsumeRequest | None] = asyncio.Queue()
        requests.put_nowait(_start(self.queue, self.concurrency - self._unsettled, self._lease))
        stream = _AsyncStream(requests, self._rpcs.stub.Consume(_aoutbound(requests), metadata=self._metadata))
        self._stream = stream
        self._opened_at = time.monotonic()
        stream.reader = asyncio.get_running_loop().create_task(self._read(stream), name=f"datalayer-consume-{self.queue}")

    async def _read(self, stream: _AsyncStream) -> None:
        """As :meth:`Consumer._read`."""
        end = _End(None)
        try:
            while True:
                answer = await stream.call.read()
                if answer is grpc.aio.EOF:
                    break
                assert isinstance(answer, queue_pb2.ConsumeResponse)
                if answer.HasField("acked"):
                    self._answered(stream, answer.acked)
                else:
                    self._unsettled += 1
                    stream.answers.put_nowait(answer.message)
        except asyncio.CancelledError as e:
            # close() cancels the call, which grpc.aio reports so; a
            # cancellation of this task itself (the loop closing) goes on.
            end = _End(e)
            if not stream.call.cancelled():
                raise
        except BaseException as e:  # grpc.RpcError, mostly
            end = _End(e)
        finally:
            stream.ended = True
            pending = list(stream.acks.values())
            stream.acks.clear()
            for p, fut in pending:
                if p.abandoned:
                    self._unsettled -= 1
                elif not fut.done():
                    p.outcome = _BROKEN
                    fut.set_result(None)
            stream.answers.put_nowait(end)

    def _answered(self, stream: _AsyncStream, acked: queue_pb2.ConsumeResponse.Acked) -> None:
        entry = stream.acks.pop(acked.message_id, None)
        if entry is None:
            return  # nothing waits for it
        p, fut = entry
        self._unsettled -= 1  # its credit is back at the service
        p.outcome = None if acked.ok else _ack_error(acked)
        if not fut.done():
            fut.set_result(None)

    async def _stream_ack(self, d: AsyncDelivery, timeout: float | None) -> bool:
        """As :meth:`Consumer._stream_ack`."""
        stream = self._stream
        if stream is None or stream.ended or self._closed.is_set() or d.message_id in stream.acks:
            return False
        p = _PendingAck()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.acks[d.message_id] = (p, fut)
        stream.requests.put_nowait(_ack_on_stream(d))
        budget = timeout if timeout is not None else self._rpcs._invoke.timeout
        try:
            await asyncio.wait_for(asyncio.shield(fut), budget)
        except asyncio.TimeoutError:
            if p.outcome is _WAITING:
                p.abandoned = True
                raise _unanswered(d.message_id, budget) from None
        except asyncio.CancelledError:
            if p.outcome is _WAITING:
                p.abandoned = True
            raise
        if p.outcome is _BROKEN:
            return False
        if isinstance(p.outcome, DatalayerError):
            raise p.outcome
        return True

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.requests.put_nowait(None)
            stream.call.cancel()

    def _settled(self) -> None:
        self._unsettled -= 1
        if self._stream is not None and not self._stream.ended:
            self._stream.requests.put_nowait(queue_pb2.ConsumeRequest(credit=1))

    def __aiter__(self) -> AsyncConsumer:
        return self

    async def __anext__(self) -> AsyncDelivery:
        while True:
            stream = self._stream
            if stream is None or self._closed.is_set():
                raise StopAsyncIteration
            err: DatalayerError | None = None
            answer = await stream.answers.get()
            if not isinstance(answer, _End):
                self._attempt = 0
                return AsyncDelivery(self._rpcs, self.queue, answer, self._settled, self._stream_ack)
            stream.answers.put_nowait(answer)  # for a next() that waits on it too
            if self._closed.is_set():
                raise StopAsyncIteration
            if self._stream is not stream:
                continue  # another next() saw this end first
            if isinstance(answer.error, grpc.RpcError):
                err = self._rpcs._invoke._error(answer.error)
                if not isinstance(err, _TRANSIENT):
                    self._drop_stream()
                    self._closed.set()
                    raise err from answer.error
            elif answer.error is not None and not isinstance(answer.error, asyncio.CancelledError):
                self._drop_stream()
                self._closed.set()
                raise answer.error
            # else: the service ended the stream (grpc.aio.EOF): open another.
            self._drop_stream()
            if time.monotonic() - self._opened_at >= _HEALTHY_S:
                self._attempt = 0
            delay = _backoff(self._attempt, err)
            self._attempt += 1
            _log_reopen(self.queue, err, delay, self._attempt)
            try:
                await asyncio.wait_for(self._closed.wait(), delay)
            except asyncio.TimeoutError:
                pass
            else:
                raise StopAsyncIteration
            self._open()

    def close(self) -> None:
        """Ends the stream; delivered messages can still be settled."""
        self._closed.set()
        self._drop_stream()

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


AsyncHandler = Callable[[AsyncDelivery], Awaitable[object]]


class AsyncWorker:
    """The asyncio twin of :class:`Worker`: ``await handler(delivery)`` in
    up to ``concurrency`` tasks of the loop it was made in; ``await
    worker.stop()``, ``await worker.wait()``, ``async with``. ``stop_event``
    is an ``asyncio.Event``. ``stop(timeout)`` cancels the handlers still
    running after ``timeout`` (their messages are nacked)."""

    def __init__(
        self,
        rpcs: _AsyncQueueRPCs,
        queue: str,
        handler: AsyncHandler,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        stop_event: asyncio.Event | None = None,
        metadata: Metadata = (),
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be an async function, got {handler!r}")
        self.queue = queue
        self._handler = handler
        self._consumer = AsyncConsumer(rpcs, queue, concurrency=concurrency, lease=lease, metadata=metadata)
        self._counters = _Counters()
        self._error: BaseException | None = None
        self._finished = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._read(), name=f"datalayer-consume-{queue}")
        self._watcher = None if stop_event is None else loop.create_task(self._watch(stop_event))

    @property
    def stats(self) -> WorkerStats:
        return self._counters.snapshot()

    @property
    def running(self) -> bool:
        return not self._consumer.closed

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    async def _watch(self, stop_event: asyncio.Event) -> None:
        await stop_event.wait()
        self._consumer.close()

    async def _read(self) -> None:
        try:
            async for d in self._consumer:
                self._counters.received += 1
                task = asyncio.get_running_loop().create_task(self._run(d))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._error = e
            _log.error("worker of queue %s stopped: %s", self.queue, e)
        finally:
            self._consumer.close()
            while self._handlers:
                await asyncio.wait(set(self._handlers))
            if self._watcher is not None:
                self._watcher.cancel()
            self._finished.set()

    async def _run(self, d: AsyncDelivery) -> None:
        c = self._counters
        c.in_flight += 1
        c.max_in_flight = max(c.max_in_flight, c.in_flight)
        running = True

        def returned() -> None:  # the handler is done: settling is not counted
            nonlocal running
            if running:
                c.in_flight -= 1
                running = False

        try:
            await self._handler(d)
        except asyncio.CancelledError:
            returned()
            if not d.settled:
                await self._nack(d, "handler cancelled: the worker stopped")
            raise
        except Exception as e:
            returned()
            _log.warning(
                "handler of queue %s failed on message %s (attempt %d of %d)",
                self.queue,
                d.message_id,
                d.attempt,
                d.max_attempts,
                exc_info=e,
            )
            if not d.settled:
                await self._nack(d, error_reason(e))
        else:
            returned()
            if not d.settled:
                await self._ack(d)
        finally:
            returned()

    async def _ack(self, d: AsyncDelivery) -> None:
        try:
            await d.ack()
        except DatalayerError as e:
            self._failed(d, "ack", e)
        else:
            self._counters.acked += 1

    async def _nack(self, d: AsyncDelivery, reason: str) -> None:
        try:
            dead = await d.nack(reason)
        except DatalayerError as e:
            self._failed(d, "nack", e)
        else:
            self._counters.nacked += 1
            self._counters.dead += dead

    def _failed(self, d: AsyncDelivery, what: str, e: DatalayerError) -> None:
        self._counters.settle_failed += 1
        _log.warning("%s of message %s of queue %s failed: %s", what, d.message_id, self.queue, e)

    async def stop(self, timeout: float | None = None) -> bool:
        """Stops taking messages and waits up to ``timeout`` seconds (default:
        without limit) for the running handlers; those still running then are
        cancelled (and their messages nacked). True when none had to be.
        Raises the error that stopped the worker, if one did. From inside a
        handler it does not wait."""
        self._consumer.close()
        if asyncio.current_task() in self._handlers:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(self._finished.wait()), timeout)
            done = True
        except asyncio.TimeoutError:
            for task in list(self._handlers):
                task.cancel()
            await self._finished.wait()
            done = False
        self._raise()
        return done

    async def wait(self, timeout: float | None = None) -> bool:
        """Waits until the worker has stopped and its handlers returned (True),
        or ``timeout`` passes (False); re-raises the error that stopped it."""
        try:
            await asyncio.wait_for(asyncio.shield(self._finished.wait()), timeout)
        except asyncio.TimeoutError:
            return False
        self._raise()
        return True

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    async def __aenter__(self) -> AsyncWorker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()
        await self._finished.wait()
        if exc is None:
            self._raise()

    def __repr__(self) -> str:
        return f"AsyncWorker(queue={self.queue!r}, concurrency={self._consumer.concurrency}, {self.stats})"


class AsyncQueueWorkers:
    """Consumer and worker helpers of ``AsyncClient.queue``."""

    def consume(
        self: _AsyncQueueRPCs,
        queue: str,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        metadata: Metadata = (),
    ) -> AsyncConsumer:
        """As :meth:`QueueWorkers.consume`: ``async with client.queue.consume(q) as messages: async for msg in messages:``."""
        return AsyncConsumer(self, queue, concurrency=concurrency, lease=lease, metadata=metadata)

    def work(
        self: _AsyncQueueRPCs,
        queue: str,
        handler: AsyncHandler,
        *,
        concurrency: int = 10,
        lease: DurationLike | None = None,
        stop_event: asyncio.Event | None = None,
        metadata: Metadata = (),
    ) -> AsyncWorker:
        """As :meth:`QueueWorkers.work`, with an ``async def`` handler run as
        tasks: ``await client.queue.work(q, handler, stop_event=stop).wait()``."""
        return AsyncWorker(
            self, queue, handler, concurrency=concurrency, lease=lease, stop_event=stop_event, metadata=metadata
        )
