"""`Client` and `AsyncClient`: one channel, one typed attribute per service."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Sequence, Union

import grpc
import grpc.aio

from datalayer._aio_channel import LazyChannel
from datalayer._analytics import AnalyticsHelpers, AsyncAnalyticsHelpers
from datalayer._cache import AsyncCacheHelpers, CacheHelpers
from datalayer._enqueuer import AsyncQueueAdders, QueueAdders
from datalayer._invoke import AsyncInvoker, Metadata, RetryPolicy, SyncInvoker
from datalayer._ratelimit import AsyncRateLimiters, RateLimiters
from datalayer._services import (
    AnalyticsService,
    AsyncAnalyticsService,
    AsyncCacheService,
    AsyncQueueService,
    AsyncRateLimitService,
    AsyncServices,
    AsyncSessionService,
    CacheService,
    QueueService,
    RateLimitService,
    SessionService,
    SyncServices,
)
from datalayer._sessions import AsyncSessionHelpers, SessionHelpers
from datalayer._workers import AsyncQueueWorkers, QueueWorkers

__all__ = [
    "AnalyticsClient",
    "AsyncAnalyticsClient",
    "AsyncCacheClient",
    "AsyncClient",
    "AsyncQueueClient",
    "AsyncRateLimitClient",
    "AsyncSessionClient",
    "CacheClient",
    "Client",
    "DEFAULT_TIMEOUT",
    "QueueClient",
    "RateLimitClient",
    "SessionClient",
]

#: Default deadline of a call, in seconds, covering its retries.
DEFAULT_TIMEOUT = 5.0

ChannelOptions = Sequence[tuple[str, Any]]

#: A sync gRPC client interceptor of any of the four call kinds.
Interceptor = Union[
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
]


class QueueClient(QueueService, QueueWorkers, QueueAdders):
    """``Client.queue``: QueueService's RPCs (``enqueue``, ``ack``, ...),
    the helpers of :class:`datalayer._workers.QueueWorkers`: ``consume``
    (an iterator of messages to settle) and ``work`` (a handler pool), and
    ``add`` (:mod:`datalayer._enqueuer`: one message, batched with the
    others added meanwhile)."""


class AsyncQueueClient(AsyncQueueService, AsyncQueueWorkers, AsyncQueueAdders):
    """``AsyncClient.queue``: as :class:`QueueClient`, on asyncio."""


class RateLimitClient(RateLimitService, RateLimiters):
    """``Client.ratelimit``: RateLimitService's RPCs (``check``,
    ``check_batch``, ``report``, ``reset``) and the limiter factories of
    :class:`datalayer._ratelimit.RateLimiters`: ``sliding_window``,
    ``fixed_window``, ``token_bucket``, ``gcra`` and ``policy``, each making
    a :class:`datalayer.RateLimiter` (``limit(id)``, ``block_until_ready``,
    ``remaining``, ``report``, ``reset``), and ``limit_all(id, limiters)``
    (every limiter spends, or none)."""


class AsyncRateLimitClient(AsyncRateLimitService, AsyncRateLimiters):
    """``AsyncClient.ratelimit``: as :class:`RateLimitClient`, on asyncio."""


class CacheClient(CacheService, CacheHelpers):
    """``Client.cache``: CacheService's RPCs (``get``, ``set``,
    ``get_or_lease``, ...) and the helpers of
    :class:`datalayer._cache.CacheHelpers`: ``get_or_set`` (compute once,
    on ``GetOrLease``), ``set_json`` and ``get_json``."""


class AsyncCacheClient(AsyncCacheService, AsyncCacheHelpers):
    """``AsyncClient.cache``: as :class:`CacheClient`, on asyncio."""


class SessionClient(SessionService, SessionHelpers):
    """``Client.sessions``: SessionService's RPCs (``create``, ``get``,
    ...) and :meth:`datalayer._sessions.SessionHelpers.validate` (the
    session, or ``None``)."""


class AsyncSessionClient(AsyncSessionService, AsyncSessionHelpers):
    """``AsyncClient.sessions``: as :class:`SessionClient`, on asyncio."""


class AnalyticsClient(AnalyticsService, AnalyticsHelpers):
    """``Client.analytics``: AnalyticsService's RPCs (``track``, ``query``,
    ``unique``, ``top``, ``list_metrics``) and the helpers of
    :class:`datalayer._analytics.AnalyticsHelpers`: ``tracker`` (a buffered
    :class:`datalayer.Tracker` whose ``track()`` never waits for the
    network), ``series``, ``count_unique`` and ``top_values`` (reads over a
    ``since`` / ``until`` range)."""


class AsyncAnalyticsClient(AsyncAnalyticsService, AsyncAnalyticsHelpers):
    """``AsyncClient.analytics``: as :class:`AnalyticsClient`, on asyncio
    (``tracker()`` makes an :class:`datalayer.AsyncTracker`)."""


def _metadata(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _credentials(
    tls: bool,
    root_certificates: bytes | None,
    client_cert: bytes | None,
    client_key: bytes | None,
) -> grpc.ChannelCredentials | None:
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together (the PEM certificate chain and its private key)")
    if tls or root_certificates is not None or client_cert is not None:
        return grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=client_key,
            certificate_chain=client_cert,
        )
    return None


def _target(target: str, tls: bool, root_certificates: bytes | None, client_cert: bytes | None) -> tuple[str, bool]:
    """``https://host:port`` means TLS, ``http://host:port`` plaintext; any
    other gRPC target (``host:port``, ``dns:///...``) is taken as it is."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme not in ("http", "https"):
        return target, tls
    host = rest.rstrip("/")
    if not host or "/" in host:
        raise ValueError(f"{target!r}: expected {scheme}://host:port")
    if scheme == "https":
        return host, True
    if tls or root_certificates is not None or client_cert is not None:
        raise ValueError(f"{target!r} is plaintext (http://) but TLS options were given; use https://")
    return host, False


class Client(SyncServices):
    """A blocking client of the datalayer service.

    Args:
        target: ``host:port`` (any gRPC target, e.g. ``dns:///datalayer:50051``),
            or ``https://host:port`` (TLS) / ``http://host:port`` (plaintext).
        tls: use TLS (implied by ``https://``, ``root_certificates`` and
            ``client_cert``); the system's roots verify the server by default.
        root_certificates: PEM CA certificate(s) to verify the server with,
            instead of the system's roots (e.g. ``Path("ca.pem").read_bytes()``).
        client_cert: PEM certificate chain shown to the server (mTLS), with
            ``client_key``, its PEM private key; both or neither.
        client_key: see ``client_cert``.
        token: an API key (or other bearer token), sent as
            ``authorization: Bearer <token>`` on every call.
        timeout: default deadline of a unary call in seconds, covering its retries
            (``None``: no client deadline; the service then applies its own
            ``server.default_timeout``). Each method takes ``timeout=`` too.
        retries: how many times an UNAVAILABLE that a repeat cannot apply
            twice is retried: one carrying ``google.rpc.RetryInfo``, or one
            that never reached the service (no connection); exponential
            backoff with jitter, never sooner than the ``RetryInfo`` delay.
            An UNAVAILABLE without ``RetryInfo`` (the call may have been
            applied) is raised at once. See :func:`datalayer.retryable`.
        retry_policy: the full backoff settings; overrides ``retries``.
        options: extra gRPC channel options.
        interceptors: gRPC client interceptors wrapped around the channel
            (``grpc.aio`` interceptors for :class:`AsyncClient`).

    Services: ``client.ratelimit``, ``client.cache``, ``client.sessions``,
    ``client.flags`` (one attribute per service of ``proto/``), each with one
    typed method per RPC taking the request message, e.g.
    ``client.ratelimit.check(CheckRequest(...))``. A server-streaming RPC
    (``client.flags.watch``) returns a :class:`datalayer.ServerStream`, an
    iterator of its answers; the default ``timeout`` does not apply to it.
    Errors raise :class:`datalayer.errors.DatalayerError` subclasses.

    ``client.queue`` also has ``consume(...)`` and ``work(...)``, consumers
    and workers on the ``Consume`` stream (see :class:`QueueClient`).
    ``client.ratelimit`` makes limiters (``sliding_window(10, "10s")``, ...,
    ``policy("auth")``; see :class:`RateLimitClient`), ``client.cache`` has
    ``get_or_set``, ``set_json`` and ``get_json`` (:class:`CacheClient`),
    ``client.sessions`` has ``validate`` (:class:`SessionClient`),
    ``client.analytics`` has ``tracker``, ``series``, ``count_unique`` and
    ``top_values`` (:class:`AnalyticsClient`).
    """

    analytics: AnalyticsClient
    queue: QueueClient
    ratelimit: RateLimitClient
    cache: CacheClient
    sessions: SessionClient

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_policy: RetryPolicy | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        target, tls = _target(target, tls, root_certificates, client_cert)
        self.target = target
        creds = _credentials(tls, root_certificates, client_cert, client_key)
        channel = (
            grpc.secure_channel(target, creds, options=list(options))
            if creds is not None
            else grpc.insecure_channel(target, options=list(options))
        )
        self.channel: grpc.Channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self._invoker = SyncInvoker(
            timeout=timeout,
            metadata=_metadata(token),
            policy=retry_policy or RetryPolicy(retries=retries),
            plaintext=creds is None,
        )
        self._bind_services(self.channel, self._invoker)
        self.analytics = AnalyticsClient(self.channel, self._invoker)
        self.queue = QueueClient(self.channel, self._invoker)
        self.ratelimit = RateLimitClient(self.channel, self._invoker)
        self.cache = CacheClient(self.channel, self._invoker)
        self.sessions = SessionClient(self.channel, self._invoker)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(AsyncServices):
    """The asyncio twin of :class:`Client` (same arguments), on ``grpc.aio``;
    methods are coroutines.

    It may be created outside a running event loop (at import time, before
    ``asyncio.run``): its channel is made in the loop of its first call
    (see :mod:`datalayer._aio_channel`). One client serves one event loop
    at a time; after that loop has closed, a call from a new loop makes a
    new channel there."""

    analytics: AsyncAnalyticsClient
    queue: AsyncQueueClient
    ratelimit: AsyncRateLimitClient
    cache: AsyncCacheClient
    sessions: AsyncSessionClient

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_policy: RetryPolicy | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        target, tls = _target(target, tls, root_certificates, client_cert)
        self.target = target
        creds = _credentials(tls, root_certificates, client_cert, client_key)

        def make_channel() -> grpc.aio.Channel:
            if creds is not None:
                return grpc.aio.secure_channel(target, creds, options=list(options), interceptors=list(interceptors))
            return grpc.aio.insecure_channel(target, options=list(options), interceptors=list(interceptors))

        # Made in the running event loop: now if one runs, else at the first call.
        self.channel: grpc.aio.Channel = LazyChannel(make_channel)
        self._invoker = AsyncInvoker(
            timeout=timeout,
            metadata=_metadata(token),
            policy=retry_policy or RetryPolicy(retries=retries),
            plaintext=creds is None,
        )
        self._bind_services(self.channel, self._invoker)
        self.analytics = AsyncAnalyticsClient(self.channel, self._invoker)
        self.queue = AsyncQueueClient(self.channel, self._invoker)
        self.ratelimit = AsyncRateLimitClient(self.channel, self._invoker)
        self.cache = AsyncCacheClient(self.channel, self._invoker)
        self.sessions = AsyncSessionClient(self.channel, self._invoker)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
