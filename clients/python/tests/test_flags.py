"""FlagService through the Python client, against the real binary on the
in-process memory store (`memory_stack`): every RPC, Watch included."""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import threading
import time
from typing import Any

import pytest
from google.protobuf import struct_pb2

from datalayer import AsyncClient, Client, InvalidArgument, NotFound, ServerStream
from datalayer.flags.v1 import flags_pb2 as f

from .conftest import Stack, require, unique

SERVICE = "datalayer.flags.v1.FlagService"

BOOL_FLAG: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [{"==": [{"var": "email"}, "a@b.c"]}, "on", None]},
}
FRACTIONAL_FLAG: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"a": "a", "b": "b"},
    "defaultVariant": "a",
    "targeting": {"fractional": [{"var": "targetingKey"}, ["a", 50], ["b", 50]]},
}
BOOL = json.dumps(BOOL_FLAG)
FRACTIONAL = json.dumps(FRACTIONAL_FLAG)


@pytest.fixture(autouse=True)
def _served(memory_stack: Stack) -> None:
    require(memory_stack, SERVICE)


def flag_set() -> str:
    return unique("py/flags")


def context(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3, x86, 32 bits (the hash FractionalBucket documents)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def scramble(k: int) -> int:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        return (k * c2) & mask

    h = seed
    body = len(data) // 4 * 4
    for i in range(0, body, 4):
        h ^= scramble(int.from_bytes(data[i : i + 4], "little"))
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    if tail := data[body:]:
        h ^= scramble(int.from_bytes(tail, "little"))
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def cbor_text(s: str) -> bytes:
    """The canonical CBOR encoding of a short (< 24 bytes) text string."""
    raw = s.encode()
    assert len(raw) < 24
    return bytes([0x60 + len(raw)]) + raw


def test_put_then_get_round_trips_the_definition_and_version(memory_client: Client) -> None:
    fs, key = flag_set(), "new-checkout"
    put = memory_client.flags.put(f.PutRequest(flag_set=fs, key=key, definition=BOOL))
    assert put.written and put.version > 0
    got = memory_client.flags.get(f.GetRequest(flag_set=fs, key=key)).flag
    assert (got.flag_set, got.key, got.version) == (fs, key, put.version)
    assert json.loads(got.definition) == BOOL_FLAG
    with pytest.raises(NotFound):
        memory_client.flags.get(f.GetRequest(flag_set=fs, key="missing"))


def test_expected_version_is_compare_and_set(memory_client: Client) -> None:
    fs, key = flag_set(), "cas"
    created = memory_client.flags.put(f.PutRequest(flag_set=fs, key=key, definition=BOOL, expected_version=0))
    assert created.written and created.version > 0
    # 0: only if it does not exist.
    again = memory_client.flags.put(f.PutRequest(flag_set=fs, key=key, definition=FRACTIONAL, expected_version=0))
    assert not again.written and again.version == created.version
    # A stale version writes nothing and answers the current version.
    stale = memory_client.flags.put(
        f.PutRequest(flag_set=fs, key=key, definition=FRACTIONAL, expected_version=created.version + 100)
    )
    assert not stale.written and stale.version == created.version
    got = memory_client.flags.get(f.GetRequest(flag_set=fs, key=key)).flag
    assert got.version == created.version and json.loads(got.definition) == BOOL_FLAG
    # The current version writes.
    fresh = memory_client.flags.put(
        f.PutRequest(flag_set=fs, key=key, definition=FRACTIONAL, expected_version=created.version)
    )
    assert fresh.written and fresh.version > created.version
    assert json.loads(memory_client.flags.get(f.GetRequest(flag_set=fs, key=key)).flag.definition) == FRACTIONAL_FLAG
    # Delete is compare-and-set too.
    stale_delete = memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key=key, expected_version=created.version))
    assert not stale_delete.deleted
    assert memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key=key, expected_version=fresh.version)).deleted
    assert not memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key=key)).deleted
    with pytest.raises(NotFound):
        memory_client.flags.get(f.GetRequest(flag_set=fs, key=key))


def test_patch_is_a_json_merge_patch(memory_client: Client) -> None:
    fs, key = flag_set(), "patched"
    original = dict(BOOL_FLAG, metadata={"owner": "team-a", "ticket": "T-1"})
    put = memory_client.flags.put(f.PutRequest(flag_set=fs, key=key, definition=json.dumps(original)))
    patch = {"defaultVariant": "on", "metadata": {"owner": None, "team": "b"}}
    patched = memory_client.flags.patch(
        f.PatchRequest(flag_set=fs, key=key, merge_patch=json.dumps(patch), expected_version=put.version)
    )
    assert patched.written and patched.flag.version > put.version
    want = dict(BOOL_FLAG, defaultVariant="on", metadata={"ticket": "T-1", "team": "b"})
    assert json.loads(patched.flag.definition) == want
    got = memory_client.flags.get(f.GetRequest(flag_set=fs, key=key)).flag
    assert json.loads(got.definition) == want and got.version == patched.flag.version
    # A stale expected_version changes nothing and answers the flag as it is.
    stale = memory_client.flags.patch(
        f.PatchRequest(flag_set=fs, key=key, merge_patch='{"defaultVariant":"off"}', expected_version=put.version)
    )
    assert not stale.written and stale.flag.version == patched.flag.version
    assert json.loads(stale.flag.definition) == want
    with pytest.raises(NotFound):
        memory_client.flags.patch(f.PatchRequest(flag_set=fs, key="missing", merge_patch="{}"))
    with pytest.raises(InvalidArgument) as info:
        memory_client.flags.patch(f.PatchRequest(flag_set=fs, key=key, merge_patch="{not json"))
    assert [v.field for v in info.value.field_violations] == ["merge_patch"]


def test_set_state_disabled_is_the_kill_switch(memory_client: Client) -> None:
    fs, key = flag_set(), "kill-me"
    memory_client.flags.put(f.PutRequest(flag_set=fs, key=key, definition=BOOL))
    match = context(email="a@b.c")
    before = memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key=key, context=match))
    assert (before.reason, before.variant, before.value) == ("TARGETING_MATCH", "on", "true")

    disabled = memory_client.flags.set_state(f.SetStateRequest(flag_set=fs, key=key, state=f.STATE_DISABLED))
    assert disabled.written and json.loads(disabled.flag.definition)["state"] == "DISABLED"
    explained = memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key=key, context=match))
    assert explained.reason == "DISABLED" and explained.value == "null" and not explained.error

    stale = memory_client.flags.set_state(
        f.SetStateRequest(flag_set=fs, key=key, state=f.STATE_ENABLED, expected_version=disabled.flag.version + 100)
    )
    assert not stale.written and json.loads(stale.flag.definition)["state"] == "DISABLED"
    enabled = memory_client.flags.set_state(
        f.SetStateRequest(flag_set=fs, key=key, state=f.STATE_ENABLED, expected_version=disabled.flag.version)
    )
    assert enabled.written and json.loads(enabled.flag.definition) == BOOL_FLAG
    assert memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key=key, context=match)).reason == "TARGETING_MATCH"

    with pytest.raises(InvalidArgument) as info:
        memory_client.flags.set_state(f.SetStateRequest(flag_set=fs, key=key))
    assert [v.field for v in info.value.field_violations] == ["state"]


def test_list_pages_in_key_order(memory_client: Client) -> None:
    fs = flag_set()
    keys = ["e", "a", "d", "b", "c"]
    for k in keys:
        memory_client.flags.put(f.PutRequest(flag_set=fs, key=k, definition=BOOL))
    pages: list[list[str]] = []
    token = ""
    while True:
        page = memory_client.flags.list(f.ListRequest(flag_set=fs, page_size=2, page_token=token))
        assert all(fl.flag_set == fs and json.loads(fl.definition) == BOOL_FLAG for fl in page.flags)
        pages.append([fl.key for fl in page.flags])
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "List never reached its last page"
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    everything = memory_client.flags.list(f.ListRequest(flag_set=fs))
    assert [fl.key for fl in everything.flags] == sorted(keys) and not everything.next_page_token
    assert not memory_client.flags.list(f.ListRequest(flag_set=flag_set())).flags
    with pytest.raises(InvalidArgument) as info:
        memory_client.flags.list(f.ListRequest(flag_set=fs, page_size=100_000))
    assert [v.field for v in info.value.field_violations] == ["page_size"]


DOCUMENT: dict[str, Any] = {
    "flags": {
        "staff-only": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "isStaff"}, "on", "off"]},
        },
        "colour": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"}, "defaultVariant": "red"},
    },
    "metadata": {"team": "growth"},
    "$evaluators": {"isStaff": {"ends_with": [{"var": "email"}, "@corp.com"]}},
}


def test_import_then_export_keeps_evaluators_and_metadata(memory_client: Client) -> None:
    fs = flag_set()
    imported = memory_client.flags.import_(f.ImportRequest(flag_set=fs, document=json.dumps(DOCUMENT)))
    assert imported.version > 0 and sorted(imported.changed) == ["colour", "staff-only"]
    exported = memory_client.flags.export(f.ExportRequest(flag_set=fs))
    assert json.loads(exported.document) == DOCUMENT and exported.version == imported.version
    # The $ref resolves against the imported $evaluators.
    staff = memory_client.flags.explain(
        f.ExplainRequest(flag_set=fs, key="staff-only", context=context(email="eve@corp.com"))
    )
    assert (staff.reason, staff.variant, staff.value) == ("TARGETING_MATCH", "on", "true")
    other = memory_client.flags.explain(
        f.ExplainRequest(flag_set=fs, key="staff-only", context=context(email="eve@example.com"))
    )
    assert (other.variant, other.value) == ("off", "false")

    # replace=True deletes the flags the document does not name.
    smaller = {**DOCUMENT, "flags": {"colour": DOCUMENT["flags"]["colour"]}}
    replaced = memory_client.flags.import_(f.ImportRequest(flag_set=fs, document=json.dumps(smaller), replace=True))
    assert "staff-only" in replaced.changed and replaced.version > imported.version
    assert [fl.key for fl in memory_client.flags.list(f.ListRequest(flag_set=fs)).flags] == ["colour"]
    again = json.loads(memory_client.flags.export(f.ExportRequest(flag_set=fs)).document)
    assert again == smaller
    with pytest.raises(NotFound):
        memory_client.flags.export(f.ExportRequest(flag_set=flag_set()))
    with pytest.raises(InvalidArgument) as info:
        bad = {"flags": {"x": {**BOOL_FLAG, "targeting": {"nosuchop": [1]}}}}
        memory_client.flags.import_(f.ImportRequest(flag_set=fs, document=json.dumps(bad)))
    assert [v.field for v in info.value.field_violations] == ["document.flags.x.targeting"]


def test_validate_reports_problem_paths_and_dry_runs(memory_client: Client) -> None:
    document = {"flags": {"bad": {**BOOL_FLAG, "targeting": {"nosuchop": [1]}}, "good": BOOL_FLAG}}
    answer = memory_client.flags.validate(
        f.ValidateRequest(document=json.dumps(document), contexts=[context(email="a@b.c"), context()])
    )
    assert [p.path for p in answer.problems] == ["document.flags.bad.targeting"]
    assert "nosuchop" in answer.problems[0].description
    runs = {(r.key, r.context): r for r in answer.results}
    assert set(runs) == {("bad", 0), ("bad", 1), ("good", 0), ("good", 1)}
    assert (runs["good", 0].value, runs["good", 0].variant, runs["good", 0].reason) == ("true", "on", "TARGETING_MATCH")
    assert (runs["good", 1].value, runs["good", 1].variant, runs["good", 1].reason) == ("false", "off", "DEFAULT")
    assert runs["bad", 0].reason == "ERROR" and runs["bad", 0].error and not runs["good", 0].error

    ok = memory_client.flags.validate(f.ValidateRequest(document=json.dumps(DOCUMENT), contexts=[context()]))
    assert not ok.problems and {r.key for r in ok.results} == {"staff-only", "colour"}
    not_json = memory_client.flags.validate(f.ValidateRequest(document="{not json"))
    assert len(not_json.problems) == 1 and not_json.problems[0].path.startswith("document")
    assert not not_json.results


def test_explain_reports_the_matched_rule_and_fractional_buckets(memory_client: Client) -> None:
    fs = flag_set()
    memory_client.flags.put(f.PutRequest(flag_set=fs, key="gate", definition=BOOL))
    memory_client.flags.put(f.PutRequest(flag_set=fs, key="split", definition=FRACTIONAL))

    hit = memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key="gate", context=context(email="a@b.c")))
    assert hit.matched == "targeting.if[0] held" and hit.reason == "TARGETING_MATCH" and not hit.fractional
    seen = hit.evaluated_context
    assert seen["email"] == "a@b.c" and seen["$flagd"]["flagKey"] == "gate"
    miss = memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key="gate", context=context(email="x@y.z")))
    assert "no condition held" in miss.matched and miss.variant == "off" and miss.value == "false"

    variants = set()
    for i in range(20):
        who = f"user-{i}"
        out = memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key="split", context=context(targetingKey=who)))
        assert len(out.fractional) == 1, out
        bucket = out.fractional[0]
        assert bucket.bucket_by == json.dumps(who) and bucket.total_weight == 100
        assert bucket.hash == murmur3_32(cbor_text(who))
        assert bucket.bucket == (bucket.hash * bucket.total_weight) >> 32
        assert bucket.variant == ("a" if bucket.bucket < 50 else "b") == out.variant
        assert out.value == json.dumps(out.variant) and out.reason == "TARGETING_MATCH"
        variants.add(out.variant)
    assert variants == {"a", "b"}
    with pytest.raises(NotFound):
        memory_client.flags.explain(f.ExplainRequest(flag_set=fs, key="missing"))


def test_list_audit_is_newest_first_with_before_and_after(memory_client: Client) -> None:
    fs, key = flag_set(), "audited"
    put = memory_client.flags.put(f.PutRequest(flag_set=fs, key=key, definition=BOOL))
    patched = memory_client.flags.patch(f.PatchRequest(flag_set=fs, key=key, merge_patch='{"defaultVariant":"on"}'))
    disabled = memory_client.flags.set_state(f.SetStateRequest(flag_set=fs, key=key, state=f.STATE_DISABLED))
    memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key=key))

    entries = list(memory_client.flags.list_audit(f.ListAuditRequest(flag_set=fs)).entries)
    assert [e.action for e in entries] == ["delete", "set_state", "patch", "put"]
    assert all(e.flag_set == fs and e.key == key and e.actor for e in entries)
    assert [e.version for e in entries] == sorted((e.version for e in entries), reverse=True)
    assert entries[3].version == put.version and entries[2].version == patched.flag.version
    assert [e.at.ToNanoseconds() for e in entries] == sorted((e.at.ToNanoseconds() for e in entries), reverse=True)
    delete, set_state, patch, first = entries
    assert first.before == "" and json.loads(first.after) == BOOL_FLAG
    assert json.loads(patch.before) == BOOL_FLAG and json.loads(patch.after) == dict(BOOL_FLAG, defaultVariant="on")
    assert json.loads(set_state.before)["state"] == "ENABLED"
    assert json.loads(set_state.after) == json.loads(disabled.flag.definition)
    assert json.loads(delete.before) == json.loads(disabled.flag.definition) and delete.after == ""

    page1 = memory_client.flags.list_audit(f.ListAuditRequest(flag_set=fs, limit=3))
    assert [e.id for e in page1.entries] == [e.id for e in entries[:3]] and page1.next_before
    page2 = memory_client.flags.list_audit(f.ListAuditRequest(flag_set=fs, limit=3, before=page1.next_before))
    assert [e.id for e in page2.entries] == [entries[3].id] and not page2.next_before


def test_list_flag_sets_counts_flags(memory_client: Client) -> None:
    fs = flag_set()
    imported = memory_client.flags.import_(f.ImportRequest(flag_set=fs, document=json.dumps(DOCUMENT)))
    put = memory_client.flags.put(f.PutRequest(flag_set=fs, key="third", definition=BOOL))
    sets = {s.name: s for s in memory_client.flags.list_flag_sets(f.ListFlagSetsRequest()).flag_sets}
    assert fs in sets and sets[fs].flags == 3 and sets[fs].version == put.version > imported.version
    memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key="third"))
    after = {s.name: s for s in memory_client.flags.list_flag_sets(f.ListFlagSetsRequest()).flag_sets}
    assert after[fs].flags == 2


def _drain(stream: ServerStream[f.WatchResponse], into: queue.Queue[object]) -> None:
    try:
        for change in stream:
            into.put(change)
        into.put("end")
    except Exception as e:  # handed to the test thread
        into.put(e)


def _next_change(changes: queue.Queue[object], timeout: float = 5.0) -> f.WatchResponse:
    item = changes.get(timeout=timeout)
    assert isinstance(item, f.WatchResponse), item
    return item


def test_watch_yields_the_changes_of_its_flag_set(memory_client: Client) -> None:
    fs, other = flag_set(), flag_set()
    stream = memory_client.flags.watch(f.WatchRequest(flag_set=fs))
    changes: queue.Queue[object] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(stream, changes), daemon=True)
    reader.start()
    # The watch is live once a change made now reaches it. (Each write must
    # change the flag: a Put of the same definition is no change to watch.)
    deadline = time.monotonic() + 10
    for n in itertools.count():
        sentinel = json.dumps(dict(FRACTIONAL_FLAG, metadata={"n": n}))
        memory_client.flags.put(f.PutRequest(flag_set=fs, key="sentinel", definition=sentinel))
        try:
            first = _next_change(changes, timeout=0.2)
            break
        except queue.Empty:
            assert time.monotonic() < deadline, "Watch never yielded a change"
    assert first.flag_set == fs and first.key == "sentinel"
    time.sleep(0.2)
    while not changes.empty():
        _next_change(changes)

    memory_client.flags.put(f.PutRequest(flag_set=other, key="elsewhere", definition=BOOL))
    created = memory_client.flags.put(f.PutRequest(flag_set=fs, key="watched", definition=BOOL))
    write = _next_change(changes)
    assert (write.flag_set, write.key, write.type, write.version) == (fs, "watched", f.CHANGE_TYPE_WRITE, created.version)
    updated = memory_client.flags.put(f.PutRequest(flag_set=fs, key="watched", definition=FRACTIONAL))
    update = _next_change(changes)
    assert (update.key, update.type, update.version) == ("watched", f.CHANGE_TYPE_UPDATE, updated.version)
    memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key="watched"))
    delete = _next_change(changes)
    assert (delete.key, delete.type) == ("watched", f.CHANGE_TYPE_DELETE) and delete.version > updated.version

    assert stream.cancel()
    assert changes.get(timeout=5) == "end"  # a cancelled stream just ends
    reader.join(timeout=5)
    assert not reader.is_alive() and not stream.cancel()


def test_watch_with_a_bad_flag_set_raises_invalid_argument(memory_client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        next(memory_client.flags.watch(f.WatchRequest(flag_set="bad\x01name")))
    assert [v.field for v in info.value.field_violations] == ["flag_set"]


def test_watch_timeout_bounds_the_stream(memory_client: Client) -> None:
    from datalayer import DeadlineExceeded

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded), memory_client.flags.watch(f.WatchRequest(flag_set=flag_set()), timeout=0.5) as s:
        for _ in s:
            pass
    assert 0.4 < time.monotonic() - started < 5


def test_empty_key_is_invalid_argument_with_a_field_violation(memory_client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        memory_client.flags.put(f.PutRequest(flag_set=flag_set(), key="", definition=BOOL))
    assert [v.field for v in info.value.field_violations] == ["key"]
    with pytest.raises(InvalidArgument) as bad_rule:
        bad = dict(BOOL_FLAG, targeting={"nosuchop": [1]})
        memory_client.flags.put(f.PutRequest(flag_set=flag_set(), key="k", definition=json.dumps(bad)))
    assert [v.field for v in bad_rule.value.field_violations] == ["definition.targeting"]


async def test_async_put_get_and_watch_every_flag_set(async_memory_client: AsyncClient) -> None:
    fs = flag_set()
    async with async_memory_client.flags.watch(f.WatchRequest()) as stream:
        # Writes until one reaches the watch (it is live from then on).
        async def first_change() -> f.WatchResponse:
            async for change in stream:
                if change.flag_set == fs:
                    return change
            raise AssertionError("Watch ended")

        waiting = asyncio.ensure_future(first_change())
        put = None
        for n in range(50):
            definition = json.dumps(dict(BOOL_FLAG, metadata={"n": n}))
            put = await async_memory_client.flags.put(f.PutRequest(flag_set=fs, key="async", definition=definition))
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            if done:
                break
        change = await asyncio.wait_for(waiting, 5)
        assert put is not None and change.key == "async" and change.flag_set == fs
        assert change.type in (f.CHANGE_TYPE_WRITE, f.CHANGE_TYPE_UPDATE)
        got = await async_memory_client.flags.get(f.GetRequest(flag_set=fs, key="async"))
        assert json.loads(got.flag.definition)["variants"] == BOOL_FLAG["variants"]
        assert got.flag.version == put.version

        removed = await async_memory_client.flags.delete(f.DeleteRequest(flag_set=fs, key="async"))
        assert removed.deleted
        change = await asyncio.wait_for(stream.__anext__(), 5)
        while change.flag_set != fs:
            change = await asyncio.wait_for(stream.__anext__(), 5)
        assert (change.key, change.type) == ("async", f.CHANGE_TYPE_DELETE)
    # Leaving the block cancelled the stream: it ends without an error.
    assert [c async for c in stream] == []


async def test_async_watch_error_is_mapped(async_memory_client: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as info:
        async for _ in async_memory_client.flags.watch(f.WatchRequest(flag_set="\x00")):
            pass
    assert [v.field for v in info.value.field_violations] == ["flag_set"]
