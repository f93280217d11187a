"""Python client of the datalayer gRPC service.

    from datalayer import Client
    from datalayer.ratelimit.v1 import ratelimit_pb2

    with Client("localhost:50051") as client:
        answer = client.ratelimit.check(ratelimit_pb2.CheckRequest(key="user:42", policy="auth"))

``Client`` blocks, ``AsyncClient`` is its asyncio twin. Server-streaming
RPCs (``client.flags.watch``) return a ``ServerStream`` (an iterator) or,
on ``AsyncClient``, an ``AsyncServerStream`` (an async iterator). The generated
messages and stubs live in one subpackage per service package
(``datalayer.ratelimit.v1.ratelimit_pb2``, ``.ratelimit_pb2_grpc``,
``datalayer.cache.v1.cache_pb2``, ``datalayer.session.v1.session_pb2``, ...)
and can be used directly.

Locks with fencing tokens and leader election ride on ``client.state``::

    with client.state.lock("trader-leader", ttl="10s", wait="5s") as lease:
        ...  # lease.fencing_token, lease.lost, lease.check()

(see :mod:`datalayer._locks`: ``Lease``, ``Leadership``, ``LockLost``, ...).

Workers and consumers ride on ``client.queue`` (the ``Consume`` stream)::

    client.queue.work("analyses", handle, concurrency=10, stop_event=stop).wait()
    with client.queue.consume("analyses", concurrency=10) as messages:
        for msg in messages:
            with msg:          # acks, or nacks on an exception
                handle(msg)

(see :mod:`datalayer._workers`).

Upstash-style helpers (durations: ``"10s"``, ``"1 m"``, ``"500ms"``, a
``timedelta`` or int milliseconds; see :func:`parse_ms`)::

    limiter = client.ratelimit.sliding_window(10, "10s")   # or fixed_window, token_bucket, gcra, policy("auth")
    r = limiter.limit("user:42")       # LimitResult(success, limit, remaining, reset_at, retry_after, reason, ...)
    limiter.report("user:42", 25)      # usage known afterwards (LLM tokens): ReportResult(..., overdrawn)
    r = limiter.reserve("user:42", 4000)  # an estimate; then limiter.settle("user:42", r.reservation, used)
    client.ratelimit.limit_all("user:42", [per_minute, per_day])   # LimitAllResult(success, results): all or none
    report = client.cache.get_or_set("report", build, "5m", stale_ttl="1h")   # computed once across callers
    session = client.sessions.validate(token)    # the Session, or None

(see :mod:`datalayer._ratelimit`, :mod:`datalayer._cache`,
:mod:`datalayer._sessions`).

Analytics events are buffered by a tracker whose ``track()`` never waits
for the network, and sent in batches by a background thread::

    with client.analytics.tracker(flush_every="1s", max_batch=500) as tracker:
        tracker.track("signals", exchange="kraken")      # tracker.dropped, .failed, .errors
    client.analytics.series("signals", since="1h", group_by=["exchange"])   # [MetricSeries(...)]

(see :mod:`datalayer._analytics`). A push queue's deliveries are checked with
:func:`verify_signature` (see :mod:`datalayer._signature`).
"""

import sys

if sys.version_info < (3, 10):  # pragma: no cover - pip refuses these (requires-python)
    raise ImportError(
        "datalayer-client needs Python 3.10 or newer; this is Python "
        f"{sys.version_info.major}.{sys.version_info.minor} ({sys.executable})"
    )

from datalayer._analytics import AsyncTracker, MetricPoint, MetricSeries, Tracker
from datalayer._cache import JSON_CONTENT_TYPE
from datalayer._client import (
    DEFAULT_TIMEOUT,
    AnalyticsClient,
    AsyncAnalyticsClient,
    AsyncCacheClient,
    AsyncClient,
    AsyncQueueClient,
    AsyncRateLimitClient,
    AsyncSessionClient,
    CacheClient,
    Client,
    QueueClient,
    RateLimitClient,
    SessionClient,
)
from datalayer._durations import DurationMs, parse_ms
from datalayer._invoke import AsyncServerStream, Metadata, RetryPolicy, ServerStream, retryable
from datalayer._locks import (
    AsyncLeadership,
    AsyncLease,
    AsyncLock,
    DurationLike,
    Leadership,
    Lease,
    Lock,
    LockError,
    LockLost,
    LockNotAcquired,
    parse_duration,
)
from datalayer._ratelimit import (
    AsyncRateLimiter,
    LimitAllResult,
    LimitReason,
    LimitResult,
    RateLimiter,
    ReportResult,
    SettleOutcome,
    SettleResult,
)
from datalayer._services import SERVICES
from datalayer._signature import SIGNATURE_HEADER, SignatureError, parse_signing_keys, verify_signature
from datalayer._workers import (
    AsyncConsumer,
    AsyncDelivery,
    AsyncWorker,
    Consumer,
    Delivery,
    Worker,
    WorkerStats,
)
from datalayer.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DatalayerError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "JSON_CONTENT_TYPE",
    "SERVICES",
    "SIGNATURE_HEADER",
    "Aborted",
    "AlreadyExists",
    "AnalyticsClient",
    "AsyncAnalyticsClient",
    "AsyncCacheClient",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncDelivery",
    "AsyncLeadership",
    "AsyncLease",
    "AsyncLock",
    "AsyncQueueClient",
    "AsyncRateLimitClient",
    "AsyncRateLimiter",
    "AsyncServerStream",
    "AsyncSessionClient",
    "AsyncTracker",
    "AsyncWorker",
    "CacheClient",
    "Cancelled",
    "Client",
    "Consumer",
    "DatalayerError",
    "DeadlineExceeded",
    "Delivery",
    "DurationLike",
    "DurationMs",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "Leadership",
    "Lease",
    "LimitAllResult",
    "LimitReason",
    "LimitResult",
    "Lock",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "Metadata",
    "MetricPoint",
    "MetricSeries",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "QueueClient",
    "RateLimitClient",
    "RateLimiter",
    "ReportResult",
    "SettleOutcome",
    "SettleResult",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerStream",
    "SessionClient",
    "SignatureError",
    "Tracker",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Worker",
    "WorkerStats",
    "parse_duration",
    "parse_ms",
    "parse_signing_keys",
    "retryable",
    "verify_signature",
]
