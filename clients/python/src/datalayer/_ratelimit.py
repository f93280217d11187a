"""Rate limiters made once and used per caller id, on ``RateLimitService``.

Reached as ``client.ratelimit.sliding_window(...)`` and its siblings
(``client.ratelimit`` is a :class:`datalayer.RateLimitClient`, the generated
wrapper plus :class:`RateLimiters`)::

    limiter = client.ratelimit.sliding_window(10, "10s")    # 10 per rolling 10 s
    r = limiter.limit("user:42")                           # spends 1 unit if it fits
    if not r.success:
        raise TooManyRequests(retry_after=r.retry_after)   # seconds

    login = client.ratelimit.policy("auth")                # a limit of the server's configuration
    r = login.block_until_ready("ip:203.0.113.7", "5s")    # waits up to 5 s for room

    tokens = client.ratelimit.gcra(10_000, "1m", prefix="tokens")
    tokens.report("user:42", used)                         # usage known afterwards; may overdraw

    per_minute = client.ratelimit.gcra(10, "1m", prefix="minute")
    per_day = client.ratelimit.gcra(1000, "1d", prefix="day")
    r = client.ratelimit.limit_all("user:42", [per_minute, per_day])   # both spend, or neither

A limiter is a description of the limit (nothing is sent when it is made):
every call is one ``Check``, ``Report`` or ``Reset`` (``limit_all``: one
``CheckBatch``), atomic on the service, so a limiter may be shared by
threads (or tasks) and processes alike. Being over the limit is an answer
(``success=False``), not an exception.

State is kept per id, per scope (each policy, or *inline*) and per
algorithm: two inline limiters of the same algorithm but different numbers
share the state of an id. Give each a ``prefix`` (``sliding_window(100,
"1h", prefix="hourly")``) to keep them apart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, TypeVar

from datalayer._durations import DurationMs, _duration_pb, _pb_seconds, _seconds
from datalayer._invoke import Metadata
from datalayer.ratelimit.v1 import ratelimit_pb2

__all__ = [
    "AsyncRateLimiter",
    "AsyncRateLimiters",
    "LimitAllResult",
    "LimitReason",
    "LimitResult",
    "RateLimiter",
    "RateLimiters",
    "ReportResult",
]

#: Why a check answered as it did (``ratelimit.v1.Reason``, lower-cased).
LimitReason = Literal[
    "within_limit",
    "over_limit",
    "cost_exceeds_limit",
    "fail_open",
    "batch_rejected",
    "shadow_over_limit",
    "unspecified",
]

_REASONS: dict[int, LimitReason] = {
    ratelimit_pb2.REASON_WITHIN_LIMIT: "within_limit",
    ratelimit_pb2.REASON_OVER_LIMIT: "over_limit",
    ratelimit_pb2.REASON_COST_EXCEEDS_LIMIT: "cost_exceeds_limit",
    ratelimit_pb2.REASON_FAIL_OPEN: "fail_open",
    ratelimit_pb2.REASON_BATCH_REJECTED: "batch_rejected",
    ratelimit_pb2.REASON_SHADOW_OVER_LIMIT: "shadow_over_limit",
}

#: block_until_ready sleeps this much past the service's retry_after, which
#: is exact to the microsecond on the store's clock.
_RETRY_MARGIN = 0.002


@dataclass(frozen=True)
class LimitResult:
    """The answer of one check.

    Attributes:
        success: the cost fitted and was spent (always true for a ``cost=0``
            look, and for ``reason == "fail_open"`` or
            ``"shadow_over_limit"``, which spend nothing).
        limit: the limit that applied: units per window / period, or the
            bucket's capacity.
        remaining: units left right after this check.
        reset_at: when the id is back to its full budget, as Unix time in
            seconds (comparable with ``time.time()``): this side's clock when
            the answer arrived plus ``reset_after``.
        retry_after: when refused, seconds until the same cost would fit;
            ``None`` when allowed (but for ``"shadow_over_limit"``), and when
            the cost can never fit (``reason == "cost_exceeds_limit"``).
        reason: ``"within_limit"``, ``"over_limit"``,
            ``"cost_exceeds_limit"``, ``"fail_open"`` (the store was
            unreachable and the limit fails open), ``"batch_rejected"``
            (:meth:`RateLimiters.limit_all`: this limit had room, but another
            of the call did not, so none spent) or ``"shadow_over_limit"``
            (a policy in shadow mode, ``shadow_mode = true``, would have
            refused: allowed, nothing spent; ``remaining`` and
            ``retry_after`` say what the limit would have answered).
        reset_after: seconds until the full budget is back, as the service
            said (``reset_at`` without this side's clock).
        reservation: from :meth:`RateLimiter.reserve`, when it spent: pass
            it to :meth:`RateLimiter.settle`. Empty otherwise.

    ``bool(result)`` is ``result.success``.
    """

    success: bool
    limit: int
    remaining: int
    reset_at: float
    retry_after: float | None
    reason: LimitReason
    reset_after: float
    reservation: str = ""

    def __bool__(self) -> bool:
        return self.success

    @classmethod
    def from_pb(cls, answer: ratelimit_pb2.CheckResponse) -> LimitResult:
        """The result of a ``CheckResponse``."""
        reset_after = _pb_seconds(answer.reset_after)
        return cls(
            success=answer.allowed,
            limit=answer.limit,
            remaining=answer.remaining,
            reset_at=time.time() + reset_after,
            retry_after=_pb_seconds(answer.retry_after) if answer.HasField("retry_after") else None,
            reason=_REASONS.get(answer.reason, "unspecified"),
            reset_after=reset_after,
            reservation=answer.reservation,
        )


@dataclass(frozen=True)
class ReportResult:
    """The answer of :meth:`RateLimiter.report`.

    Attributes:
        limit: the limit that applied.
        remaining: units left after the report (0 when overdrawn).
        reset_at: when the id is back to its full budget, as Unix time in
            seconds (this side's clock plus ``reset_after``); when overdrawn,
            checks are refused until the overdraft has refilled.
        overdrawn: the cost did not fit: it was spent all the same, so the
            budget is exhausted (or below zero) and checks are refused until
            it refills (their ``retry_after`` says when).
        reset_after: seconds until the full budget is back, as the service
            said.
    """

    limit: int
    remaining: int
    reset_at: float
    overdrawn: bool
    reset_after: float

    @classmethod
    def from_pb(cls, answer: ratelimit_pb2.ReportResponse) -> ReportResult:
        """The result of a ``ReportResponse``."""
        reset_after = _pb_seconds(answer.reset_after)
        return cls(
            limit=answer.limit,
            remaining=answer.remaining,
            reset_at=time.time() + reset_after,
            overdrawn=answer.overdrawn,
            reset_after=reset_after,
        )


SettleOutcome = Literal["settled", "already_settled", "expired", "unspecified"]

_SETTLED: dict[int, SettleOutcome] = {
    ratelimit_pb2.SETTLE_RESULT_SETTLED: "settled",
    ratelimit_pb2.SETTLE_RESULT_ALREADY_SETTLED: "already_settled",
    ratelimit_pb2.SETTLE_RESULT_EXPIRED: "expired",
}


@dataclass(frozen=True)
class SettleResult:
    """The answer of :meth:`RateLimiter.settle`.

    Attributes:
        outcome: ``"settled"`` (now: the unused units came back, or the
            units above the reservation were spent), ``"already_settled"``
            (nothing changed) or ``"expired"`` (the reservation no longer
            counted: its window or period had passed; nothing came back,
            units above it were still spent).
        limit, remaining, reset_at, reset_after, overdrawn: as
            :class:`ReportResult`, after settling.
    """

    outcome: SettleOutcome
    limit: int
    remaining: int
    reset_at: float
    overdrawn: bool
    reset_after: float

    @classmethod
    def from_pb(cls, answer: ratelimit_pb2.SettleResponse) -> SettleResult:
        """The result of a ``SettleResponse``."""
        reset_after = _pb_seconds(answer.reset_after)
        return cls(
            outcome=_SETTLED.get(answer.result, "unspecified"),
            limit=answer.limit,
            remaining=answer.remaining,
            reset_at=time.time() + reset_after,
            overdrawn=answer.overdrawn,
            reset_after=reset_after,
        )


@dataclass(frozen=True)
class LimitAllResult:
    """The answer of :meth:`RateLimiters.limit_all`.

    Attributes:
        success: every limit had room, and each spent the cost; when false,
            none spent anything.
        results: one :class:`LimitResult` per limiter, in the order given.
            When refused, the limits without room answer as alone
            (``"over_limit"`` with their ``retry_after``, or
            ``"cost_exceeds_limit"``) and those with room
            ``"batch_rejected"`` (``success=False``, ``remaining``
            unchanged, no ``retry_after``).

    ``bool(result)`` is ``result.success``.
    """

    success: bool
    results: tuple[LimitResult, ...]

    def __bool__(self) -> bool:
        return self.success

    @property
    def retry_after(self) -> float | None:
        """When refused: seconds until every limit that had no room would
        fit the cost again (the largest ``retry_after``); ``None`` when
        allowed, and when a cost can never fit."""
        if self.success:
            return None
        waits = [r.retry_after for r in self.results if not r.success and r.reason != "batch_rejected"]
        if not waits or any(w is None for w in waits):
            return None
        return max(w for w in waits if w is not None)


class _SyncRateLimitRPCs(Protocol):
    """What a :class:`RateLimiter` needs of ``client.ratelimit``."""

    def check(
        self, request: ratelimit_pb2.CheckRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.CheckResponse: ...

    def check_batch(
        self, request: ratelimit_pb2.CheckBatchRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.CheckBatchResponse: ...

    def report(
        self, request: ratelimit_pb2.ReportRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.ReportResponse: ...

    def settle(
        self, request: ratelimit_pb2.SettleRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.SettleResponse: ...

    def reset(
        self, request: ratelimit_pb2.ResetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.ResetResponse: ...


class _AsyncRateLimitRPCs(Protocol):
    """What an :class:`AsyncRateLimiter` needs of ``client.ratelimit``."""

    async def check(
        self, request: ratelimit_pb2.CheckRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.CheckResponse: ...

    async def check_batch(
        self, request: ratelimit_pb2.CheckBatchRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.CheckBatchResponse: ...

    async def report(
        self, request: ratelimit_pb2.ReportRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.ReportResponse: ...

    async def settle(
        self, request: ratelimit_pb2.SettleRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.SettleResponse: ...

    async def reset(
        self, request: ratelimit_pb2.ResetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> ratelimit_pb2.ResetResponse: ...


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value!r}")
    return value


def _cost(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"cost must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"cost must not be negative, got {value!r}")
    return value


_R = TypeVar("_R", ratelimit_pb2.CheckRequest, ratelimit_pb2.ReportRequest, ratelimit_pb2.SettleRequest, ratelimit_pb2.ResetRequest)


class _Spec:
    """A limit (inline or a policy's name) and how ids become keys."""

    def __init__(
        self,
        *,
        inline: ratelimit_pb2.Limit | None = None,
        policy: str | None = None,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> None:
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {prefix!r}")
        self.inline = inline
        self.policy = policy
        self.prefix = prefix or ""
        self.metadata = metadata

    def key(self, id: str) -> str:
        if not isinstance(id, str):
            raise TypeError(f"a rate-limit id must be a string, got {id!r}")
        if not id:
            raise ValueError("a rate-limit id must not be empty")
        return f"{self.prefix}:{id}" if self.prefix else id

    def _with_source(self, req: _R) -> _R:
        """`req` with this spec's limit: inline, or the policy's name."""
        if self.inline is not None:
            req.limit.CopyFrom(self.inline)
        else:
            req.policy = self.policy or ""
        return req

    def check(self, id: str, cost: int) -> ratelimit_pb2.CheckRequest:
        req = ratelimit_pb2.CheckRequest(key=self.key(id), cost=_cost(cost))
        return self._with_source(req)

    def report(self, id: str, cost: int) -> ratelimit_pb2.ReportRequest:
        req = ratelimit_pb2.ReportRequest(key=self.key(id), cost=_count(cost, "cost"))
        return self._with_source(req)

    def settle(self, id: str, reservation: str, cost: int) -> ratelimit_pb2.SettleRequest:
        if not isinstance(reservation, str) or not reservation:
            raise ValueError(f"reservation must be the non-empty LimitResult.reservation of reserve(), got {reservation!r}")
        req = ratelimit_pb2.SettleRequest(key=self.key(id), reservation=reservation, cost=_cost(cost))
        return self._with_source(req)

    def reset(self, id: str) -> ratelimit_pb2.ResetRequest:
        req = ratelimit_pb2.ResetRequest(key=self.key(id))
        return self._with_source(req)

    def describe(self) -> str:
        if self.inline is None:
            what = f"policy={self.policy!r}"
        else:
            algorithm = str(self.inline.WhichOneof("algorithm"))
            fields = getattr(self.inline, algorithm)
            parts = [
                f"{f.name}={_pb_seconds(v):g}s" if f.message_type is not None else f"{f.name}={v}"
                for f, v in fields.ListFields()
            ]
            if self.inline.fail_mode == ratelimit_pb2.FAIL_MODE_OPEN:
                parts.append("fail_open=True")
            what = f"{algorithm}({', '.join(parts)})"
        return what + (f", prefix={self.prefix!r}" if self.prefix else "")


def _fail_mode(fail_open: bool) -> ratelimit_pb2.FailMode.ValueType:
    return ratelimit_pb2.FAIL_MODE_OPEN if fail_open else ratelimit_pb2.FAIL_MODE_CLOSED


def _gcra(limit: int, period: DurationMs, fail_open: bool) -> ratelimit_pb2.Limit:
    gcra = ratelimit_pb2.Gcra(limit=_count(limit, "limit"), period=_duration_pb(period, "period", positive=True))
    return ratelimit_pb2.Limit(gcra=gcra, fail_mode=_fail_mode(fail_open))


def _fixed_window(limit: int, window: DurationMs, fail_open: bool) -> ratelimit_pb2.Limit:
    w = ratelimit_pb2.FixedWindow(limit=_count(limit, "limit"), window=_duration_pb(window, "window", positive=True))
    return ratelimit_pb2.Limit(fixed_window=w, fail_mode=_fail_mode(fail_open))


def _sliding_window(limit: int, window: DurationMs, fail_open: bool) -> ratelimit_pb2.Limit:
    w = ratelimit_pb2.SlidingWindow(limit=_count(limit, "limit"), window=_duration_pb(window, "window", positive=True))
    return ratelimit_pb2.Limit(sliding_window=w, fail_mode=_fail_mode(fail_open))


def _token_bucket(refill_amount: int, refill_interval: DurationMs, capacity: int, fail_open: bool) -> ratelimit_pb2.Limit:
    bucket = ratelimit_pb2.TokenBucket(
        capacity=_count(capacity, "capacity"),
        refill_amount=_count(refill_amount, "refill_amount"),
        refill_interval=_duration_pb(refill_interval, "refill_interval", positive=True),
    )
    if bucket.refill_amount > bucket.capacity:
        raise ValueError(f"refill_amount ({refill_amount}) must not exceed capacity ({capacity})")
    return ratelimit_pb2.Limit(token_bucket=bucket, fail_mode=_fail_mode(fail_open))


def _policy_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a policy name must be a string, got {name!r}")
    if not name:
        raise ValueError("a policy name must not be empty")
    return name


def _batch(
    id: str, limiters: object, cost: int, kind: type[RateLimiter] | type[AsyncRateLimiter]
) -> tuple[ratelimit_pb2.CheckBatchRequest, Metadata]:
    """The all-or-nothing ``CheckBatch`` of ``limit_all``, and the metadata
    of its limiters (each pair once)."""
    if isinstance(limiters, (str, bytes)) or not isinstance(limiters, (list, tuple)):
        raise TypeError(f"limiters must be a list of {kind.__name__} objects, got {limiters!r}")
    if not limiters:
        raise ValueError("limit_all needs at least one limiter")
    specs: list[_Spec] = []
    for limiter in limiters:
        if not isinstance(limiter, kind):
            raise TypeError(f"limiters must be {kind.__name__} objects (made by this client), got {limiter!r}")
        specs.append(limiter._spec)
    checks = [spec.check(id, cost) for spec in specs]
    metadata: list[tuple[str, str | bytes]] = []
    for spec in specs:
        metadata.extend(pair for pair in spec.metadata if pair not in metadata)
    return ratelimit_pb2.CheckBatchRequest(checks=checks, all_or_nothing=True), tuple(metadata)


def _all_result(answer: ratelimit_pb2.CheckBatchResponse) -> LimitAllResult:
    results = tuple(LimitResult.from_pb(r) for r in answer.results)
    return LimitAllResult(success=all(r.success for r in results), results=results)


class RateLimiter:
    """A limit, applied per id with :meth:`limit`; made by
    ``client.ratelimit.sliding_window(...)`` and its siblings
    (:class:`RateLimiters`). Safe to share between threads."""

    def __init__(self, rpcs: _SyncRateLimitRPCs, spec: _Spec) -> None:
        self._rpcs = rpcs
        self._spec = spec

    def __repr__(self) -> str:
        return f"RateLimiter({self._spec.describe()})"

    def limit(self, id: str, *, cost: int = 1) -> LimitResult:
        """Spends ``cost`` units (default 1) of ``id``'s budget if they fit;
        a refused check spends nothing. ``cost=0`` only looks."""
        answer = self._rpcs.check(self._spec.check(id, cost), metadata=self._spec.metadata)
        return LimitResult.from_pb(answer)

    def block_until_ready(self, id: str, timeout: DurationMs, *, cost: int = 1) -> LimitResult:
        """:meth:`limit`, tried again after each refusal's ``retry_after``
        for as long as the next try would still be within ``timeout`` (a
        duration: ``"5s"``, a ``timedelta``, int milliseconds). Returns the
        first success, or the last refusal: when the time is up, or at once
        when the cost can never fit (``reason == "cost_exceeds_limit"``)."""
        deadline = time.monotonic() + _seconds(timeout, "timeout")
        while True:
            result = self.limit(id, cost=cost)
            if result.success or result.retry_after is None:
                return result
            wait = result.retry_after + _RETRY_MARGIN
            if time.monotonic() + result.retry_after > deadline:
                return result
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    def remaining(self, id: str) -> int:
        """Units ``id`` could spend now, without spending any (a ``cost=0``
        check)."""
        return self.limit(id, cost=0).remaining

    def report(self, id: str, cost: int) -> ReportResult:
        """Records ``cost`` units (at least 1) that ``id`` has already used,
        such as an LLM answer's tokens, known only afterwards. They are
        spent whether or not they fit, so the budget may be overdrawn
        (``overdrawn=True``; up to 100 times the limit per report): later
        checks are then refused until it has refilled. Check first with the
        expected cost, or with ``cost=0`` to only look."""
        answer = self._rpcs.report(self._spec.report(id, cost), metadata=self._spec.metadata)
        return ReportResult.from_pb(answer)

    def reserve(self, id: str, cost: int) -> LimitResult:
        """:meth:`limit` with an estimate (an LLM call's most tokens): when
        it spends, ``result.reservation`` is set; :meth:`settle` it with the
        real cost afterwards."""
        req = self._spec.check(id, cost)
        req.reserve = True
        return LimitResult.from_pb(self._rpcs.check(req, metadata=self._spec.metadata))

    def settle(self, id: str, reservation: str, cost: int) -> SettleResult:
        """Ends a :meth:`reserve` with the ``cost`` actually used: less gives
        the rest back (never more than the reservation still holds back),
        more spends the difference whether or not it fits (as
        :meth:`report`). Settling again changes nothing."""
        req = self._spec.settle(id, reservation, cost)
        return SettleResult.from_pb(self._rpcs.settle(req, metadata=self._spec.metadata))

    def reset(self, id: str) -> None:
        """Forgets ``id``'s state under this limit: its full budget is back."""
        self._rpcs.reset(self._spec.reset(id), metadata=self._spec.metadata)


class AsyncRateLimiter:
    """The asyncio twin of :class:`RateLimiter`: the same methods, as
    coroutines."""

    def __init__(self, rpcs: _AsyncRateLimitRPCs, spec: _Spec) -> None:
        self._rpcs = rpcs
        self._spec = spec

    def __repr__(self) -> str:
        return f"AsyncRateLimiter({self._spec.describe()})"

    async def limit(self, id: str, *, cost: int = 1) -> LimitResult:
        """As :meth:`RateLimiter.limit`."""
        answer = await self._rpcs.check(self._spec.check(id, cost), metadata=self._spec.metadata)
        return LimitResult.from_pb(answer)

    async def block_until_ready(self, id: str, timeout: DurationMs, *, cost: int = 1) -> LimitResult:
        """As :meth:`RateLimiter.block_until_ready`, sleeping with
        ``asyncio.sleep``."""
        deadline = time.monotonic() + _seconds(timeout, "timeout")
        while True:
            result = await self.limit(id, cost=cost)
            if result.success or result.retry_after is None:
                return result
            wait = result.retry_after + _RETRY_MARGIN
            if time.monotonic() + result.retry_after > deadline:
                return result
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    async def remaining(self, id: str) -> int:
        """As :meth:`RateLimiter.remaining`."""
        return (await self.limit(id, cost=0)).remaining

    async def report(self, id: str, cost: int) -> ReportResult:
        """As :meth:`RateLimiter.report`."""
        answer = await self._rpcs.report(self._spec.report(id, cost), metadata=self._spec.metadata)
        return ReportResult.from_pb(answer)

    async def reserve(self, id: str, cost: int) -> LimitResult:
        """As :meth:`RateLimiter.reserve`."""
        req = self._spec.check(id, cost)
        req.reserve = True
        return LimitResult.from_pb(await self._rpcs.check(req, metadata=self._spec.metadata))

    async def settle(self, id: str, reservation: str, cost: int) -> SettleResult:
        """As :meth:`RateLimiter.settle`."""
        req = self._spec.settle(id, reservation, cost)
        return SettleResult.from_pb(await self._rpcs.settle(req, metadata=self._spec.metadata))

    async def reset(self, id: str) -> None:
        """As :meth:`RateLimiter.reset`."""
        await self._rpcs.reset(self._spec.reset(id), metadata=self._spec.metadata)


class RateLimiters:
    """Limiter factories of ``Client.ratelimit`` (mixed into
    :class:`datalayer.RateLimitClient`). Durations are ``"10s"``, ``"1 m"``,
    ``"500ms"``, a ``timedelta`` or int milliseconds. ``fail_open=True``:
    while the store is unreachable, checks succeed with reason
    ``"fail_open"`` (by default they raise ``Unavailable``). ``prefix``: ids
    become ``"<prefix>:<id>"``, to keep limiters apart (see the module).
    ``metadata``: sent with each call."""

    def sliding_window(
        self: _SyncRateLimitRPCs,
        limit: int,
        window: DurationMs,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> RateLimiter:
        """At most ``limit`` per rolling ``window``, estimated from the
        current and the previous fixed window."""
        spec = _Spec(inline=_sliding_window(limit, window, fail_open), prefix=prefix, metadata=metadata)
        return RateLimiter(self, spec)

    def fixed_window(
        self: _SyncRateLimitRPCs,
        limit: int,
        window: DurationMs,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> RateLimiter:
        """At most ``limit`` per ``window``, windows aligned to the store's
        clock."""
        spec = _Spec(inline=_fixed_window(limit, window, fail_open), prefix=prefix, metadata=metadata)
        return RateLimiter(self, spec)

    def token_bucket(
        self: _SyncRateLimitRPCs,
        refill_amount: int,
        refill_interval: DurationMs,
        capacity: int,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> RateLimiter:
        """A bucket of ``capacity`` tokens (full at first), refilled with
        ``refill_amount`` tokens every whole ``refill_interval`` (Upstash's
        ``tokenBucket(refillRate, interval, maxTokens)`` order)."""
        spec = _Spec(
            inline=_token_bucket(refill_amount, refill_interval, capacity, fail_open), prefix=prefix, metadata=metadata
        )
        return RateLimiter(self, spec)

    def gcra(
        self: _SyncRateLimitRPCs,
        limit: int,
        period: DurationMs,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> RateLimiter:
        """``limit`` per ``period``, evenly spaced, with bursts of up to
        ``limit`` (the generic cell rate algorithm; exact retry times)."""
        spec = _Spec(inline=_gcra(limit, period, fail_open), prefix=prefix, metadata=metadata)
        return RateLimiter(self, spec)

    def policy(
        self: _SyncRateLimitRPCs,
        name: str,
        *,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> RateLimiter:
        """The limit configured as ``ratelimit.policies.<name>`` on the
        service (its algorithm, numbers and fail mode). An unknown name
        raises ``InvalidArgument`` at the first call."""
        return RateLimiter(self, _Spec(policy=_policy_name(name), prefix=prefix, metadata=metadata))

    def limit_all(
        self: _SyncRateLimitRPCs, id: str, limiters: Sequence[RateLimiter], *, cost: int = 1
    ) -> LimitAllResult:
        """Spends ``cost`` units of ``id``'s budget under every limiter of
        ``limiters`` (e.g. 10 per minute and 1000 per day), or under none:
        one ``CheckBatch`` with ``all_or_nothing``, atomic on the service.
        ``success`` is true when all had room; otherwise nothing was spent,
        and ``results`` (one per limiter, in order) say which had none.

        One id under several limiters always works, on Redis Cluster too (a
        key's states share its hash slot). The limiters must differ: two
        inline limiters of one algorithm need different ``prefix`` es (the
        service refuses a repeated key and limit with ``InvalidArgument``).
        The metadata of every limiter is sent, each pair once."""
        request, metadata = _batch(id, limiters, cost, RateLimiter)
        return _all_result(self.check_batch(request, metadata=metadata))


class AsyncRateLimiters:
    """Limiter factories of ``AsyncClient.ratelimit``: as
    :class:`RateLimiters`, making :class:`AsyncRateLimiter` objects."""

    def sliding_window(
        self: _AsyncRateLimitRPCs,
        limit: int,
        window: DurationMs,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> AsyncRateLimiter:
        """As :meth:`RateLimiters.sliding_window`."""
        spec = _Spec(inline=_sliding_window(limit, window, fail_open), prefix=prefix, metadata=metadata)
        return AsyncRateLimiter(self, spec)

    def fixed_window(
        self: _AsyncRateLimitRPCs,
        limit: int,
        window: DurationMs,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> AsyncRateLimiter:
        """As :meth:`RateLimiters.fixed_window`."""
        spec = _Spec(inline=_fixed_window(limit, window, fail_open), prefix=prefix, metadata=metadata)
        return AsyncRateLimiter(self, spec)

    def token_bucket(
        self: _AsyncRateLimitRPCs,
        refill_amount: int,
        refill_interval: DurationMs,
        capacity: int,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> AsyncRateLimiter:
        """As :meth:`RateLimiters.token_bucket`."""
        spec = _Spec(
            inline=_token_bucket(refill_amount, refill_interval, capacity, fail_open), prefix=prefix, metadata=metadata
        )
        return AsyncRateLimiter(self, spec)

    def gcra(
        self: _AsyncRateLimitRPCs,
        limit: int,
        period: DurationMs,
        *,
        fail_open: bool = False,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> AsyncRateLimiter:
        """As :meth:`RateLimiters.gcra`."""
        spec = _Spec(inline=_gcra(limit, period, fail_open), prefix=prefix, metadata=metadata)
        return AsyncRateLimiter(self, spec)

    def policy(
        self: _AsyncRateLimitRPCs,
        name: str,
        *,
        prefix: str | None = None,
        metadata: Metadata = (),
    ) -> AsyncRateLimiter:
        """As :meth:`RateLimiters.policy`."""
        return AsyncRateLimiter(self, _Spec(policy=_policy_name(name), prefix=prefix, metadata=metadata))

    async def limit_all(
        self: _AsyncRateLimitRPCs, id: str, limiters: Sequence[AsyncRateLimiter], *, cost: int = 1
    ) -> LimitAllResult:
        """As :meth:`RateLimiters.limit_all`."""
        request, metadata = _batch(id, limiters, cost, AsyncRateLimiter)
        return _all_result(await self.check_batch(request, metadata=metadata))
