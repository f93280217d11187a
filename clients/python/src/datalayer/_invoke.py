"""The path every call of the hand-written layer takes: default deadline,
metadata (bearer token), retries of the UNAVAILABLE a repeat cannot harm
(see :func:`retryable`) with exponential backoff and jitter (never sooner
than ``google.rpc.RetryInfo``), and mapping of gRPC errors to
:mod:`datalayer.errors`.

Server-streaming calls return a :class:`ServerStream` (sync) or an
:class:`AsyncServerStream`: iterators of the answers with the same metadata,
error mapping and retries, except that a stream has no default deadline
(only its own ``timeout=``) and is never retried once it has yielded."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import AsyncIterator, Iterator, Protocol, Sequence, TypeVar, Union

import grpc
import grpc.aio

from google.protobuf.message import Message
from google.rpc import error_details_pb2

from datalayer.errors import DatalayerError, DeadlineExceeded, Unavailable, from_rpc_error

__all__ = [
    "AsyncInvoker",
    "AsyncServerStream",
    "Metadata",
    "RetryPolicy",
    "ServerStream",
    "SyncInvoker",
    "retryable",
]

#: Extra call metadata: ``(key, value)`` pairs; ``-bin`` keys take bytes.
Metadata = Sequence[tuple[str, Union[str, bytes]]]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Resp_co = TypeVar("_Resp_co", covariant=True)


@dataclass(frozen=True)
class RetryPolicy:
    """How a :func:`retryable` UNAVAILABLE is retried.

    Attempt ``n`` (0-based) waits ``retry_after + uniform(0, min(max_backoff,
    initial_backoff * multiplier**n))`` seconds, where ``retry_after`` is the
    delay of the error's ``google.rpc.RetryInfo`` (0 when absent). Retries stop
    after ``retries`` attempts, or when the wait would pass the call's deadline
    (the deadline covers all attempts); the last error is then raised.

    Only an UNAVAILABLE that a repeat cannot apply twice is retried: one with
    ``RetryInfo``, or one that never left the client (see :func:`retryable`).
    An UNAVAILABLE without ``RetryInfo`` means the outcome is unknown (a write
    that may have been applied, e.g. an ``enqueue`` without ``dedup_id``) or
    that retrying will not help (a misconfigured store): it is raised at once.
    """

    retries: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return (retry_after or 0.0) + self.rng.uniform(0.0, cap)


#: Added to the error of a plaintext channel whose connection the server
#: closed before answering: what a TLS-only server does to plaintext.
TLS_HINT = (
    " (the server closed the connection before answering; if it serves TLS, "
    "connect with an https:// target, tls=True or root_certificates=)"
)


#: How grpc words the failure of a call that got no connection (every address
#: refused, timed out or failed its handshake) or no address: it fails when
#: the channel picks a connection for it, before anything of it is sent.
_NEVER_SENT_PREFIXES = (
    "failed to connect to all addresses",
    "DNS resolution failed",
    "errors resolving ",
)


def _never_sent(err: DatalayerError) -> bool:
    """The call failed in this client before any of it was sent: grpc
    found no connection for it. A status from a server (rich details) never
    counts, whatever its message."""
    return err.status is None and err.message.startswith(_NEVER_SENT_PREFIXES)


def retryable(err: DatalayerError) -> bool:
    """Whether repeating the failed call cannot apply it twice.

    True for an UNAVAILABLE that carries ``google.rpc.RetryInfo`` (the
    service sends it when the call never reached the store, or only read),
    and for one that never left the client (no connection to the service
    could be made). False for every other error, in particular for an
    UNAVAILABLE without ``RetryInfo``: the call may have been applied (the
    store took it and did not answer), or the store refuses until an
    operator acts. ``DEADLINE_EXCEEDED`` is never retryable: the deadline
    covers the retries."""
    if not isinstance(err, Unavailable):
        return False
    return err.detail(error_details_pb2.RetryInfo) is not None or _never_sent(err)


def _check_request(request: object) -> None:
    """Refuses, before anything is sent, a request that is not a protobuf
    message (grpc would fail to serialize it and report INTERNAL)."""
    if isinstance(request, Message):
        return
    hint = (
        "; make the message from the dict: CheckRequest(**d), or json_format.ParseDict(d, CheckRequest())"
        if isinstance(request, dict)
        else ""
    )
    raise TypeError(
        "a request must be the method's protobuf message, e.g. "
        f"ratelimit_pb2.CheckRequest(key=...), not {type(request).__name__}{hint}"
    )


class _Base:
    def __init__(
        self, *, timeout: float | None, metadata: Metadata, policy: RetryPolicy, plaintext: bool = False
    ) -> None:
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str | bytes], ...] = tuple(metadata)
        self.policy = policy
        self.plaintext = plaintext

    def _error(self, e: grpc.RpcError) -> DatalayerError:
        """The :class:`DatalayerError` of ``e``; on a plaintext channel, a
        connection the server closed at once says TLS may be why."""
        err = from_rpc_error(e)
        if (
            self.plaintext
            and isinstance(err, Unavailable)
            and "failed to connect" in err.message
            and ("Socket closed" in err.message or "Connection reset" in err.message)
        ):
            err.message += TLS_HINT
            err.args = (err.message,)
        return err

    def _start(
        self, timeout: float | None, metadata: Metadata, *, stream: bool = False
    ) -> tuple[float | None, tuple[tuple[str, str | bytes], ...]]:
        # The client's default deadline is for unary calls: a stream (a
        # Watch) is meant to stay open, so it only ends by its own timeout.
        budget = timeout if stream or timeout is not None else self.timeout
        deadline = None if budget is None else time.monotonic() + budget
        return deadline, self.metadata + tuple(metadata)

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded before the call could be retried")
        return left

    def _retry_delay(self, err: DatalayerError, attempt: int, deadline: float | None) -> float | None:
        """The wait before the next attempt, or None to give up."""
        if attempt >= self.policy.retries or not retryable(err):
            return None
        delay = self.policy.delay(attempt, err.retry_after)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


class SyncInvoker(_Base):
    """Runs unary calls on a ``grpc.Channel``."""

    def __call__(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> _Resp:
        _check_request(request)
        deadline, md = self._start(timeout, metadata)
        attempt = 0
        while True:
            try:
                return method(request, timeout=self._remaining(deadline), metadata=md)
            except grpc.RpcError as e:
                err = self._error(e)
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
                    raise err from e
            time.sleep(delay)
            attempt += 1

    def stream(
        self,
        method: grpc.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> ServerStream[_Resp]:
        """Opens a server-streaming call; see :class:`ServerStream`."""
        _check_request(request)
        deadline, md = self._start(timeout, metadata, stream=True)
        return ServerStream(self, method, request, deadline, md)


class AsyncInvoker(_Base):
    """Runs unary calls on a ``grpc.aio.Channel``."""

    async def __call__(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> _Resp:
        _check_request(request)
        deadline, md = self._start(timeout, metadata)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self._remaining(deadline), metadata=md)
            except grpc.RpcError as e:
                err = self._error(e)
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
                    raise err from e
            await asyncio.sleep(delay)
            attempt += 1

    def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> AsyncServerStream[_Resp]:
        """Opens a server-streaming call; see :class:`AsyncServerStream`."""
        _check_request(request)
        deadline, md = self._start(timeout, metadata, stream=True)
        return AsyncServerStream(self, method, request, deadline, md)


class _SyncCall(Protocol[_Resp_co]):
    def __next__(self) -> _Resp_co: ...

    def cancel(self) -> bool: ...


def _cancelled(e: grpc.RpcError) -> bool:
    code = getattr(e, "code", None)
    return callable(code) and code() == grpc.StatusCode.CANCELLED


class ServerStream(Iterator[_Resp]):
    """The answers of a server-streaming call, in order, as an iterator.

    The call starts when the stream is created, not at the first
    iteration (a ``Watch`` sees the changes made once the service has
    opened it). Iterating blocks for the next answer; the iterator ends
    when the service ends the stream. A failure raises the matching
    :class:`datalayer.errors.DatalayerError`; a :func:`retryable`
    UNAVAILABLE before the first answer is retried as for unary calls (the
    call is opened again, within
    the stream's deadline; a retried ``Watch`` sees changes from its new
    attempt on), never after an answer was yielded: open the stream again
    then (for ``Watch``: and re-read what you watch).

    ``timeout`` (seconds) bounds the whole stream, retries included; by
    default a stream has no deadline. :meth:`cancel` (from any thread) or
    leaving a ``with`` block ends the stream: iteration then stops without
    an error.
    """

    def __init__(
        self,
        invoker: SyncInvoker,
        method: grpc.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        deadline: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        def open_call(timeout: float | None) -> _SyncCall[_Resp]:
            return method(request, timeout=timeout, metadata=metadata)

        self._invoker = invoker
        self._open_call = open_call
        self._deadline = deadline
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._call: _SyncCall[_Resp] | None = None
        self._attempt = 0
        self._yielded = False
        self._open()

    def _open(self) -> None:
        call = self._open_call(self._invoker._remaining(self._deadline))
        with self._lock:
            if self._cancel.is_set():
                call.cancel()
            else:
                self._call = call

    def _end(self) -> None:
        with self._lock:
            self._call = None

    def __iter__(self) -> ServerStream[_Resp]:
        return self

    def __next__(self) -> _Resp:
        while True:
            with self._lock:
                call = self._call
            if call is None:
                raise StopIteration
            try:
                answer = next(call)
            except StopIteration:
                self._end()
                raise
            except grpc.RpcError as e:
                self._end()
                if self._cancel.is_set() and _cancelled(e):
                    raise StopIteration from None
                err = self._invoker._error(e)
                delay = None if self._yielded else self._invoker._retry_delay(err, self._attempt, self._deadline)
                if delay is None:
                    raise err from e
                if self._cancel.wait(delay):
                    raise StopIteration from None
                self._attempt += 1
                self._open()
                continue
            self._yielded = True
            return answer

    def cancel(self) -> bool:
        """Ends the stream; False if it had already ended or been cancelled."""
        with self._lock:
            first = not self._cancel.is_set() and self._call is not None
            self._cancel.set()
            call = self._call
        if call is not None:
            call.cancel()
        return first

    def __enter__(self) -> ServerStream[_Resp]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class AsyncServerStream(AsyncIterator[_Resp]):
    """The asyncio twin of :class:`ServerStream`: ``async for answer in
    stream``, ``async with stream``, :meth:`cancel` (from the event loop's
    thread). The call starts when the stream is created, inside a running
    event loop. Cancelling the task that awaits an answer cancels the task
    as usual (``asyncio.CancelledError``); the stream is then still open
    until :meth:`cancel` or garbage collection."""

    def __init__(
        self,
        invoker: AsyncInvoker,
        method: grpc.aio.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        deadline: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        def open_call(timeout: float | None) -> grpc.aio.UnaryStreamCall[_Req, _Resp]:
            return method(request, timeout=timeout, metadata=metadata)

        self._invoker = invoker
        self._open_call = open_call
        self._deadline = deadline
        self._cancel = asyncio.Event()
        self._call: grpc.aio.Call | None = None
        self._answers: AsyncIterator[_Resp] | None = None
        self._attempt = 0
        self._yielded = False
        self._open()

    def _open(self) -> None:
        call = self._open_call(self._invoker._remaining(self._deadline))
        self._call, self._answers = call, call.__aiter__()

    def _end(self) -> None:
        self._call = self._answers = None

    def __aiter__(self) -> AsyncServerStream[_Resp]:
        return self

    async def __anext__(self) -> _Resp:
        while True:
            answers = self._answers
            if answers is None or self._cancel.is_set():
                self._end()
                raise StopAsyncIteration
            try:
                answer = await answers.__anext__()
            except StopAsyncIteration:
                self._end()
                raise
            except asyncio.CancelledError:
                # cancel() cancels the call, which grpc.aio reports so;
                # a cancellation of the awaiting task itself goes on.
                self._end()
                if self._cancel.is_set():
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as e:
                self._end()
                if self._cancel.is_set() and _cancelled(e):
                    raise StopAsyncIteration from None
                err = self._invoker._error(e)
                delay = None if self._yielded else self._invoker._retry_delay(err, self._attempt, self._deadline)
                if delay is None:
                    raise err from e
                try:
                    await asyncio.wait_for(self._cancel.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                else:
                    raise StopAsyncIteration from None
                self._attempt += 1
                self._open()
                continue
            self._yielded = True
            return answer

    def cancel(self) -> bool:
        """Ends the stream; False if it had already ended or been cancelled."""
        first = not self._cancel.is_set() and self._call is not None
        self._cancel.set()
        if self._call is not None:
            self._call.cancel()
        return first

    async def __aenter__(self) -> AsyncServerStream[_Resp]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
