"""The path every call of the hand-written layer takes: default deadline,
metadata (bearer token), retries of UNAVAILABLE with exponential backoff and
jitter (honouring ``google.rpc.RetryInfo``), and mapping of gRPC errors to
:mod:`datalayer.errors`."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Sequence, TypeVar, Union

import grpc
import grpc.aio

from datalayer.errors import DatalayerError, DeadlineExceeded, Unavailable, from_rpc_error

__all__ = ["AsyncInvoker", "Metadata", "RetryPolicy", "SyncInvoker"]

#: Extra call metadata: ``(key, value)`` pairs; ``-bin`` keys take bytes.
Metadata = Sequence[tuple[str, Union[str, bytes]]]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True)
class RetryPolicy:
    """How UNAVAILABLE is retried.

    Attempt ``n`` (0-based) waits ``retry_after + uniform(0, min(max_backoff,
    initial_backoff * multiplier**n))`` seconds, where ``retry_after`` is the
    delay of the error's ``google.rpc.RetryInfo`` (0 when absent). Retries stop
    after ``retries`` attempts, or when the wait would pass the call's deadline
    (the deadline covers all attempts); the last error is then raised.

    Note that a call answered UNAVAILABLE because the store was too slow may
    still have been applied (e.g. a rate-limit Check consumed); use
    ``retries=0`` where a repeat is not acceptable.
    """

    retries: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return (retry_after or 0.0) + self.rng.uniform(0.0, cap)


class _Base:
    def __init__(self, *, timeout: float | None, metadata: Metadata, policy: RetryPolicy) -> None:
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str | bytes], ...] = tuple(metadata)
        self.policy = policy

    def _start(self, timeout: float | None, metadata: Metadata) -> tuple[float | None, tuple[tuple[str, str | bytes], ...]]:
        budget = self.timeout if timeout is None else timeout
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
        if not isinstance(err, Unavailable) or attempt >= self.policy.retries:
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
        deadline, md = self._start(timeout, metadata)
        attempt = 0
        while True:
            try:
                return method(request, timeout=self._remaining(deadline), metadata=md)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
                    raise err from e
            time.sleep(delay)
            attempt += 1


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
        deadline, md = self._start(timeout, metadata)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self._remaining(deadline), metadata=md)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
                    raise err from e
            await asyncio.sleep(delay)
            attempt += 1
