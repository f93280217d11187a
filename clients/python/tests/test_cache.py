"""CacheService through the Python client, against the real binary."""

from __future__ import annotations

import time

import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import AsyncClient, Client, InvalidArgument, Unavailable
from datalayer.cache.v1 import cache_pb2 as c

from .conftest import Stack, require, unique

SERVICE = "datalayer.cache.v1.CacheService"
MINUTE = Duration(seconds=60)


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


def test_set_get_delete(client: Client) -> None:
    key = unique("py:cache")
    assert not client.cache.get(c.GetRequest(key=key)).found
    stored = client.cache.set(c.SetRequest(key=key, value=b"v1", content_type="text/plain", ttl=MINUTE, tags=["t"]))
    assert stored.stored and stored.outcome == c.SET_OUTCOME_STORED and stored.version > 0
    got = client.cache.get(c.GetRequest(key=key))
    assert got.found and got.entry.value == b"v1" and got.entry.content_type == "text/plain"
    assert got.entry.version == stored.version and list(got.entry.tags) == ["t"] and not got.entry.stale
    stale = client.cache.set(c.SetRequest(key=key, value=b"v2", ttl=MINUTE, expected_version=stored.version + 1000))
    assert not stale.stored and stale.outcome == c.SET_OUTCOME_VERSION_MISMATCH
    assert client.cache.delete(c.DeleteRequest(key=key)).deleted
    assert not client.cache.delete(c.DeleteRequest(key=key)).deleted
    assert not client.cache.get(c.GetRequest(key=key)).found


def test_set_many_get_many_in_order(client: Client) -> None:
    a, b, missing = unique("py:many:a"), unique("py:many:b"), unique("py:many:none")
    results = client.cache.set_many(
        c.SetManyRequest(entries=[c.SetRequest(key=a, value=b"A", ttl=MINUTE), c.SetRequest(key=b, value=b"B", ttl=MINUTE)])
    ).results
    assert [r.stored for r in results] == [True, True]
    entries = client.cache.get_many(c.GetManyRequest(keys=[b, missing, a])).entries
    assert [(e.found, e.entry.value) for e in entries] == [(True, b"B"), (False, b""), (True, b"A")]


def test_invalidate_tags(client: Client) -> None:
    tag = unique("py:tag")
    keys = [unique("py:tagged") for _ in range(3)]
    for k in keys:
        client.cache.set(c.SetRequest(key=k, value=b"x", ttl=MINUTE, tags=[tag]))
    assert client.cache.invalidate_tags(c.InvalidateTagsRequest(tags=[tag])).invalidated == 3
    assert not any(e.found for e in client.cache.get_many(c.GetManyRequest(keys=keys)).entries)


def test_get_or_lease_then_set_with_the_lease(client: Client) -> None:
    key = unique("py:lease")
    first = client.cache.get_or_lease(c.GetOrLeaseRequest(key=key, lease_ttl=Duration(seconds=5)))
    assert first.status == c.LEASE_STATUS_LEASED and first.lease_token
    second = client.cache.get_or_lease(c.GetOrLeaseRequest(key=key))
    assert second.status == c.LEASE_STATUS_WAIT and second.HasField("retry_after")
    stored = client.cache.set(c.SetRequest(key=key, value=b"computed", ttl=MINUTE, lease_token=first.lease_token))
    assert stored.stored, stored
    hit = client.cache.get_or_lease(c.GetOrLeaseRequest(key=key))
    assert hit.status == c.LEASE_STATUS_HIT and hit.entry.value == b"computed"


def test_bad_key_is_a_field_violation(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.cache.get(c.GetRequest(key=""))
    assert [v.field for v in info.value.field_violations] == ["key"]


async def test_async_cache_round_trip(async_client: AsyncClient) -> None:
    key = unique("py:acache")
    assert (await async_client.cache.set(c.SetRequest(key=key, value=b"z", ttl=MINUTE))).stored
    got = await async_client.cache.get(c.GetRequest(key=key))
    assert got.found and got.entry.value == b"z"


def test_store_down_read_is_retried_after_retry_info(stack: Stack, make_client) -> None:  # type: ignore[no-untyped-def]
    """Redis paused: a Get (a read, safe to repeat) that the store does not
    answer within redis.command_timeout (250 ms) is UNAVAILABLE with a
    RetryInfo of 250 ms; the client waits at least that long and repeats it,
    until the next wait would pass the 1 s deadline."""
    client = make_client(retries=3)
    key = unique("py:cache:down")
    client.cache.get(c.GetRequest(key=key))  # connected
    stack.redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.cache.get(c.GetRequest(key=key), timeout=1.0)
        elapsed = time.monotonic() - started
        # Two attempts of 250 ms with at least 250 ms between them; a third
        # would start past the deadline.
        assert 0.7 <= elapsed < 1.1, f"{elapsed:.3f}s"
        assert info.value.retry_after == pytest.approx(0.25)
    finally:
        stack.redis.resume()
    stack.wait_serving()
