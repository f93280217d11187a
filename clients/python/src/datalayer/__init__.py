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
"""

from datalayer._client import DEFAULT_TIMEOUT, AsyncClient, Client
from datalayer._invoke import AsyncServerStream, Metadata, RetryPolicy, ServerStream
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
from datalayer._services import SERVICES
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
    "SERVICES",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncLeadership",
    "AsyncLease",
    "AsyncLock",
    "AsyncServerStream",
    "Cancelled",
    "Client",
    "DatalayerError",
    "DeadlineExceeded",
    "DurationLike",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "Leadership",
    "Lease",
    "Lock",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "Metadata",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerStream",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "parse_duration",
]
