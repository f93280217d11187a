"""Buffered event tracking and simple reads, on ``AnalyticsService``.

Reached as ``client.analytics.tracker(...)``, ``client.analytics.series(...)``,
``client.analytics.count_unique(...)`` and ``client.analytics.top_values(...)``
(``client.analytics`` is a :class:`datalayer.AnalyticsClient`, the generated
wrapper plus :class:`AnalyticsHelpers`)::

    with client.analytics.tracker(flush_every="1s", max_batch=500) as tracker:
        tracker.track("signals", exchange="kraken")                   # a count of 1
        tracker.track("orders", 3, exchange="kraken", side="buy")      # a count of 3
        tracker.track("latency_ms", sample=12.5, exchange="kraken")    # one sample
        tracker.track("commands", unique_id="user:42", top={"command": "/price"})

    for s in client.analytics.series("orders", since="1h", group_by=["exchange"]):
        print(s.dimensions["exchange"], s.count)
    client.analytics.count_unique("commands", since="1d")           # distinct unique_ids
    client.analytics.top_values("commands", "command", k=5)         # [("/price", 7), ...]

A :class:`Tracker` never waits for the network: ``track()`` checks its
arguments (``TypeError`` / ``ValueError`` at once, so one bad event cannot
spoil a batch), appends the event to an in-memory buffer and returns. A
daemon thread (an asyncio task for :class:`AsyncTracker`) sends the buffer
with ``Track``, at most ``max_batch`` events a call, every ``flush_every``
and as soon as ``max_batch`` events are waiting; ``flush()`` sends it now,
``close()`` (or leaving the ``with`` block) sends what is left and stops.

Nothing of a failed send reaches the caller of ``track()``: it is logged
(logger ``datalayer.analytics``) and counted. ``tracker.dropped`` counts
events refused because ``max_buffer`` events were waiting (or the tracker
was closed), ``tracker.failed`` the events of ``Track`` calls that failed
(they are not sent again: ``Track`` is not idempotent, and the client
already retried what was safe to retry), ``tracker.rejected`` events the
service refused as invalid (the rest of their batch is sent again without
them), ``tracker.errors`` the failed calls and ``tracker.last_error`` the
last of their errors.

Events carry no time unless given one (``time=``, an aware ``datetime``,
at most ``analytics.max_event_age`` old): the service stamps them with its
clock when the batch arrives, so an event lands in the bucket of its flush,
at most ``flush_every`` later. Reads take ``since`` (an aware ``datetime``,
or a duration before ``until``: ``"1h"``, a ``timedelta``, int
milliseconds) and ``until`` (an aware ``datetime``; default now).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time as _time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Callable, Iterable, Mapping, Protocol, Union

from google.protobuf import timestamp_pb2

from datalayer._durations import DurationMs, _nanos
from datalayer._invoke import Metadata
from datalayer.analytics.v1 import analytics_pb2 as pb
from datalayer.errors import InvalidArgument

__all__ = [
    "AnalyticsHelpers",
    "AsyncAnalyticsHelpers",
    "AsyncTracker",
    "MetricPoint",
    "MetricSeries",
    "Tracker",
]

_log = logging.getLogger("datalayer.analytics")

#: The service's own bounds that no setting changes (``analytics/grpc/parse.rs``).
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MAX_LABEL_BYTES = 64
_MAX_COUNT = 1_000_000_000
_MAX_SAMPLE = 1e15
#: Rust's ``char::is_control``: the Unicode category Cc.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The largest ``analytics.max_batch`` the service allows.
_MAX_BATCH = 100_000
_BAD_EVENT = re.compile(r"^events\[(\d+)\]")
_BATCH_CAP = re.compile(r"at most (\d+) per call")

#: A range's start: an aware datetime, or a duration before its end.
Since = Union[datetime, DurationMs]


# ------------------------------------------------------------------ arguments


def _metric(metric: object) -> str:
    if not isinstance(metric, str):
        raise TypeError(f"a metric name must be a string, got {metric!r}")
    if not _NAME.fullmatch(metric):
        raise ValueError(f"a metric name must be 1 to 128 characters of [A-Za-z0-9_.:-], got {metric!r}")
    return metric


def _label(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} names must be strings, got {name!r}")
    if not _NAME.fullmatch(name) or len(name) > _MAX_LABEL_BYTES:
        raise ValueError(f"{what} names must be 1 to {_MAX_LABEL_BYTES} characters of [A-Za-z0-9_.:-], got {name!r}")
    return name


def _text(value: object, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {value!r}")
    if not value and not empty:
        raise ValueError(f"{what} must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not hold control characters, got {value!r}")
    return value


def _labels(labels: Mapping[str, str], what: str) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise TypeError(f"{what} must be a mapping of names to strings, got {labels!r}")
    return {_label(k, what): _text(v, f"{what} value {k!r}") for k, v in labels.items()}


def _aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (e.g. datetime.now(timezone.utc)), got {value!r}")
    return value


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _event(
    metric: str,
    value: int,
    sample: float | None,
    unique_id: str | None,
    top: Mapping[str, str] | None,
    time: datetime | None,
    dims: Mapping[str, str],
) -> pb.Event:
    e = pb.Event(metric=_metric(metric), dimensions=_labels(dims, "dimension"))
    if sample is not None:
        if isinstance(sample, bool) or not isinstance(sample, (int, float)):
            raise TypeError(f"sample must be a number, got {sample!r}")
        if value != 1:
            raise ValueError("give value (a count) or sample, not both")
        if not math.isfinite(sample) or abs(sample) > _MAX_SAMPLE:
            raise ValueError(f"sample must be a finite number within ±1e15, got {sample!r}")
        e.sample = float(sample)
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = "; for a measurement use sample=" if isinstance(value, float) else ""
            raise TypeError(f"value must be an int (a count), got {value!r}{hint}")
        if not 1 <= value <= _MAX_COUNT:
            raise ValueError(f"value must be 1 to {_MAX_COUNT}, got {value!r}")
        if value != 1:
            e.count = value
    if unique_id is not None:
        e.unique_id = _text(unique_id, "unique_id", empty=True)
    if top is not None:
        e.top.update(_labels(top, "top"))
    if time is not None:
        e.time.CopyFrom(_timestamp(_aware(time, "time")))
    return e


def _set_range(
    req: pb.QueryRequest | pb.UniqueRequest | pb.TopRequest, since: Since | None, until: datetime | None
) -> None:
    """Sets ``from`` and ``to`` of a read (left unset: the service's defaults)."""
    end = None if until is None else _aware(until, "until")
    if isinstance(since, datetime):
        getattr(req, "from").CopyFrom(_timestamp(_aware(since, "since")))
    elif since is not None:
        span = timedelta(microseconds=_nanos(since, "since") // 1000)
        getattr(req, "from").CopyFrom(_timestamp((end or datetime.now(timezone.utc)) - span))
    if end is not None:
        req.to.CopyFrom(_timestamp(end))


def _filters(where: Mapping[str, str | Iterable[str]] | None) -> list[pb.DimensionFilter]:
    out = []
    for dimension, values in (where or {}).items():
        _label(dimension, "where")
        listed = [values] if isinstance(values, str) else list(values)
        out.append(pb.DimensionFilter(dimension=dimension, values=[_text(v, f"where[{dimension!r}]") for v in listed]))
    return out


def _group_by(group_by: Iterable[str]) -> list[str]:
    if isinstance(group_by, str):
        raise TypeError(f"group_by must be a list of dimension names, not one string ({group_by!r}); use [{group_by!r}]")
    return [_label(d, "group_by") for d in group_by]


def _query(
    metric: str,
    since: Since | None,
    until: datetime | None,
    resolution: str,
    where: Mapping[str, str | Iterable[str]] | None,
    group_by: Iterable[str],
) -> pb.QueryRequest:
    req = pb.QueryRequest(
        metric=_metric(metric),
        resolution=_text(resolution, "resolution", empty=True),
        filters=_filters(where),
        group_by=_group_by(group_by),
    )
    _set_range(req, since, until)
    return req


def _unique(metric: str, since: Since | None, until: datetime | None, resolution: str) -> pb.UniqueRequest:
    req = pb.UniqueRequest(metric=_metric(metric), resolution=_text(resolution, "resolution", empty=True))
    _set_range(req, since, until)
    return req


def _top(
    metric: str, dimension: str, k: int, since: Since | None, until: datetime | None, resolution: str
) -> pb.TopRequest:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    req = pb.TopRequest(
        metric=_metric(metric),
        dimension=_label(dimension, "dimension"),
        k=k,
        resolution=_text(resolution, "resolution", empty=True),
    )
    _set_range(req, since, until)
    return req


# ---------------------------------------------------------------------- reads


@dataclass(frozen=True)
class MetricPoint:
    """One bucket of a series: its start (UTC), the events' count, and the
    sum, min and max of their samples (a count adds to ``sum`` too; ``min``
    and ``max`` are 0 without samples)."""

    time: datetime
    count: int
    sum: float
    min: float
    max: float


@dataclass(frozen=True)
class MetricSeries:
    """One group of a read: its values of ``group_by`` (``"__other__"`` for
    folded events; empty without ``group_by``) and one point per bucket,
    zeros where nothing was tracked."""

    dimensions: dict[str, str]
    points: list[MetricPoint]

    @property
    def count(self) -> int:
        """The events over the range."""
        return sum(p.count for p in self.points)

    @property
    def sum(self) -> float:
        """The sum over the range."""
        return sum(p.sum for p in self.points)


def _series(answer: pb.QueryResponse) -> list[MetricSeries]:
    return [
        MetricSeries(
            dimensions=dict(s.dimensions),
            points=[
                MetricPoint(p.time.ToDatetime(tzinfo=timezone.utc), p.count, p.sum, p.min, p.max) for p in s.points
            ],
        )
        for s in answer.series
    ]


class _SyncAnalyticsRPCs(Protocol):
    """What the sync helpers need of ``client.analytics``."""

    def track(
        self, request: pb.TrackRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.TrackResponse: ...

    def query(
        self, request: pb.QueryRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.QueryResponse: ...

    def unique(
        self, request: pb.UniqueRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.UniqueResponse: ...

    def top(self, request: pb.TopRequest, *, timeout: float | None = None, metadata: Metadata = ()) -> pb.TopResponse: ...


class _AsyncAnalyticsRPCs(Protocol):
    """What the async helpers need of ``AsyncClient.analytics``."""

    async def track(
        self, request: pb.TrackRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.TrackResponse: ...

    async def query(
        self, request: pb.QueryRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.QueryResponse: ...

    async def unique(
        self, request: pb.UniqueRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.UniqueResponse: ...

    async def top(
        self, request: pb.TopRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> pb.TopResponse: ...


# -------------------------------------------------------------------- tracker


class _Buffer:
    """What both trackers share: the options, the buffer and the counters,
    under one lock; and what to do with a batch's outcome."""

    def __init__(
        self,
        *,
        flush_every: DurationMs,
        max_batch: int,
        max_buffer: int,
        timeout: float | None,
        metadata: Metadata,
        wake: Callable[[], None] | None = None,
    ) -> None:
        ns = _nanos(flush_every, "flush_every")
        if ns == 0:
            raise ValueError(f"flush_every must be longer than zero, got {flush_every!r}")
        for value, what in ((max_batch, "max_batch"), (max_buffer, "max_buffer")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{what} must be an int, got {value!r}")
        if not 1 <= max_batch <= _MAX_BATCH:
            raise ValueError(f"max_batch must be 1 to {_MAX_BATCH}, got {max_batch}")
        if max_buffer < max_batch:
            raise ValueError(f"max_buffer ({max_buffer}) must be at least max_batch ({max_batch})")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        self.interval = ns / 1e9
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.metadata = metadata
        self.wake = wake
        self.mu = threading.Lock()
        self.events: deque[pb.Event] = deque()
        self.closed = False
        #: Set from the service's answer when its analytics.max_batch is smaller.
        self.cap = max_batch
        self.sent = self.folded = self.dropped = self.rejected = self.failed = self.errors = 0
        self.last_error: BaseException | None = None
        self._failing = False
        self._overflowing = False

    def add(self, event: pb.Event) -> bool:
        with self.mu:
            if not self.closed and len(self.events) < self.max_buffer:
                self.events.append(event)
                self._overflowing = False
                if len(self.events) >= self.cap and self.wake is not None:
                    self.wake()
                return True
            self.dropped += 1
            first, self._overflowing = not self._overflowing, True
            closed = self.closed
        if first:
            why = "it is closed" if closed else f"{self.max_buffer} events are waiting (max_buffer)"
            _log.warning("analytics tracker drops events: %s", why)
        return False

    def pending(self) -> int:
        return len(self.events)

    def take(self, left: int, full_only: bool = False) -> list[pb.Event]:
        """At most one batch of the ``left`` oldest events (``full_only``:
        a whole batch, of whatever is waiting, or none)."""
        with self.mu:
            if full_only:
                n = self.cap if len(self.events) >= self.cap else 0
            else:
                n = min(left, len(self.events), self.cap)
            return [self.events.popleft() for _ in range(n)]

    def close(self) -> None:
        with self.mu:
            self.closed = True

    def accepted(self, batch: list[pb.Event], answer: pb.TrackResponse) -> None:
        with self.mu:
            self.sent += answer.accepted
            self.folded += answer.folded
            recovered, self._failing = self._failing, False
        if recovered:
            _log.info("analytics tracker: Track succeeds again")

    def refused(self, batch: list[pb.Event], err: BaseException) -> tuple[list[list[pb.Event]], int]:
        """Counts a failed ``Track`` of ``batch``. Answers what to send
        again, and how many events the service refused as invalid: the
        batch without the events it named, or the batch in smaller ones
        when it is larger than the service takes."""
        again: list[list[pb.Event]] = []
        rejected = 0
        if isinstance(err, InvalidArgument) and err.field_violations:
            violations = err.field_violations
            bad = {int(m[1]) for v in violations if (m := _BAD_EVENT.match(v.field))}
            if any(v.field == "events" for v in violations) and len(batch) > 1:
                # More than the service's analytics.max_batch: smaller batches from now on.
                said = [int(m[1]) for v in violations if v.field == "events" and (m := _BATCH_CAP.search(v.description))]
                size = said[0] if said and 0 < said[0] < len(batch) else max(1, len(batch) // 2)
                with self.mu:
                    self.cap = min(self.cap, size)
                again = [batch[i : i + size] for i in range(0, len(batch), size)]
            elif all(_BAD_EVENT.match(v.field) for v in violations) and max(bad) < len(batch):
                keep = [e for i, e in enumerate(batch) if i not in bad]
                rejected = len(batch) - len(keep)
                again = [keep] if keep else []
        with self.mu:
            self.errors += 1
            self.last_error = err
            self.rejected += rejected
            first = False
            if not again:
                self.failed += len(batch) - rejected
                first, self._failing = not self._failing, True
        if rejected:
            _log.warning("analytics tracker: the service refused %d invalid event(s): %s", rejected, err)
        elif not again:
            level = logging.WARNING if first else logging.DEBUG
            _log.log(level, "analytics tracker: Track of %d event(s) failed, they are lost: %s", len(batch), err)
        return again, rejected

    def describe(self) -> str:
        return (
            f"pending={self.pending()}, sent={self.sent}, dropped={self.dropped}, "
            f"rejected={self.rejected}, failed={self.failed}, errors={self.errors}"
        )


class _TrackerBase:
    """The counters of both trackers, and ``track()``."""

    _buf: _Buffer

    def track(
        self,
        metric: str,
        value: int = 1,
        *,
        sample: float | None = None,
        unique_id: str | None = None,
        top: Mapping[str, str] | None = None,
        time: datetime | None = None,
        **dims: str,
    ) -> bool:
        """Buffers one event of ``metric``, without waiting for anything: a
        count of ``value`` (an int, default 1), or one ``sample`` (a
        float: the count grows by one, the sum by it, min and max take it
        in); ``dims`` are its dimensions (``exchange="kraken"``, each
        distinct combination a series); ``unique_id`` counts it in the
        metric's unique count; ``top`` labels (``{"user": "42"}``) are
        counted only in the metric's top lists; ``time`` (an aware
        ``datetime``) when it happened, default: when its batch arrives.
        (A dimension cannot be named ``metric``, ``value``, ``sample``,
        ``unique_id``, ``top`` or ``time``; other names that are not
        identifiers go in as ``**{"a.b": "x"}``.)

        Bad arguments raise ``TypeError`` / ``ValueError`` at once. True
        when the event was buffered, False when it was dropped (the buffer
        holds ``max_buffer`` events, or the tracker is closed; counted in
        :attr:`dropped`)."""
        return self._buf.add(_event(metric, value, sample, unique_id, top, time, dims))

    @property
    def pending(self) -> int:
        """Events buffered, not sent yet."""
        return self._buf.pending()

    @property
    def sent(self) -> int:
        """Events the service accepted."""
        return self._buf.sent

    @property
    def folded(self) -> int:
        """Of them, events the service counted in their metric's ``__other__``
        series (its combinations were full)."""
        return self._buf.folded

    @property
    def dropped(self) -> int:
        """Events refused by ``track()``: the buffer was full, or the tracker closed."""
        return self._buf.dropped

    @property
    def rejected(self) -> int:
        """Events the service refused as invalid (the rest of their batch was sent again)."""
        return self._buf.rejected

    @property
    def failed(self) -> int:
        """Events lost with a ``Track`` call that failed."""
        return self._buf.failed

    @property
    def errors(self) -> int:
        """``Track`` calls that failed."""
        return self._buf.errors

    @property
    def last_error(self) -> BaseException | None:
        """The error of the last ``Track`` call that failed."""
        return self._buf.last_error

    @property
    def closed(self) -> bool:
        return self._buf.closed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._buf.describe()})"


class Tracker(_TrackerBase):
    """Buffers events and sends them with ``Track`` from a daemon thread
    (see :mod:`datalayer._analytics`); made by
    ``client.analytics.tracker(...)``. ``track()`` may be called from any
    thread. Close it (or use ``with``) to send what is left."""

    def __init__(
        self,
        rpcs: _SyncAnalyticsRPCs,
        *,
        flush_every: DurationMs = "1s",
        max_batch: int = 500,
        max_buffer: int = 10_000,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> None:
        self._rpcs = rpcs
        self._wake = threading.Event()
        self._buf = _Buffer(
            flush_every=flush_every,
            max_batch=max_batch,
            max_buffer=max_buffer,
            timeout=timeout,
            metadata=metadata,
            wake=self._wake.set,
        )
        self._send = threading.Lock()
        self._final = True
        self._thread = threading.Thread(target=self._run, name="datalayer-analytics-tracker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = _time.monotonic() + self._buf.interval
        while True:
            woke = self._wake.wait(max(0.0, tick - _time.monotonic()))
            self._wake.clear()
            closing = self._buf.closed
            if closing or not woke or _time.monotonic() >= tick:
                ok = self._flush()
                tick = _time.monotonic() + self._buf.interval
            else:
                self._flush(full_only=True)  # max_batch events are waiting
            if closing:
                self._final = ok
                return

    def _flush(self, *, full_only: bool = False) -> bool:
        """Sends the events waiting now (``full_only``: only whole
        batches, while there are some), one batch at a time."""
        ok = True
        with self._send:
            left = self._buf.pending()
            while (batch := self._buf.take(left, full_only)):
                left -= len(batch)
                ok = self._send_batch(batch) and ok
        return ok

    def _send_batch(self, batch: list[pb.Event]) -> bool:
        try:
            answer = self._rpcs.track(
                pb.TrackRequest(events=batch), timeout=self._buf.timeout, metadata=self._buf.metadata
            )
        except Exception as e:  # never into the caller's path: counted and logged
            again, rejected = self._buf.refused(batch, e)
            results = [self._send_batch(b) for b in again]
            return bool(again) and not rejected and all(results)
        self._buf.accepted(batch, answer)
        return True

    def flush(self) -> bool:
        """Sends the events buffered now, waiting for the answers. True
        when the service accepted every one; failures are counted and
        logged, not raised."""
        return self._flush()

    def close(self, timeout: float | None = None) -> bool:
        """Stops taking events, sends what is left and stops the thread,
        waiting up to ``timeout`` seconds (default: until it is done). True
        when it finished and the service accepted everything left."""
        self._buf.close()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive() and self._final

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncTracker(_TrackerBase):
    """The asyncio twin of :class:`Tracker`: ``track()`` is the same plain
    (not awaited) method, called from the event loop's thread; an asyncio
    task sends the batches; ``await tracker.flush()``, ``await
    tracker.close()``, ``async with``. Made inside a running event loop."""

    def __init__(
        self,
        rpcs: _AsyncAnalyticsRPCs,
        *,
        flush_every: DurationMs = "1s",
        max_batch: int = 500,
        max_buffer: int = 10_000,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> None:
        self._rpcs = rpcs
        self._wake = asyncio.Event()
        self._buf = _Buffer(
            flush_every=flush_every,
            max_batch=max_batch,
            max_buffer=max_buffer,
            timeout=timeout,
            metadata=metadata,
            wake=self._wake.set,
        )
        self._send = asyncio.Lock()
        self._final = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="datalayer-analytics-tracker")

    async def _run(self) -> None:
        tick = _time.monotonic() + self._buf.interval
        while True:
            try:
                woke: bool = await asyncio.wait_for(self._wake.wait(), max(0.0, tick - _time.monotonic()))
            except asyncio.TimeoutError:
                woke = False
            self._wake.clear()
            closing = self._buf.closed
            if closing or not woke or _time.monotonic() >= tick:
                ok = await self._flush()
                tick = _time.monotonic() + self._buf.interval
            else:
                await self._flush(full_only=True)
            if closing:
                self._final = ok
                return

    async def _flush(self, *, full_only: bool = False) -> bool:
        ok = True
        async with self._send:
            left = self._buf.pending()
            while (batch := self._buf.take(left, full_only)):
                left -= len(batch)
                ok = await self._send_batch(batch) and ok
        return ok

    async def _send_batch(self, batch: list[pb.Event]) -> bool:
        try:
            answer = await self._rpcs.track(
                pb.TrackRequest(events=batch), timeout=self._buf.timeout, metadata=self._buf.metadata
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never into the caller's path: counted and logged
            again, rejected = self._buf.refused(batch, e)
            results = [await self._send_batch(b) for b in again]
            return bool(again) and not rejected and all(results)
        self._buf.accepted(batch, answer)
        return True

    async def flush(self) -> bool:
        """As :meth:`Tracker.flush`."""
        return await self._flush()

    async def close(self) -> bool:
        """As :meth:`Tracker.close`: sends what is left and ends the task."""
        self._buf.close()
        self._wake.set()
        if asyncio.current_task() is not self._task:
            await asyncio.shield(self._task)
        return self._task.done() and self._final

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# -------------------------------------------------------------------- mixins


class AnalyticsHelpers:
    """Helpers of ``Client.analytics`` (mixed into
    :class:`datalayer.AnalyticsClient`); see :mod:`datalayer._analytics`.
    The reads' names leave the generated ``query``, ``unique`` and ``top``
    (which take the request messages) as they are."""

    def tracker(
        self: _SyncAnalyticsRPCs,
        *,
        flush_every: DurationMs = "1s",
        max_batch: int = 500,
        max_buffer: int = 10_000,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> Tracker:
        """A :class:`Tracker`: ``track()`` buffers, a daemon thread sends
        at most ``max_batch`` events a ``Track`` (at most the service's
        ``analytics.max_batch``, 1000 by default) every ``flush_every``
        (``"1s"``, a ``timedelta``, int milliseconds) and whenever
        ``max_batch`` are waiting. Past ``max_buffer`` waiting events, new
        ones are dropped (counted). ``timeout``: of each ``Track`` call
        (default: the client's)."""
        return Tracker(
            self,
            flush_every=flush_every,
            max_batch=max_batch,
            max_buffer=max_buffer,
            timeout=timeout,
            metadata=metadata,
        )

    def series(
        self: _SyncAnalyticsRPCs,
        metric: str,
        *,
        since: Since | None = None,
        until: datetime | None = None,
        resolution: str = "",
        where: Mapping[str, str | Iterable[str]] | None = None,
        group_by: Iterable[str] = (),
        metadata: Metadata = (),
    ) -> list[MetricSeries]:
        """``metric``'s series from ``since`` (default: a day before
        ``until``) to ``until`` (default: now), one point per bucket of
        ``resolution`` (``"1m"``, ``"1h"``, ``"1d"``; default: the finest
        that fits), only events whose dimensions match ``where``
        (``{"side": "buy", "exchange": ["kraken", "bybit"]}``), summed by
        the dimensions of ``group_by``. ``s.count`` is a series' total."""
        req = _query(metric, since, until, resolution, where, group_by)
        return _series(self.query(req, metadata=metadata))

    def count_unique(
        self: _SyncAnalyticsRPCs,
        metric: str,
        *,
        since: Since | None = None,
        until: datetime | None = None,
        resolution: str = "",
        metadata: Metadata = (),
    ) -> int:
        """About how many distinct ``unique_id``\\ s ``metric`` saw over the
        range (HyperLogLog: a standard error of 0.81%)."""
        return self.unique(_unique(metric, since, until, resolution), metadata=metadata).count

    def top_values(
        self: _SyncAnalyticsRPCs,
        metric: str,
        dimension: str,
        *,
        k: int = 10,
        since: Since | None = None,
        until: datetime | None = None,
        resolution: str = "",
        metadata: Metadata = (),
    ) -> list[tuple[str, int]]:
        """The ``k`` most counted values of ``metric``'s top label
        ``dimension`` (or, when it has no top list by that name, of that
        dimension) over the range, most first: ``[("kraken", 12), ...]``."""
        answer = self.top(_top(metric, dimension, k, since, until, resolution), metadata=metadata)
        return [(e.value, e.count) for e in answer.entries]


class AsyncAnalyticsHelpers:
    """Helpers of ``AsyncClient.analytics``: as :class:`AnalyticsHelpers`;
    ``tracker()`` makes an :class:`AsyncTracker` (inside a running loop)."""

    def tracker(
        self: _AsyncAnalyticsRPCs,
        *,
        flush_every: DurationMs = "1s",
        max_batch: int = 500,
        max_buffer: int = 10_000,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> AsyncTracker:
        """As :meth:`AnalyticsHelpers.tracker`, sending from an asyncio task."""
        return AsyncTracker(
            self,
            flush_every=flush_every,
            max_batch=max_batch,
            max_buffer=max_buffer,
            timeout=timeout,
            metadata=metadata,
        )

    async def series(
        self: _AsyncAnalyticsRPCs,
        metric: str,
        *,
        since: Since | None = None,
        until: datetime | None = None,
        resolution: str = "",
        where: Mapping[str, str | Iterable[str]] | None = None,
        group_by: Iterable[str] = (),
        metadata: Metadata = (),
    ) -> list[MetricSeries]:
        """As :meth:`AnalyticsHelpers.series`."""
        req = _query(metric, since, until, resolution, where, group_by)
        return _series(await self.query(req, metadata=metadata))

    async def count_unique(
        self: _AsyncAnalyticsRPCs,
        metric: str,
        *,
        since: Since | None = None,
        until: datetime | None = None,
        resolution: str = "",
        metadata: Metadata = (),
    ) -> int:
        """As :meth:`AnalyticsHelpers.count_unique`."""
        return (await self.unique(_unique(metric, since, until, resolution), metadata=metadata)).count

    async def top_values(
        self: _AsyncAnalyticsRPCs,
        metric: str,
        dimension: str,
        *,
        k: int = 10,
        since: Since | None = None,
        until: datetime | None = None,
        resolution: str = "",
        metadata: Metadata = (),
    ) -> list[tuple[str, int]]:
        """As :meth:`AnalyticsHelpers.top_values`."""
        answer = await self.top(_top(metric, dimension, k, since, until, resolution), metadata=metadata)
        return [(e.value, e.count) for e in answer.entries]
