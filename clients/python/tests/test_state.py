"""StateService through the Python client, against the real binary on Redis
and on the in-process memory store: every RPC (documents with CAS, merge
patch, JSON pointer reads, keyset pages, the Watch stream, bounded counters,
fenced locks), then the lock helpers (`client.state.lock`, `.leader`),
including a holder killed with SIGKILL in a child process."""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import (
    AsyncClient,
    AsyncLease,
    Client,
    FailedPrecondition,
    InvalidArgument,
    Lease,
    LockLost,
    LockNotAcquired,
    NotFound,
    ServerStream,
    parse_duration,
)
from datalayer._locks import StateLocks
from datalayer.state.v1 import state_pb2 as st

from .conftest import Stack, require, unique

SERVICE = "datalayer.state.v1.StateService"
JSON = "application/json"


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


@pytest.fixture(params=["redis", "memory"])
def state_client(request: pytest.FixtureRequest) -> Client:
    """A client of the binary on Redis, then of the one on the memory store."""
    name = "client" if request.param == "redis" else "memory_client"
    c: Client = request.getfixturevalue(name)
    return c


def collection() -> str:
    return unique("py.state").replace(":", "-")


def lock_name() -> str:
    return unique("py-lock")


def secs(d: Duration) -> float:
    return d.ToTimedelta().total_seconds()


# ---------------------------------------------------------------- documents


def test_put_get_delete_compare_and_set(state_client: Client) -> None:
    s, c = state_client.state, collection()
    first = s.put(st.PutRequest(collection=c, key="k", value=b"one", content_type="text/plain"))
    assert first.written and first.version > 0

    # expected_version 0: only if absent -> refused, nothing changed.
    refused = s.put(st.PutRequest(collection=c, key="k", value=b"two", expected_version=0))
    assert not refused.written and refused.version == first.version
    got = s.get(st.GetRequest(collection=c, key="k"))
    assert got.found and got.document.value == b"one" and got.document.content_type == "text/plain"
    assert got.document.version == first.version and not got.document.HasField("ttl")
    assert (got.document.collection, got.document.key) == (c, "k")

    # A stale version is refused too; the current one writes a larger version.
    stale = s.put(st.PutRequest(collection=c, key="k", value=b"two", expected_version=first.version + 1000))
    assert not stale.written and stale.version == first.version
    second = s.put(st.PutRequest(collection=c, key="k", value=b"two", expected_version=first.version))
    assert second.written and second.version > first.version
    assert s.get(st.GetRequest(collection=c, key="k")).document.value == b"two"

    # Delete: CAS refused (still there), then deleted, then nothing to delete.
    assert not s.delete(st.DeleteRequest(collection=c, key="k", expected_version=first.version)).deleted
    assert s.get(st.GetRequest(collection=c, key="k")).found
    assert s.delete(st.DeleteRequest(collection=c, key="k", expected_version=second.version)).deleted
    assert not s.get(st.GetRequest(collection=c, key="k")).found
    assert not s.delete(st.DeleteRequest(collection=c, key="k")).deleted

    # Versions keep growing across a delete; expected_version 0 creates.
    again = s.put(st.PutRequest(collection=c, key="k", value=b"three", expected_version=0))
    assert again.written and again.version > second.version
    # An unconditional put overwrites.
    assert s.put(st.PutRequest(collection=c, key="k", value=b"four")).version > again.version


def test_put_with_ttl_reports_the_time_left(state_client: Client) -> None:
    s, c = state_client.state, collection()
    s.put(st.PutRequest(collection=c, key="brief", value=b"x", ttl=Duration(seconds=30)))
    doc = s.get(st.GetRequest(collection=c, key="brief")).document
    assert doc.HasField("ttl") and 25 < secs(doc.ttl) <= 30


def test_get_many_answers_in_the_order_asked(state_client: Client) -> None:
    s, c = state_client.state, collection()
    va = s.put(st.PutRequest(collection=c, key="a", value=b"A")).version
    vb = s.put(st.PutRequest(collection=c, key="b", value=b"B")).version
    many = s.get_many(st.GetManyRequest(collection=c, keys=["b", "missing", "a"]))
    assert [(d.found, d.document.key, d.document.value, d.document.version) for d in many.documents] == [
        (True, "b", b"B", vb),
        (False, "", b"", 0),
        (True, "a", b"A", va),
    ]


def test_patch_merges_creates_and_refuses(state_client: Client) -> None:
    s, c = state_client.state, collection()
    with pytest.raises(NotFound) as missing:
        s.patch(st.PatchRequest(collection=c, key="cfg", merge_patch=b'{"a": 1}'))
    assert "create" in missing.value.message
    assert not s.get(st.GetRequest(collection=c, key="cfg")).found

    first = b'{"a": 1, "gone": null, "o": {"x": 1}}'
    created = s.patch(st.PatchRequest(collection=c, key="cfg", merge_patch=first, create=True))
    assert created.written and created.document.content_type == JSON
    assert json.loads(created.document.value) == {"a": 1, "o": {"x": 1}}

    # RFC 7396: objects merge, null removes, other values replace.
    merged = s.patch(st.PatchRequest(collection=c, key="cfg", merge_patch=b'{"o": {"y": 2, "x": null}, "a": [1, 2]}'))
    assert merged.written and merged.document.version > created.document.version
    assert json.loads(merged.document.value) == {"a": [1, 2], "o": {"y": 2}}
    assert json.loads(s.get(st.GetRequest(collection=c, key="cfg")).document.value) == {"a": [1, 2], "o": {"y": 2}}

    # A stale expected_version: not written, the current document answered.
    old = created.document.version
    stale = s.patch(st.PatchRequest(collection=c, key="cfg", merge_patch=b'{"a": 0}', expected_version=old))
    assert not stale.written and stale.document.version == merged.document.version
    assert json.loads(stale.document.value) == {"a": [1, 2], "o": {"y": 2}}
    current = merged.document.version
    ok = s.patch(st.PatchRequest(collection=c, key="cfg", merge_patch=b'{"a": 0}', expected_version=current))
    assert ok.written and json.loads(ok.document.value)["a"] == 0

    # Only JSON documents can be patched; a bad patch is an invalid argument.
    s.put(st.PutRequest(collection=c, key="text", value=b"not json", content_type="text/plain"))
    with pytest.raises(FailedPrecondition):
        s.patch(st.PatchRequest(collection=c, key="text", merge_patch=b'{"a": 1}'))
    with pytest.raises(InvalidArgument) as bad:
        s.patch(st.PatchRequest(collection=c, key="cfg", merge_patch=b"{nope"))
    assert [v.field for v in bad.value.field_violations] == ["merge_patch"]


def test_concurrent_patches_of_different_fields_all_survive(state_client: Client) -> None:
    s, c = state_client.state, collection()
    s.put(st.PutRequest(collection=c, key="doc", value=b"{}", content_type=JSON))

    def patch(i: int) -> None:
        s.patch(st.PatchRequest(collection=c, key="doc", merge_patch=json.dumps({f"f{i}": i}).encode()))

    threads = [threading.Thread(target=patch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(s.get(st.GetRequest(collection=c, key="doc")).document.value) == {f"f{i}": i for i in range(8)}


def test_get_with_a_json_pointer(state_client: Client) -> None:
    s, c = state_client.state, collection()
    value = {"settings": {"tz": "UTC", "a/b": 1, "m~n": 2}, "list": [10, 20]}
    put = s.put(st.PutRequest(collection=c, key="u", value=json.dumps(value).encode(), content_type=JSON))

    def at(pointer: str) -> st.GetResponse:
        return s.get(st.GetRequest(collection=c, key="u", json_pointer=pointer))

    tz = at("/settings/tz")
    assert tz.found and json.loads(tz.document.value) == "UTC" and tz.document.content_type == JSON
    assert tz.document.version == put.version
    assert json.loads(at("/settings").document.value) == value["settings"]
    assert json.loads(at("/list/1").document.value) == 20
    assert json.loads(at("/settings/a~1b").document.value) == 1  # RFC 6901 escapes
    assert json.loads(at("/settings/m~0n").document.value) == 2
    assert not at("/settings/nope").found
    assert not at("/list/7").found
    with pytest.raises(InvalidArgument) as bad:
        at("settings")  # a pointer starts with "/"
    assert [v.field for v in bad.value.field_violations] == ["json_pointer"]
    s.put(st.PutRequest(collection=c, key="bin", value=b"\x00\x01", content_type="application/octet-stream"))
    with pytest.raises(FailedPrecondition):
        s.get(st.GetRequest(collection=c, key="bin", json_pointer="/a"))


def test_list_pages_by_keyset_cursor_and_count(state_client: Client) -> None:
    s, c = state_client.state, collection()
    keys = [f"a:{i:02}" for i in range(7)]
    versions = {k: s.put(st.PutRequest(collection=c, key=k, value=k.encode())).version for k in keys}
    s.put(st.PutRequest(collection=c, key="b:00", value=b"other"))
    assert s.count(st.CountRequest(collection=c)).count == 8
    assert s.count(st.CountRequest(collection=collection())).count == 0

    page1 = s.list(st.ListRequest(collection=c, prefix="a:", limit=3))
    assert list(page1.keys) == keys[:3] and page1.next_cursor == keys[2] and not page1.documents

    # Changes elsewhere do not shift the cursor: a key deleted from page 1
    # and one added before the cursor are not seen; page 2 starts after it.
    s.delete(st.DeleteRequest(collection=c, key=keys[0]))
    s.put(st.PutRequest(collection=c, key="a:00x", value=b"late"))
    page2 = s.list(st.ListRequest(collection=c, prefix="a:", cursor=page1.next_cursor, limit=3, with_values=True))
    assert list(page2.keys) == keys[3:6] and page2.next_cursor == keys[5]
    assert [(d.key, d.value, d.version, d.collection) for d in page2.documents] == [
        (k, k.encode(), versions[k], c) for k in keys[3:6]
    ]
    page3 = s.list(st.ListRequest(collection=c, prefix="a:", cursor=page2.next_cursor, limit=3))
    assert list(page3.keys) == keys[6:] and page3.next_cursor == ""

    everything = s.list(st.ListRequest(collection=c))  # limit 0: the default page (100)
    assert list(everything.keys) == sorted([*keys[1:], "a:00x", "b:00"]) and everything.next_cursor == ""
    assert s.count(st.CountRequest(collection=c)).count == 8
    with pytest.raises(InvalidArgument) as bad:
        s.list(st.ListRequest(collection=c, limit=1_000_000))
    assert [v.field for v in bad.value.field_violations] == ["limit"]


def _drain(stream: ServerStream[st.WatchResponse], into: queue.Queue[object]) -> None:
    try:
        for change in stream:
            into.put(change)
        into.put("end")
    except Exception as e:  # handed to the test thread
        into.put(e)


def _next(changes: queue.Queue[object], timeout: float = 5.0) -> st.WatchResponse:
    item = changes.get(timeout=timeout)
    assert isinstance(item, st.WatchResponse), item
    return item


def test_watch_streams_put_patch_delete_in_order(state_client: Client) -> None:
    s, c = state_client.state, collection()
    stream = s.watch(st.WatchRequest(collection=c, prefix="w:"))
    changes: queue.Queue[object] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(stream, changes), daemon=True)
    reader.start()
    # The watch is live once a change made now reaches it.
    deadline = time.monotonic() + 10
    for n in itertools.count():
        s.put(st.PutRequest(collection=c, key="w:sentinel", value=str(n).encode()))
        try:
            first = _next(changes, timeout=0.3)
            break
        except queue.Empty:
            assert time.monotonic() < deadline, "Watch never yielded a change"
    assert first.key == "w:sentinel" and first.type == st.CHANGE_TYPE_PUT
    time.sleep(0.3)
    while not changes.empty():
        assert _next(changes).key == "w:sentinel"

    put = s.put(st.PutRequest(collection=c, key="w:doc", value=b'{"n": 1}', content_type=JSON))
    s.put(st.PutRequest(collection=c, key="elsewhere", value=b"not watched"))  # outside the prefix
    patched = s.patch(st.PatchRequest(collection=c, key="w:doc", merge_patch=b'{"m": 2}'))
    refused = s.put(st.PutRequest(collection=c, key="w:doc", value=b"x", expected_version=0))  # changes nothing
    assert not refused.written
    assert s.delete(st.DeleteRequest(collection=c, key="w:doc")).deleted
    again = s.put(st.PutRequest(collection=c, key="w:doc", value=b"back"))

    got = [_next(changes) for _ in range(4)]
    assert [(g.key, g.type, g.version) for g in got] == [
        ("w:doc", st.CHANGE_TYPE_PUT, put.version),
        ("w:doc", st.CHANGE_TYPE_PATCH, patched.document.version),
        ("w:doc", st.CHANGE_TYPE_DELETE, 0),
        ("w:doc", st.CHANGE_TYPE_PUT, again.version),
    ]
    assert put.version < patched.document.version < again.version
    time.sleep(0.3)
    assert changes.empty(), "a change outside the prefix or a refused write was streamed"

    assert stream.cancel()
    assert changes.get(timeout=5) == "end"
    reader.join(timeout=5)
    assert not reader.is_alive()


# ----------------------------------------------------------------- counters


def test_increment_within_bounds_and_get_counters(state_client: Client) -> None:
    s, c = state_client.state, collection()
    five = s.increment(st.IncrementRequest(collection=c, key="n", delta=5))
    assert five.applied and five.value == 5
    below = s.increment(st.IncrementRequest(collection=c, key="n", delta=-10, min=0))
    assert not below.applied and below.value == 5
    above = s.increment(st.IncrementRequest(collection=c, key="n", delta=10, max=12))
    assert not above.applied and above.value == 5
    up = s.increment(st.IncrementRequest(collection=c, key="n", delta=7, min=0, max=12))
    assert up.applied and up.value == 12
    down = s.increment(st.IncrementRequest(collection=c, key="m", delta=-3))
    assert down.applied and down.value == -3
    assert list(s.get_counters(st.GetCountersRequest(collection=c, keys=["n", "missing", "m"])).values) == [12, 0, -3]
    with pytest.raises(InvalidArgument) as bad:
        s.increment(st.IncrementRequest(collection=c, key="n", delta=1, min=5, max=1))
    assert [v.field for v in bad.value.field_violations] == ["max"]
    assert list(s.get_counters(st.GetCountersRequest(collection=c, keys=["n"])).values) == [12]


def test_concurrent_increments_are_exact(state_client: Client) -> None:
    s, c = state_client.state, collection()

    def bump() -> None:
        for _ in range(20):
            s.increment(st.IncrementRequest(collection=c, key="hits", delta=1, max=50))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 80 tries, at most 50 applied: the bound holds under contention.
    assert list(s.get_counters(st.GetCountersRequest(collection=c, keys=["hits"])).values) == [50]


# -------------------------------------------------------------- lock RPCs


def test_lock_rpcs_fence_renew_release(state_client: Client) -> None:
    s, name = state_client.state, lock_name()
    a = s.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=5)))
    assert a.acquired and re.fullmatch(r"[0-9a-f]{32}", a.lease_id) and a.fencing_token > 0
    assert not a.HasField("retry_after")

    held = s.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=5)))
    assert not held.acquired and not held.lease_id and held.fencing_token == 0
    assert 4 < secs(held.retry_after) <= 5

    renewed = s.renew_lock(st.RenewLockRequest(name=name, lease_id=a.lease_id, ttl=Duration(seconds=5)))
    assert renewed.fencing_token == a.fencing_token
    assert s.release_lock(st.ReleaseLockRequest(name=name, lease_id=a.lease_id)).released
    assert not s.release_lock(st.ReleaseLockRequest(name=name, lease_id=a.lease_id)).released  # lost: a normal answer

    b = s.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(nanos=300_000_000)))
    assert b.acquired and b.fencing_token > a.fencing_token and b.lease_id != a.lease_id
    with pytest.raises(FailedPrecondition) as lost:
        s.renew_lock(st.RenewLockRequest(name=name, lease_id=a.lease_id, ttl=Duration(seconds=5)))
    assert "lock lost" in lost.value.message

    # A waiting acquisition gets the lock once b's 300 ms run out.
    started = time.monotonic()
    c = s.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=5), wait=Duration(seconds=3)))
    assert c.acquired and c.fencing_token > b.fencing_token
    assert 0.1 < time.monotonic() - started < 2.5
    with pytest.raises(FailedPrecondition, match="lock lost"):
        s.renew_lock(st.RenewLockRequest(name=name, lease_id=b.lease_id, ttl=Duration(seconds=5)))
    assert s.release_lock(st.ReleaseLockRequest(name=name, lease_id=c.lease_id)).released

    with pytest.raises(InvalidArgument) as bad:
        s.acquire_lock(st.AcquireLockRequest(name=name))
    assert [v.field for v in bad.value.field_violations] == ["ttl"]
    with pytest.raises(InvalidArgument) as bad_lease:
        s.renew_lock(st.RenewLockRequest(name=name, lease_id="nope", ttl=Duration(seconds=1)))
    assert [v.field for v in bad_lease.value.field_violations] == ["lease_id"]


# ------------------------------------------------------------ lock helpers


def test_parse_duration() -> None:
    assert parse_duration("10s") == 10
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration(" 250us ") == pytest.approx(0.00025)
    assert parse_duration("2") == 2
    assert parse_duration(3) == 3 and parse_duration(0.25) == 0.25
    assert parse_duration(timedelta(milliseconds=1500)) == 1.5
    for bad in ("", "10 s", "10x", "s", "-1s", "inf", "1s2"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for wrong in (True, None, [1]):
        with pytest.raises(TypeError):
            parse_duration(wrong)  # type: ignore[arg-type]


def test_the_helpers_are_the_ones_the_generator_names() -> None:
    # clients/tools/gen_wrappers.py MIXINS lists ("lock", "leader").
    assert sorted(n for n in vars(StateLocks) if not n.startswith("_")) == ["leader", "lock"]


def test_lock_helper_renews_fences_and_releases(state_client: Client, make_client: Callable[..., Client]) -> None:
    other, name = make_client(target=state_client.target), lock_name()
    with state_client.state.lock(name, ttl="600ms", wait="1s") as lease:
        assert isinstance(lease, Lease) and lease.fencing_token > 0 and not lease.lost
        time.sleep(1.5)  # past the TTL twice over: the background renewals keep it
        assert not lease.lost and lease.expires_in > 0
        lease.check()
        held = other.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=1)))
        assert not held.acquired
        with pytest.raises(LockNotAcquired) as refused:
            other.state.lock(name, ttl="1s").acquire()
        assert refused.value.name == name and refused.value.retry_after is not None
        assert 0 < refused.value.retry_after <= 0.6
    assert lease.released and not lease.lost
    with pytest.raises(LockLost):
        lease.check()  # released: no longer the holder
    # Released at the end of the block: taken at once, with a larger token.
    with other.state.lock(name, ttl="1s") as after:
        assert after.fencing_token > lease.fencing_token
    assert not after.release()  # already released


def test_lock_helper_waits_then_raises_lock_not_acquired(state_client: Client) -> None:
    name = lock_name()
    with state_client.state.lock(name, ttl="5s"):
        started = time.monotonic()
        with pytest.raises(LockNotAcquired, match="not acquired within"):
            with state_client.state.lock(name, ttl="5s", wait="500ms"):
                pytest.fail("acquired a held lock")
        assert 0.45 < time.monotonic() - started < 3


def test_lock_helper_waits_for_a_lease_that_ends(state_client: Client) -> None:
    name = lock_name()
    first = state_client.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(nanos=400_000_000)))
    started = time.monotonic()
    # wait is longer than one call waits (WAIT_PER_CALL): still one wait.
    with state_client.state.lock(name, ttl="2s", wait="5s") as lease:
        assert 0.2 < time.monotonic() - started < 3
        assert lease.fencing_token > first.fencing_token and not lease.lost


def test_lease_released_from_under_it_is_lost(state_client: Client, make_client: Callable[..., Client]) -> None:
    other, name = make_client(target=state_client.target), lock_name()
    lost: list[Lease] = []
    called = threading.Event()

    def on_lost(lease: Lease) -> None:
        lost.append(lease)
        called.set()

    with state_client.state.lock(name, ttl="3s", renew_every="200ms", on_lost=on_lost) as lease:
        # Someone with the lease id releases it; then another holder takes it.
        assert other.state.release_lock(st.ReleaseLockRequest(name=name, lease_id=lease.lease_id)).released
        taken = other.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=5)))
        assert taken.acquired and taken.fencing_token > lease.fencing_token
        assert called.wait(3), "on_lost was not called"
        assert lost == [lease] and lease.lost and lease.wait_lost(0)
        assert lease.lost_reason is not None and "lock lost" in lease.lost_reason
        with pytest.raises(LockLost, match="lock lost") as info:
            lease.check()
        assert info.value.fencing_token == lease.fencing_token
        with pytest.raises(LockLost):
            lease.renew()
    # Leaving the block does not raise, and releases nothing of the new holder's.
    assert other.state.renew_lock(
        st.RenewLockRequest(name=name, lease_id=taken.lease_id, ttl=Duration(seconds=1))
    ).fencing_token == taken.fencing_token
    assert len(lost) == 1


def test_lease_whose_renewals_come_too_late_is_lost(state_client: Client, make_client: Callable[..., Client]) -> None:
    other, name = make_client(target=state_client.target), lock_name()
    called = threading.Event()
    # Renewing every 5 s a lease of 400 ms: it runs out first.
    with state_client.state.lock(name, ttl="400ms", renew_every="5s", on_lost=lambda _: called.set()) as lease:
        assert not lease.lost
        assert lease.wait_lost(3) and called.wait(1)
        assert lease.lost and lease.expires_in == 0
        assert lease.lost_reason is not None and "ran out" in lease.lost_reason
        with pytest.raises(LockLost):
            lease.check()
        # The service freed it too: another holder gets a larger token.
        with other.state.lock(name, ttl="1s", wait="2s") as after:
            assert after.fencing_token > lease.fencing_token


CHILD = r"""
import sys, time
from datalayer import Client

client = Client(sys.argv[1])
lease = client.state.lock(sys.argv[2], ttl="1s").acquire()
print(lease.fencing_token, flush=True)
time.sleep(120)
"""


def test_a_holder_killed_with_sigkill_frees_the_lock_after_its_ttl(state_client: Client) -> None:
    name = lock_name()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, state_client.target, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line: queue.Queue[str] = queue.Queue()
        assert child.stdout is not None
        threading.Thread(target=lambda: line.put(child.stdout.readline() if child.stdout else ""), daemon=True).start()
        try:
            child_token = int(line.get(timeout=20))
        except (queue.Empty, ValueError):
            child.kill()
            _, err = child.communicate(timeout=5)
            pytest.fail(f"the child did not take the lock: {err}")
        # Past its 1 s TTL the child still holds it: its lease renews itself.
        time.sleep(1.5)
        held = state_client.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=1)))
        assert not held.acquired, "the child's lease was not renewed"
    finally:
        child.kill()  # SIGKILL: no release, no more renewals
        child.wait(timeout=5)
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()
    killed = time.monotonic()

    # Right after the kill the lock is still the dead holder's...
    with pytest.raises(LockNotAcquired) as refused:
        state_client.state.lock(name, ttl="1s").acquire()
    left = refused.value.retry_after
    assert left is not None and 0 < left <= 1.0
    # ...until its TTL runs out; then a waiting lock gets it, fenced higher.
    with state_client.state.lock(name, ttl="1s", wait="5s") as lease:
        waited = time.monotonic() - killed
        assert lease.fencing_token > child_token
        assert waited >= left - 0.1, f"acquired {waited:.3f}s after the kill, the TTL had {left:.3f}s left"
        assert waited > 0.5  # the child renewed at most 1/3 s before it died
        assert waited < 1.0 + 1.0


def test_leader_terms_follow_each_other(state_client: Client, make_client: Callable[..., Client]) -> None:
    other, name = make_client(target=state_client.target), lock_name()
    with state_client.state.leader(name, ttl="1s", renew_every="100ms") as terms:
        first = next(terms)
        assert not first.lost and first.fencing_token > 0
        assert not other.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=1))).acquired
        # Leadership is taken away: the term signals it...
        assert other.state.release_lock(st.ReleaseLockRequest(name=name, lease_id=first.lease_id)).released
        assert first.wait_lost(3)
        # ...and the next term is campaigned for and won, fenced higher.
        second = next(terms)
        assert second.fencing_token > first.fencing_token and not second.lost
        # Ending a term early hands leadership over (released, not lost).
        third = next(terms)
        assert second.released and not second.lost and third.fencing_token > second.fencing_token
    assert third.released
    assert other.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=1))).acquired


def test_followers_wait_for_the_leader(state_client: Client, make_client: Callable[..., Client]) -> None:
    name = lock_name()
    follower_client = make_client(target=state_client.target)
    events: queue.Queue[tuple[str, int]] = queue.Queue()
    leading = state_client.state.lock(name, ttl="1s").acquire()

    def follow() -> None:
        # A plain for loop: breaking out releases the term (CPython closes it).
        for term in follower_client.state.leader(name, ttl="1s"):
            events.put(("leader", term.fencing_token))
            break
        events.put(("done", 0))

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(1.2)  # past a TTL: the leader's renewals keep the follower waiting
    assert events.empty()
    leading.release()
    kind, token = events.get(timeout=5)
    assert kind == "leader" and token > leading.fencing_token
    assert events.get(timeout=5) == ("done", 0)
    t.join(5)
    # The follower's term was released when its loop ended.
    assert state_client.state.acquire_lock(st.AcquireLockRequest(name=name, ttl=Duration(seconds=1))).acquired


def test_leadership_stop_ends_a_campaign(state_client: Client) -> None:
    name = lock_name()
    with state_client.state.lock(name, ttl="5s"):
        leadership = state_client.state.leader(name, ttl="5s")
        ended = threading.Event()

        def campaign() -> None:
            for _ in leadership:
                pytest.fail("became the leader of a held lock")
            ended.set()

        threading.Thread(target=campaign, daemon=True).start()
        time.sleep(0.2)
        leadership.stop()
        assert ended.wait(5)


# -------------------------------------------------------------------- async


async def test_async_state_rpcs_and_lock_helpers(async_client: AsyncClient, make_client: Callable[..., Client]) -> None:
    s, c, name = async_client.state, collection(), lock_name()
    put = await s.put(st.PutRequest(collection=c, key="k", value=b'{"a": 1}', content_type=JSON))
    patched = await s.patch(st.PatchRequest(collection=c, key="k", merge_patch=b'{"b": 2}'))
    assert patched.written and patched.document.version > put.version
    got = await s.get(st.GetRequest(collection=c, key="k", json_pointer="/b"))
    assert json.loads(got.document.value) == 2
    assert (await s.count(st.CountRequest(collection=c))).count == 1

    other = make_client(target=async_client.target)
    lost: list[AsyncLease] = []
    async with s.lock(name, ttl="2s", wait="1s", renew_every="100ms", on_lost=lost.append) as lease:
        assert isinstance(lease, AsyncLease) and lease.fencing_token > 0
        await asyncio.sleep(0.3)
        assert not lease.lost
        with pytest.raises(LockNotAcquired):
            await s.lock(name, ttl="1s").acquire()
        assert other.state.release_lock(st.ReleaseLockRequest(name=name, lease_id=lease.lease_id)).released
        assert await lease.wait_lost(3)
        assert lost == [lease] and lease.lost_reason and "lock lost" in lease.lost_reason
        with pytest.raises(LockLost):
            lease.check()
    # `await lock` acquires too.
    again = await s.lock(name, ttl="1s")
    assert again.fencing_token > lease.fencing_token
    assert await again.release() and not await again.release()

    async with s.leader(name, ttl="1s") as terms:
        async for term in terms:
            assert term.fencing_token > again.fencing_token and not term.lost
            break
    assert term.released
    with other.state.lock(name, ttl="1s") as after:  # released on leaving the block
        assert after.fencing_token > term.fencing_token


async def test_async_lease_whose_renewals_come_too_late_is_lost(async_client: AsyncClient) -> None:
    name = lock_name()
    async with async_client.state.lock(name, ttl="300ms", renew_every="5s") as lease:
        assert not await lease.wait_lost(0.05)
        assert await lease.wait_lost(3)
        assert lease.lost_reason and "ran out" in lease.lost_reason
        after = await async_client.state.lock(name, ttl="1s", wait="2s").acquire()
        assert after.fencing_token > lease.fencing_token
        await after.release()
