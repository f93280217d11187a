"""Locks with fencing tokens and leader election, on ``StateService``'s
``AcquireLock`` / ``RenewLock`` / ``ReleaseLock``.

Reached as ``client.state.lock(...)`` and ``client.state.leader(...)``
(the generated ``StateService`` classes inherit :class:`StateLocks` /
:class:`AsyncStateLocks`)::

    with client.state.lock("trader-leader", ttl="10s", wait="5s") as lease:
        trade(fencing_token=lease.fencing_token)   # raises LockNotAcquired if not held within 5 s
        lease.check()                               # raises LockLost once the lease is gone

    for term in client.state.leader("trader", ttl="10s"):   # blocks until this process leads
        while not term.wait_lost(timeout=1.0):                # until leadership is lost
            trade(fencing_token=term.fencing_token)

A :class:`Lease` renews itself in the background (a daemon thread, or an
asyncio task for :class:`AsyncLease`) every ``renew_every`` (default
``ttl / 3``) and is *lost* when a renewal is refused (``FAILED_PRECONDITION``
"lock lost": it expired or was released by someone holding its lease id) or
when its time runs out before a renewal got through (the service may then
have handed the lock to someone else). The time is counted conservatively
on this side, from before each successful call was sent, so ``lease.lost``
turns true no later than the service frees the lock. ``on_lost`` (if
given) is called once, with the lease, when that happens.

What a lease does *not* do: stop this process from acting after it was
lost. A holder that was paused (GC, a stopped VM, a slow network) can act on
a lock it no longer holds before it notices. The fencing token is the
protection: it strictly increases with every acquisition, so a system the
holder writes to can refuse a write that carries a smaller token than one it
already saw. Only systems that check the token are protected.

Durations (``ttl``, ``wait``, ``renew_every``) are a number of seconds, a
:class:`datetime.timedelta`, or a string such as ``"10s"``, ``"500ms"``,
``"1m"``, ``"1h30m"`` (units ``ns``, ``us``, ``ms``, ``s``, ``m``, ``h``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from datetime import timedelta
from types import TracebackType
from typing import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Protocol, Union

from google.protobuf import duration_pb2

from datalayer._invoke import AsyncInvoker, Metadata, SyncInvoker
from datalayer.errors import DatalayerError, DeadlineExceeded, FailedPrecondition, Unavailable
from datalayer.state.v1 import state_pb2

__all__ = [
    "AsyncLeadership",
    "AsyncLease",
    "AsyncLock",
    "AsyncStateLocks",
    "DurationLike",
    "Leadership",
    "Lease",
    "Lock",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "StateLocks",
    "parse_duration",
]

_log = logging.getLogger("datalayer.locks")

#: A duration: seconds (``int``/``float``), a ``timedelta``, or ``"10s"``, ``"500ms"``, ``"1m"``...
DurationLike = Union[str, int, float, timedelta]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

#: A waiting acquisition asks the service to wait at most this long per call
#: (the service bounds a call's wait by ``state.max_lock_wait``, 30 s by
#: default) and calls again until its own ``wait`` is over.
WAIT_PER_CALL = 2.0
#: The deadline a lock call gets on top of its wait when the client has no
#: default ``timeout``.
_CALL_TIMEOUT = 5.0
#: After a failed renewal, the next try comes at least this soon.
_MIN_RETRY = 0.05
#: Backoff of a leader campaign after UNAVAILABLE / DEADLINE_EXCEEDED.
_CAMPAIGN_BACKOFF = (0.1, 2.0)


def parse_duration(value: DurationLike, what: str = "duration") -> float:
    """A duration in seconds: a number of seconds, a ``timedelta``, or a
    string of one or more ``<number><unit>`` parts (``"10s"``, ``"500ms"``,
    ``"1m30s"``; units ``ns``, ``us``, ``ms``, ``s``, ``m``, ``h``). A bare
    number in a string (``"10"``) is seconds too. Negative and non-finite
    values are refused (``ValueError``)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a duration, got {value!r}")
    if isinstance(value, timedelta):
        secs = value.total_seconds()
    elif isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            secs = float(text)
        except ValueError:
            pos, secs = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                secs += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f'{what} must be a duration such as "10s", "500ms" or "1m", got {value!r}'
                ) from None
    else:
        raise TypeError(f"{what} must be seconds, a timedelta or a string such as '10s', got {value!r}")
    if not math.isfinite(secs) or secs < 0:
        raise ValueError(f"{what} must be a finite, non-negative duration, got {value!r}")
    return secs


def _duration_pb(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


class LockError(Exception):
    """A lock helper could not give or keep a lease. ``name`` is the lock's."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class LockNotAcquired(LockError):
    """The lock stayed held by another lease for the whole ``wait``.
    ``retry_after``: seconds until that lease ends, as the service said (it
    may be renewed before then)."""

    def __init__(self, message: str, *, name: str, retry_after: float | None) -> None:
        super().__init__(message, name=name)
        self.retry_after = retry_after


class LockLost(LockError):
    """The lease no longer holds (or may no longer hold) the lock: a renewal
    was refused ("lock lost") or the lease ran out before one got through.
    Stop acting as the holder; ``fencing_token`` is the token of the lost
    lease."""

    def __init__(self, message: str, *, name: str, fencing_token: int) -> None:
        super().__init__(message, name=name)
        self.fencing_token = fencing_token


# ------------------------------------------------------------------ options


class _Options:
    """A lock request's validated options, in seconds."""

    def __init__(
        self,
        name: str,
        ttl: DurationLike,
        wait: DurationLike | None,
        renew_every: DurationLike | None,
        call_timeout: float | None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a lock name must be a non-empty string, got {name!r}")
        self.name = name
        self.ttl = parse_duration(ttl, "ttl")
        if self.ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        self.wait = None if wait is None else parse_duration(wait, "wait")
        self.renew_every = self.ttl / 3 if renew_every is None else parse_duration(renew_every, "renew_every")
        if self.renew_every <= 0:
            raise ValueError(f"renew_every must be positive, got {renew_every!r}")
        self.call_timeout = call_timeout if call_timeout is not None else _CALL_TIMEOUT

    def acquire_request(self, wait: float) -> state_pb2.AcquireLockRequest:
        req = state_pb2.AcquireLockRequest(name=self.name, ttl=_duration_pb(self.ttl))
        if wait > 0:
            req.wait.CopyFrom(_duration_pb(wait))
        return req

    def renew_request(self, lease_id: str) -> state_pb2.RenewLockRequest:
        return state_pb2.RenewLockRequest(name=self.name, lease_id=lease_id, ttl=_duration_pb(self.ttl))

    def not_acquired(self, answer: state_pb2.AcquireLockResponse) -> LockNotAcquired:
        retry_after = answer.retry_after.ToTimedelta().total_seconds() if answer.HasField("retry_after") else None
        waited = f"within {self.wait:g}s" if self.wait else "without waiting"
        hint = f"; the current lease ends in {retry_after:g}s unless renewed" if retry_after is not None else ""
        return LockNotAcquired(
            f"lock {self.name} not acquired {waited}: another lease holds it{hint}",
            name=self.name,
            retry_after=retry_after,
        )


def _lost_message(name: str, why: str) -> str:
    return f"lock {name} lost: {why}; stop acting as its holder"


# --------------------------------------------------------------------- sync


class _SyncLockRPCs(Protocol):
    """What the sync helpers need of ``client.state`` (the generated class)."""

    _invoke: SyncInvoker

    def acquire_lock(
        self, request: state_pb2.AcquireLockRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> state_pb2.AcquireLockResponse: ...

    def renew_lock(
        self, request: state_pb2.RenewLockRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> state_pb2.RenewLockResponse: ...

    def release_lock(
        self, request: state_pb2.ReleaseLockRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> state_pb2.ReleaseLockResponse: ...


class Lease:
    """A held lock, renewed by a background thread until :meth:`release`
    (or the end of the ``with`` block) or until it is lost.

    Attributes:
        name: the lock's name.
        lease_id: the secret that renews and releases this lease.
        fencing_token: strictly greater than every earlier acquisition's
            token of this lock; send it with every write the lock guards.
    """

    def __init__(
        self,
        rpcs: _SyncLockRPCs,
        opts: _Options,
        answer: state_pb2.AcquireLockResponse,
        sent_at: float,
        on_lost: Callable[[Lease], object] | None,
    ) -> None:
        self._rpcs = rpcs
        self._opts = opts
        self.name = opts.name
        self.lease_id: str = answer.lease_id
        self.fencing_token: int = answer.fencing_token
        self._on_lost = on_lost
        self._mu = threading.Lock()
        # Conservative: the service started the lease after we sent the call.
        self._expires_at = sent_at + opts.ttl
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._released = False
        self._reason = ""
        self._thread = threading.Thread(target=self._run, name=f"datalayer-lease-{self.name}", daemon=True)

    def _start(self) -> Lease:
        self._thread.start()
        return self

    # -- state

    @property
    def lost(self) -> bool:
        """True once the lease is (or may be) lost: a renewal was refused, or
        its time ran out before a renewal got through. Not set by
        :meth:`release`."""
        if self._lost.is_set():
            return True
        with self._mu:
            return not self._released and time.monotonic() >= self._expires_at

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran."""
        return self._released

    @property
    def expires_in(self) -> float:
        """Seconds the lease surely holds without another renewal (counted
        from before the last successful call was sent); 0 once lost."""
        if self.lost or self._released:
            return 0.0
        return max(0.0, self._expires_at - time.monotonic())

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost, or ``None``."""
        if not self.lost:
            return None
        return self._reason or _lost_message(self.name, "the lease ran out before it could be renewed")

    def check(self) -> None:
        """Raises :class:`LockLost` if the lease is lost or was released;
        call it before each action the lock guards."""
        if self._released:
            raise LockLost(
                _lost_message(self.name, "this lease was released"), name=self.name, fencing_token=self.fencing_token
            )
        if self.lost:
            raise LockLost(
                self._reason or _lost_message(self.name, "the lease ran out before it could be renewed"),
                name=self.name,
                fencing_token=self.fencing_token,
            )

    def wait_lost(self, timeout: DurationLike | None = None) -> bool:
        """Blocks until the lease is lost (True) or ``timeout`` passes (False);
        returns False at once if it was released (and not lost before)."""
        secs = None if timeout is None else parse_duration(timeout, "timeout")
        deadline = None if secs is None else time.monotonic() + secs
        while True:
            if self.lost:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if self._released or (left is not None and left <= 0):
                return False
            # Woken by the renewer; also re-checked at least every second.
            self._lost.wait(1.0 if left is None else min(left, 1.0))

    # -- renewals

    def _mark_lost(self, reason: str) -> None:
        with self._mu:
            if self._lost.is_set() or self._released:
                return
            self._reason = reason
            self._lost.set()
        _log.warning("%s", reason)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                _log.exception("on_lost callback of lock %s failed", self.name)

    def renew(self) -> None:
        """Renews the lease now (the background thread does it on its own).
        Raises :class:`LockLost` if it is lost; other errors (e.g.
        :class:`datalayer.Unavailable`) are raised as they are, and the
        lease stays held until its time runs out."""
        self.check()
        self._renew(bounded=True)

    def _renew(self, *, bounded: bool) -> None:
        """One RenewLock. ``bounded``: only while the lease surely holds (and
        within that time); else (right after a waiting acquisition, whose
        start on the service is unknown) whatever the local estimate says."""
        sent = time.monotonic()
        left = self._expires_at - sent
        if bounded and left <= 0:
            self._mark_lost(_lost_message(self.name, "the lease ran out before it could be renewed"))
            self.check()
        timeout = min(left, self._opts.call_timeout) if bounded else self._opts.call_timeout
        try:
            answer = self._rpcs.renew_lock(self._opts.renew_request(self.lease_id), timeout=timeout)
        except FailedPrecondition as e:
            self._mark_lost(_lost_message(self.name, f"the service refused the renewal ({e.message})"))
            raise LockLost(self._reason or e.message, name=self.name, fencing_token=self.fencing_token) from e
        if answer.fencing_token != self.fencing_token:
            why = f"the service renewed fencing token {answer.fencing_token}, not ours ({self.fencing_token})"
            self._mark_lost(_lost_message(self.name, why))
            self.check()
        with self._mu:
            if not self._lost.is_set():
                self._expires_at = max(self._expires_at, sent + self._opts.ttl)

    def _run(self) -> None:
        every = self._opts.renew_every
        next_renew = time.monotonic() + every
        while True:
            with self._mu:
                expires_at = self._expires_at
            wake = min(next_renew, expires_at)
            if self._stop.wait(max(0.0, wake - time.monotonic())):
                return
            now = time.monotonic()
            if now >= expires_at:
                self._mark_lost(_lost_message(self.name, "the lease ran out before a renewal got through"))
                return
            if now < next_renew:
                continue
            try:
                self.renew()
            except LockLost:
                return
            except DatalayerError as e:
                if self._stop.is_set():
                    return
                # Transient (UNAVAILABLE, DEADLINE_EXCEEDED...): try again
                # soon, while the lease still holds.
                left = self._expires_at - time.monotonic()
                next_renew = time.monotonic() + min(every, max(_MIN_RETRY, left / 4))
                _log.info("renewing lock %s failed (%s); trying again", self.name, e)
                continue
            next_renew = time.monotonic() + every

    # -- release

    def release(self) -> bool:
        """Stops renewing and releases the lock. True if this lease still held
        it; False if it was already lost (or released). Errors raise
        :class:`datalayer.DatalayerError` (the lock then frees when its TTL
        ends)."""
        with self._mu:
            if self._released:
                return False
            self._released = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._opts.call_timeout + 1.0)
        answer = self._rpcs.release_lock(state_pb2.ReleaseLockRequest(name=self.name, lease_id=self.lease_id))
        return answer.released

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except DatalayerError as e:
            _log.warning("releasing lock %s failed (%s); it frees when its TTL ends", self.name, e)

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost else "held"
        return f"Lease(name={self.name!r}, fencing_token={self.fencing_token}, {state})"


class _Stopped(Exception):
    """A campaign was stopped (:meth:`Leadership.stop`)."""


def _acquire_answer(
    rpcs: _SyncLockRPCs, opts: _Options, stop: threading.Event | None = None
) -> tuple[state_pb2.AcquireLockResponse, float]:
    """AcquireLock until acquired or ``opts.wait`` passes (or ``stop`` is
    set: :class:`_Stopped`): (answer, when the successful call was sent)."""
    deadline = None if opts.wait is None else time.monotonic() + opts.wait
    while True:
        if stop is not None and stop.is_set():
            raise _Stopped
        left = WAIT_PER_CALL if deadline is None else max(0.0, deadline - time.monotonic())
        wait = min(left, WAIT_PER_CALL)
        sent = time.monotonic()
        answer = rpcs.acquire_lock(opts.acquire_request(wait), timeout=wait + opts.call_timeout)
        if answer.acquired:
            return answer, sent
        if deadline is not None and time.monotonic() >= deadline:
            raise opts.not_acquired(answer)


def _acquire(
    rpcs: _SyncLockRPCs,
    opts: _Options,
    on_lost: Callable[[Lease], object] | None,
    stop: threading.Event | None = None,
) -> Lease:
    while True:
        started = time.monotonic()
        answer, sent = _acquire_answer(rpcs, opts, stop)
        lease = Lease(rpcs, opts, answer, sent, None)
        if time.monotonic() - sent > opts.ttl / 3:
            # The call waited: when the service took the lock during it is
            # unknown, so renew now to know how long the lease holds.
            try:
                lease._renew(bounded=False)
            except LockLost:
                if opts.wait is not None:
                    opts = _shorter_wait(opts, time.monotonic() - started)
                continue
            except DatalayerError:
                pass  # the renewing thread tries again while the lease holds
        lease._on_lost = on_lost
        return lease._start()


def _shorter_wait(opts: _Options, spent: float) -> _Options:
    out = _Options(opts.name, opts.ttl, max(0.0, (opts.wait or 0.0) - spent), opts.renew_every, opts.call_timeout)
    return out


class Lock:
    """``client.state.lock(...)``: a lock to take, as a context manager
    (``with ... as lease``) or with :meth:`acquire`. Entering acquires (waiting
    up to ``wait``, else :class:`LockNotAcquired`); leaving releases."""

    def __init__(
        self,
        rpcs: _SyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        wait: DurationLike | None = 0,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> None:
        self._rpcs = rpcs
        self._opts = _Options(name, ttl, wait, renew_every, rpcs._invoke.timeout)
        self._on_lost = on_lost
        self._lease: Lease | None = None

    @property
    def name(self) -> str:
        return self._opts.name

    def acquire(self) -> Lease:
        """Takes the lock: a renewing :class:`Lease` (release it, or use it as
        a context manager). Raises :class:`LockNotAcquired` when another
        lease held it for the whole ``wait``."""
        return _acquire(self._rpcs, self._opts, self._on_lost)

    def __enter__(self) -> Lease:
        if self._lease is not None and not self._lease.released:
            raise RuntimeError(f"lock {self.name} is already entered; use another client.state.lock(...)")
        self._lease = self.acquire()
        return self._lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.__exit__(exc_type, exc, tb)


def _transient(e: DatalayerError) -> bool:
    return isinstance(e, (Unavailable, DeadlineExceeded))


def _terms(
    rpcs: _SyncLockRPCs,
    opts: _Options,
    on_lost: Callable[[Lease], object] | None,
    stop: threading.Event,
) -> Generator[Lease, None, None]:
    backoff = _CAMPAIGN_BACKOFF[0]
    while not stop.is_set():
        try:
            lease = _acquire(rpcs, opts, on_lost, stop)
        except _Stopped:
            return
        except DatalayerError as e:
            if not _transient(e):
                raise
            _log.info("campaigning for lock %s failed (%s); trying again in %.1fs", opts.name, e, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, _CAMPAIGN_BACKOFF[1])
            continue
        backoff = _CAMPAIGN_BACKOFF[0]
        try:
            yield lease
        finally:
            try:
                lease.release()
            except Exception as e:  # also when finalized after the client closed
                _log.warning("releasing lock %s failed (%s); it frees when its TTL ends", opts.name, e)


class Leadership(Iterator[Lease]):
    """``client.state.leader(name, ttl=...)``: the terms of this process as
    the leader of ``name``, one :class:`Lease` per term::

        with client.state.leader("trader", ttl="10s") as terms:
            for term in terms:                    # blocks until this process leads
                while not term.wait_lost(1.0):    # leads until the lease is lost
                    step(term.fencing_token)

    Each ``next()`` releases the previous term (if still held) and blocks,
    without limit, until this process holds the lock: it is the leader until
    the term's lease is lost (``term.lost``, ``term.wait_lost()``,
    ``term.check()``, ``on_lost``). Leadership is *not* taken away from the
    loop's body: it must watch the term and return when it is lost; the
    loop then campaigns again. Returning early hands leadership over.
    UNAVAILABLE / DEADLINE_EXCEEDED while campaigning are retried with
    backoff; other errors are raised.

    :meth:`close` (or leaving the ``with`` block, or breaking out of a
    plain ``for`` loop on CPython) releases the current term and ends the
    iteration; :meth:`stop` (from any thread) ends a blocked campaign
    within about ``WAIT_PER_CALL`` (2 s).
    """

    def __init__(
        self,
        rpcs: _SyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> None:
        self._stop = threading.Event()
        # The generator does not refer to `self`, so dropping the
        # Leadership closes it (and releases the term) at once on CPython.
        self._terms = _terms(rpcs, _Options(name, ttl, None, renew_every, rpcs._invoke.timeout), on_lost, self._stop)

    def __iter__(self) -> Leadership:
        return self

    def __next__(self) -> Lease:
        return next(self._terms)

    def stop(self) -> None:
        """Ends a campaign (from any thread): the blocked ``next()`` then
        raises ``StopIteration``. A held term stays held until :meth:`close`
        or the next ``next()``."""
        self._stop.set()

    def close(self) -> None:
        """Releases the current term and ends the iteration."""
        self._stop.set()
        self._terms.close()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StateLocks:
    """Lock helpers of ``client.state`` (mixed into the generated
    ``StateService``)."""

    def lock(
        self: _SyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        wait: DurationLike | None = 0,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> Lock:
        """A lock to take: ``with client.state.lock(name, ttl="10s", wait="5s") as lease:``.

        Args:
            name: the lock, 1 to 128 bytes of ``[A-Za-z0-9_.:-]``.
            ttl: how long the lease holds without a renewal (e.g. ``"10s"``).
            wait: how long to wait while another lease holds it (default 0:
                try once; ``None``: without limit); past it,
                :class:`LockNotAcquired`.
            renew_every: the renewal interval (default ``ttl / 3``).
            on_lost: called once, with the lease, when the lease is lost
                (from the thread that noticed: the renewing thread, or
                yours in :meth:`Lease.renew`).
        """
        return Lock(self, name, ttl=ttl, wait=wait, renew_every=renew_every, on_lost=on_lost)

    def leader(
        self: _SyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> Leadership:
        """Leader election on lock ``name``: an iterator of this process's
        terms as leader, see :class:`Leadership`::

            for term in client.state.leader("trader", ttl="10s"):
                while not term.wait_lost(1.0):
                    step(term.fencing_token)
        """
        return Leadership(self, name, ttl=ttl, renew_every=renew_every, on_lost=on_lost)


# -------------------------------------------------------------------- async


class _AsyncLockRPCs(Protocol):
    """What the async helpers need of ``client.state``."""

    _invoke: AsyncInvoker

    async def acquire_lock(
        self, request: state_pb2.AcquireLockRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> state_pb2.AcquireLockResponse: ...

    async def renew_lock(
        self, request: state_pb2.RenewLockRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> state_pb2.RenewLockResponse: ...

    async def release_lock(
        self, request: state_pb2.ReleaseLockRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> state_pb2.ReleaseLockResponse: ...


class AsyncLease:
    """The asyncio twin of :class:`Lease`: renewed by an asyncio task of the
    loop it was acquired in; :meth:`renew`, :meth:`release` and
    :meth:`wait_lost` are coroutines, ``on_lost`` runs in the loop."""

    def __init__(
        self,
        rpcs: _AsyncLockRPCs,
        opts: _Options,
        answer: state_pb2.AcquireLockResponse,
        sent_at: float,
        on_lost: Callable[[AsyncLease], object] | None,
    ) -> None:
        self._rpcs = rpcs
        self._opts = opts
        self.name = opts.name
        self.lease_id: str = answer.lease_id
        self.fencing_token: int = answer.fencing_token
        self._on_lost = on_lost
        self._expires_at = sent_at + opts.ttl
        self._lost = asyncio.Event()
        self._released = False
        self._reason = ""
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> AsyncLease:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"datalayer-lease-{self.name}")
        return self

    @property
    def lost(self) -> bool:
        """As :attr:`Lease.lost`."""
        return self._lost.is_set() or (not self._released and time.monotonic() >= self._expires_at)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def expires_in(self) -> float:
        """As :attr:`Lease.expires_in`."""
        if self.lost or self._released:
            return 0.0
        return max(0.0, self._expires_at - time.monotonic())

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost, or ``None``."""
        if not self.lost:
            return None
        return self._reason or _lost_message(self.name, "the lease ran out before it could be renewed")

    def check(self) -> None:
        """Raises :class:`LockLost` if the lease is lost or was released."""
        if self._released:
            raise LockLost(
                _lost_message(self.name, "this lease was released"), name=self.name, fencing_token=self.fencing_token
            )
        if self.lost:
            raise LockLost(
                self._reason or _lost_message(self.name, "the lease ran out before it could be renewed"),
                name=self.name,
                fencing_token=self.fencing_token,
            )

    async def wait_lost(self, timeout: DurationLike | None = None) -> bool:
        """Waits until the lease is lost (True) or ``timeout`` passes (False)."""
        secs = None if timeout is None else parse_duration(timeout, "timeout")
        try:
            await asyncio.wait_for(self._lost.wait(), secs)
        except asyncio.TimeoutError:
            return self.lost
        return True

    def _mark_lost(self, reason: str) -> None:
        if self._lost.is_set() or self._released:
            return
        self._reason = reason
        self._lost.set()
        _log.warning("%s", reason)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                _log.exception("on_lost callback of lock %s failed", self.name)

    async def renew(self) -> None:
        """As :meth:`Lease.renew`."""
        self.check()
        await self._renew(bounded=True)

    async def _renew(self, *, bounded: bool) -> None:
        """As :meth:`Lease._renew`."""
        sent = time.monotonic()
        left = self._expires_at - sent
        if bounded and left <= 0:
            self._mark_lost(_lost_message(self.name, "the lease ran out before it could be renewed"))
            self.check()
        timeout = min(left, self._opts.call_timeout) if bounded else self._opts.call_timeout
        try:
            answer = await self._rpcs.renew_lock(self._opts.renew_request(self.lease_id), timeout=timeout)
        except FailedPrecondition as e:
            self._mark_lost(_lost_message(self.name, f"the service refused the renewal ({e.message})"))
            raise LockLost(self._reason or e.message, name=self.name, fencing_token=self.fencing_token) from e
        if answer.fencing_token != self.fencing_token:
            why = f"the service renewed fencing token {answer.fencing_token}, not ours ({self.fencing_token})"
            self._mark_lost(_lost_message(self.name, why))
            self.check()
        if not self._lost.is_set():
            self._expires_at = max(self._expires_at, sent + self._opts.ttl)

    async def _run(self) -> None:
        every = self._opts.renew_every
        next_renew = time.monotonic() + every
        while not self._released:
            await asyncio.sleep(max(0.0, min(next_renew, self._expires_at) - time.monotonic()))
            now = time.monotonic()
            if self._released:
                return
            if now >= self._expires_at:
                self._mark_lost(_lost_message(self.name, "the lease ran out before a renewal got through"))
                return
            if now < next_renew:
                continue
            try:
                await self.renew()
            except LockLost:
                return
            except DatalayerError as e:
                left = self._expires_at - time.monotonic()
                next_renew = time.monotonic() + min(every, max(_MIN_RETRY, left / 4))
                _log.info("renewing lock %s failed (%s); trying again", self.name, e)
                continue
            next_renew = time.monotonic() + every

    async def release(self) -> bool:
        """As :meth:`Lease.release`."""
        if self._released:
            return False
        self._released = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        answer = await self._rpcs.release_lock(state_pb2.ReleaseLockRequest(name=self.name, lease_id=self.lease_id))
        return answer.released

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.release()
        except DatalayerError as e:
            _log.warning("releasing lock %s failed (%s); it frees when its TTL ends", self.name, e)

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost else "held"
        return f"AsyncLease(name={self.name!r}, fencing_token={self.fencing_token}, {state})"


async def _acquire_answer_async(
    rpcs: _AsyncLockRPCs, opts: _Options, stop: asyncio.Event | None = None
) -> tuple[state_pb2.AcquireLockResponse, float]:
    deadline = None if opts.wait is None else time.monotonic() + opts.wait
    while True:
        if stop is not None and stop.is_set():
            raise _Stopped
        left = WAIT_PER_CALL if deadline is None else max(0.0, deadline - time.monotonic())
        wait = min(left, WAIT_PER_CALL)
        sent = time.monotonic()
        answer = await rpcs.acquire_lock(opts.acquire_request(wait), timeout=wait + opts.call_timeout)
        if answer.acquired:
            return answer, sent
        if deadline is not None and time.monotonic() >= deadline:
            raise opts.not_acquired(answer)


async def _acquire_async(
    rpcs: _AsyncLockRPCs,
    opts: _Options,
    on_lost: Callable[[AsyncLease], object] | None,
    stop: asyncio.Event | None = None,
) -> AsyncLease:
    while True:
        started = time.monotonic()
        answer, sent = await _acquire_answer_async(rpcs, opts, stop)
        lease = AsyncLease(rpcs, opts, answer, sent, None)
        if time.monotonic() - sent > opts.ttl / 3:
            try:
                await lease._renew(bounded=False)
            except LockLost:
                if opts.wait is not None:
                    opts = _shorter_wait(opts, time.monotonic() - started)
                continue
            except DatalayerError:
                pass  # the renewing task tries again while the lease holds
        lease._on_lost = on_lost
        return lease._start()


class AsyncLock:
    """The asyncio twin of :class:`Lock`: ``async with client.state.lock(...) as lease``,
    or ``lease = await client.state.lock(...).acquire()``."""

    def __init__(
        self,
        rpcs: _AsyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        wait: DurationLike | None = 0,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[AsyncLease], object] | None = None,
    ) -> None:
        self._rpcs = rpcs
        self._opts = _Options(name, ttl, wait, renew_every, rpcs._invoke.timeout)
        self._on_lost = on_lost
        self._lease: AsyncLease | None = None

    @property
    def name(self) -> str:
        return self._opts.name

    async def acquire(self) -> AsyncLease:
        """As :meth:`Lock.acquire`."""
        return await _acquire_async(self._rpcs, self._opts, self._on_lost)

    def __await__(self) -> Generator[object, None, AsyncLease]:
        return self.acquire().__await__()

    async def __aenter__(self) -> AsyncLease:
        if self._lease is not None and not self._lease.released:
            raise RuntimeError(f"lock {self.name} is already entered; use another client.state.lock(...)")
        self._lease = await self.acquire()
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.__aexit__(exc_type, exc, tb)


async def _terms_async(
    rpcs: _AsyncLockRPCs,
    opts: _Options,
    on_lost: Callable[[AsyncLease], object] | None,
    stop: asyncio.Event,
) -> AsyncGenerator[AsyncLease, None]:
    backoff = _CAMPAIGN_BACKOFF[0]
    while not stop.is_set():
        try:
            lease = await _acquire_async(rpcs, opts, on_lost, stop)
        except _Stopped:
            return
        except DatalayerError as e:
            if not _transient(e):
                raise
            _log.info("campaigning for lock %s failed (%s); trying again in %.1fs", opts.name, e, backoff)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, _CAMPAIGN_BACKOFF[1])
            continue
        backoff = _CAMPAIGN_BACKOFF[0]
        try:
            yield lease
        finally:
            try:
                await lease.release()
            except Exception as e:  # also when finalized after the client closed
                _log.warning("releasing lock %s failed (%s); it frees when its TTL ends", opts.name, e)


class AsyncLeadership(AsyncIterator[AsyncLease]):
    """The asyncio twin of :class:`Leadership`::

        async with client.state.leader("trader", ttl="10s") as terms:
            async for term in terms:
                while not await term.wait_lost(1.0):
                    await step(term.fencing_token)

    Leave the ``async with`` block (or call :meth:`aclose`) to release the
    current term at once: an ``async for`` left by ``break`` without it only
    releases when the event loop finalizes the iterator. Cancelling the task
    that waits for a term ends the campaign.
    """

    def __init__(
        self,
        rpcs: _AsyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[AsyncLease], object] | None = None,
    ) -> None:
        self._stop = asyncio.Event()
        self._terms = _terms_async(
            rpcs, _Options(name, ttl, None, renew_every, rpcs._invoke.timeout), on_lost, self._stop
        )

    def __aiter__(self) -> AsyncLeadership:
        return self

    async def __anext__(self) -> AsyncLease:
        return await self._terms.__anext__()

    def stop(self) -> None:
        """As :meth:`Leadership.stop`."""
        self._stop.set()

    async def aclose(self) -> None:
        """Releases the current term and ends the iteration."""
        self._stop.set()
        await self._terms.aclose()

    async def __aenter__(self) -> AsyncLeadership:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncStateLocks:
    """Lock helpers of ``AsyncClient.state`` (mixed into the generated
    ``AsyncStateService``)."""

    def lock(
        self: _AsyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        wait: DurationLike | None = 0,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[AsyncLease], object] | None = None,
    ) -> AsyncLock:
        """As :meth:`StateLocks.lock`: ``async with client.state.lock(name, ttl="10s", wait="5s") as lease:``."""
        return AsyncLock(self, name, ttl=ttl, wait=wait, renew_every=renew_every, on_lost=on_lost)

    def leader(
        self: _AsyncLockRPCs,
        name: str,
        *,
        ttl: DurationLike,
        renew_every: DurationLike | None = None,
        on_lost: Callable[[AsyncLease], object] | None = None,
    ) -> AsyncLeadership:
        """As :meth:`StateLocks.leader`, see :class:`AsyncLeadership`."""
        return AsyncLeadership(self, name, ttl=ttl, renew_every=renew_every, on_lost=on_lost)
