"""JSON values and compute-once reads, on ``CacheService``.

Reached as ``client.cache.get_or_set(...)``, ``client.cache.set_json(...)``
and ``client.cache.get_json(...)`` (``client.cache`` is a
:class:`datalayer.CacheClient`, the generated wrapper plus
:class:`CacheHelpers`)::

    report = client.cache.get_or_set("report:today", build_report, "5m", stale_ttl="1h", tags=["reports"])
    client.cache.set_json("user:42", {"name": "Ada"}, "10m")
    client.cache.get_json("user:42")        # {'name': 'Ada'}; None when missing

Values are stored as compact JSON (``content_type`` ``application/json``);
anything ``json.dumps`` takes, ``NaN`` and infinities excepted (they are not
JSON). What comes back is what ``json.loads`` makes of it: a tuple comes
back as a list, for the caller that computed the value as for every other.

``get_or_set`` rides on ``GetOrLease``, so that of concurrent callers
missing the same key (threads, tasks, processes) exactly one computes:

- a fresh value (``HIT``) is returned;
- the caller given the lease (``LEASED``) calls ``compute()``, stores the
  result with the lease token, and returns it. The store refuses that write
  (and the value is returned unstored) if a ``Delete``, an
  ``InvalidateTags`` of one of the entry's tags or any other write came in
  meanwhile, so a value computed from old data never lands late;
- while someone else holds the lease, a value past its ``ttl`` but within
  its ``stale_ttl`` is returned at once (``STALE``: stale-while-revalidate);
- with nothing to serve (``WAIT``) the caller polls, as the service says
  (at most every 100 ms), until the value is there or a lease is free, for
  at most ``wait`` (default: the lease's lifetime). Past it, it calls
  ``compute()`` itself and returns the value without storing it.

If ``compute()`` (or storing its value) raises on a miss, the lease is given
back (a ``Delete`` of the key, which held nothing) so that a waiting caller
takes over at once, and the exception propagates. On a stale hit the lease
is left to expire (the stale value keeps being served meanwhile).

``ttl`` is required (``None``: the service's ``cache.default_ttl``, if it has
one; otherwise the write is refused with ``InvalidArgument``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any, Awaitable, Callable, Iterable, Protocol, TypeVar, Union, cast, overload

from datalayer._durations import DurationMs, _duration_pb, _pb_seconds, _seconds
from datalayer._invoke import Metadata
from datalayer.cache.v1 import cache_pb2
from datalayer.errors import DatalayerError

__all__ = ["AsyncCacheHelpers", "CacheHelpers", "JSON_CONTENT_TYPE"]

_T = TypeVar("_T")

#: The content type of the values :class:`CacheHelpers` writes.
JSON_CONTENT_TYPE = "application/json"
#: How long a waiter is told to poll when the service gives no hint.
_MIN_POLL = 0.01
#: The service's default lease lifetime (``cache.default_lease_ttl``), the
#: default ``wait`` when no ``lease_ttl`` is given.
_DEFAULT_WAIT = 10.0


def _encode(value: object) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise type(e)(f"the cache helpers store JSON: {e}") from e


def _decode(key: str, entry: cache_pb2.CacheEntry) -> Any:
    try:
        return json.loads(entry.value)
    except ValueError as e:
        kind = f" ({entry.content_type})" if entry.content_type else ""
        raise ValueError(f"cache entry {key!r}{kind} is not JSON: {e}") from e


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a cache key must be a string, got {key!r}")
    if not key:
        raise ValueError("a cache key must not be empty")
    return key


def _tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, not one string ({tags!r}); use [{tags!r}]")
    out = list(tags)
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"tags must be strings, got {t!r}")
    return out


class _Write:
    """The validated options of a write."""

    def __init__(
        self, ttl: DurationMs | None, stale_ttl: DurationMs | None, tags: Iterable[str], metadata: Metadata
    ) -> None:
        self.ttl = None if ttl is None else _duration_pb(ttl, "ttl", positive=True)
        self.stale_ttl = None if stale_ttl is None else _duration_pb(stale_ttl, "stale_ttl")
        self.tags = _tags(tags)
        self.metadata = metadata

    def request(self, key: str, value: bytes, lease_token: str = "") -> cache_pb2.SetRequest:
        req = cache_pb2.SetRequest(
            key=key, value=value, content_type=JSON_CONTENT_TYPE, tags=self.tags, lease_token=lease_token
        )
        if self.ttl is not None:
            req.ttl.CopyFrom(self.ttl)
        if self.stale_ttl is not None:
            req.stale_ttl.CopyFrom(self.stale_ttl)
        return req


class _Lease:
    """The validated options of a ``get_or_set``."""

    def __init__(self, key: str, lease_ttl: DurationMs | None, wait: DurationMs | None) -> None:
        self.request = cache_pb2.GetOrLeaseRequest(key=_key(key))
        if lease_ttl is not None:
            self.request.lease_ttl.CopyFrom(_duration_pb(lease_ttl, "lease_ttl", positive=True))
        if wait is not None:
            self.wait = _seconds(wait, "wait")
        elif lease_ttl is not None:
            self.wait = _seconds(lease_ttl, "lease_ttl")
        else:
            self.wait = _DEFAULT_WAIT
        self.deadline = time.monotonic() + self.wait

    def poll(self, answer: cache_pb2.GetOrLeaseResponse) -> float | None:
        """How long to sleep before asking again, or None once ``wait`` is up."""
        delay = _pb_seconds(answer.retry_after) if answer.HasField("retry_after") else 0.0
        delay = max(delay, _MIN_POLL)
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        return min(delay, left)


class _SyncCacheRPCs(Protocol):
    """What :class:`CacheHelpers` needs of ``client.cache``."""

    def get(
        self, request: cache_pb2.GetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.GetResponse: ...

    def set(
        self, request: cache_pb2.SetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.SetResponse: ...

    def delete(
        self, request: cache_pb2.DeleteRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.DeleteResponse: ...

    def get_or_lease(
        self, request: cache_pb2.GetOrLeaseRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.GetOrLeaseResponse: ...


class _AsyncCacheRPCs(Protocol):
    """What :class:`AsyncCacheHelpers` needs of ``client.cache``."""

    async def get(
        self, request: cache_pb2.GetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.GetResponse: ...

    async def set(
        self, request: cache_pb2.SetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.SetResponse: ...

    async def delete(
        self, request: cache_pb2.DeleteRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.DeleteResponse: ...

    async def get_or_lease(
        self, request: cache_pb2.GetOrLeaseRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> cache_pb2.GetOrLeaseResponse: ...


class CacheHelpers:
    """JSON and compute-once helpers of ``Client.cache`` (mixed into
    :class:`datalayer.CacheClient`); see :mod:`datalayer._cache`.
    Durations are ``"10s"``, ``"1 m"``, a ``timedelta`` or int
    milliseconds."""

    def get_json(self: _SyncCacheRPCs, key: str, *, metadata: Metadata = ()) -> Any:
        """The JSON value of ``key``, fresh or stale; ``None`` when there is
        none (and when the value stored is JSON ``null``). Raises
        ``ValueError`` if the entry is not JSON."""
        answer = self.get(cache_pb2.GetRequest(key=_key(key)), metadata=metadata)
        return _decode(key, answer.entry) if answer.found else None

    def set_json(
        self: _SyncCacheRPCs,
        key: str,
        value: object,
        ttl: DurationMs | None,
        *,
        stale_ttl: DurationMs | None = None,
        tags: Iterable[str] = (),
        metadata: Metadata = (),
    ) -> int:
        """Stores ``value`` as JSON under ``key`` for ``ttl`` (``None``: the
        service's ``cache.default_ttl``), then for
        ``stale_ttl`` more as a stale value; ``tags`` for
        ``invalidate_tags``. Returns the entry's new version."""
        write = _Write(ttl, stale_ttl, tags, metadata)
        data = _encode(value)
        return self.set(write.request(_key(key), data), metadata=metadata).version

    def get_or_set(
        self: _SyncCacheRPCs,
        key: str,
        compute: Callable[[], _T],
        ttl: DurationMs | None,
        *,
        stale_ttl: DurationMs | None = None,
        tags: Iterable[str] = (),
        lease_ttl: DurationMs | None = None,
        wait: DurationMs | None = None,
        metadata: Metadata = (),
    ) -> _T:
        """The JSON value of ``key``, computed by ``compute()`` and stored
        (for ``ttl``, then ``stale_ttl`` as a stale value, with ``tags``) by
        exactly one of the callers that miss it at the same time; see
        :mod:`datalayer._cache`.

        ``lease_ttl``: how long the computing caller holds the lease
        (default: the service's ``cache.default_lease_ttl``, 10 s); make it
        longer than ``compute()`` takes. ``wait``: how long a caller waits
        for someone else's value before computing it itself (default:
        ``lease_ttl``, or 10 s)."""
        write = _Write(ttl, stale_ttl, tags, metadata)
        lease = _Lease(key, lease_ttl, wait)
        while True:
            answer = self.get_or_lease(lease.request, metadata=metadata)
            if answer.status in (cache_pb2.LEASE_STATUS_HIT, cache_pb2.LEASE_STATUS_STALE):
                return cast(_T, _decode(key, answer.entry))
            if answer.status == cache_pb2.LEASE_STATUS_LEASED:
                try:
                    data = _encode(compute())
                    self.set(write.request(key, data, answer.lease_token), metadata=metadata)
                except Exception:
                    if not answer.HasField("entry"):
                        _give_back(self, key, metadata)
                    raise
                return cast(_T, json.loads(data))
            delay = lease.poll(answer)
            if delay is None:
                return cast(_T, json.loads(_encode(compute())))
            time.sleep(delay)


def _give_back(rpcs: _SyncCacheRPCs, key: str, metadata: Metadata) -> None:
    try:
        rpcs.delete(cache_pb2.DeleteRequest(key=key), metadata=metadata)
    except DatalayerError:
        pass  # the lease then expires on its own


async def _async_give_back(rpcs: _AsyncCacheRPCs, key: str, metadata: Metadata) -> None:
    try:
        await rpcs.delete(cache_pb2.DeleteRequest(key=key), metadata=metadata)
    except DatalayerError:
        pass


async def _call(compute: Callable[[], Union[_T, Awaitable[_T]]]) -> _T:
    value = compute()
    if inspect.isawaitable(value):
        return await value
    return value


class AsyncCacheHelpers:
    """The asyncio twin of :class:`CacheHelpers` (``AsyncClient.cache``).
    ``get_or_set``'s ``compute`` may be a coroutine function or a plain
    one."""

    async def get_json(self: _AsyncCacheRPCs, key: str, *, metadata: Metadata = ()) -> Any:
        """As :meth:`CacheHelpers.get_json`."""
        answer = await self.get(cache_pb2.GetRequest(key=_key(key)), metadata=metadata)
        return _decode(key, answer.entry) if answer.found else None

    async def set_json(
        self: _AsyncCacheRPCs,
        key: str,
        value: object,
        ttl: DurationMs | None,
        *,
        stale_ttl: DurationMs | None = None,
        tags: Iterable[str] = (),
        metadata: Metadata = (),
    ) -> int:
        """As :meth:`CacheHelpers.set_json`."""
        write = _Write(ttl, stale_ttl, tags, metadata)
        data = _encode(value)
        return (await self.set(write.request(_key(key), data), metadata=metadata)).version

    @overload
    async def get_or_set(
        self: _AsyncCacheRPCs,
        key: str,
        compute: Callable[[], Awaitable[_T]],
        ttl: DurationMs | None,
        *,
        stale_ttl: DurationMs | None = None,
        tags: Iterable[str] = (),
        lease_ttl: DurationMs | None = None,
        wait: DurationMs | None = None,
        metadata: Metadata = (),
    ) -> _T:
        ...

    @overload
    async def get_or_set(
        self: _AsyncCacheRPCs,
        key: str,
        compute: Callable[[], _T],
        ttl: DurationMs | None,
        *,
        stale_ttl: DurationMs | None = None,
        tags: Iterable[str] = (),
        lease_ttl: DurationMs | None = None,
        wait: DurationMs | None = None,
        metadata: Metadata = (),
    ) -> _T:
        ...

    async def get_or_set(
        self: _AsyncCacheRPCs,
        key: str,
        compute: Callable[[], Union[Awaitable[_T], _T]],
        ttl: DurationMs | None,
        *,
        stale_ttl: DurationMs | None = None,
        tags: Iterable[str] = (),
        lease_ttl: DurationMs | None = None,
        wait: DurationMs | None = None,
        metadata: Metadata = (),
    ) -> _T:
        """As :meth:`CacheHelpers.get_or_set`; ``compute`` may be ``async``."""
        write = _Write(ttl, stale_ttl, tags, metadata)
        lease = _Lease(key, lease_ttl, wait)
        while True:
            answer = await self.get_or_lease(lease.request, metadata=metadata)
            if answer.status in (cache_pb2.LEASE_STATUS_HIT, cache_pb2.LEASE_STATUS_STALE):
                return cast(_T, _decode(key, answer.entry))
            if answer.status == cache_pb2.LEASE_STATUS_LEASED:
                try:
                    data = _encode(await _call(compute))
                    await self.set(write.request(key, data, answer.lease_token), metadata=metadata)
                except Exception:
                    if not answer.HasField("entry"):
                        await _async_give_back(self, key, metadata)
                    raise
                return cast(_T, json.loads(data))
            delay = lease.poll(answer)
            if delay is None:
                return cast(_T, json.loads(_encode(await _call(compute))))
            await asyncio.sleep(delay)
