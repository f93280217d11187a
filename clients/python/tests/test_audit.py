"""AuditService through the Python client, against the real binary: every
administrative call (here: rate-limit resets) lands in the caller's
tenant's audit log, stored asynchronously, so the tests poll briefly."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import AsyncClient, Client, InvalidArgument
from datalayer.audit.v1 import audit_pb2
from datalayer.ratelimit.v1 import ratelimit_pb2 as rl

from .conftest import Stack, require, unique, wait_for

SERVICE = "datalayer.audit.v1.AuditService"
RESET = "datalayer.ratelimit.v1.RateLimitService/Reset"


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


def reset(client: Client, key: str) -> None:
    limit = rl.Limit(gcra=rl.Gcra(limit=1, period=Duration(seconds=60)))
    client.ratelimit.reset(rl.ResetRequest(key=key, limit=limit))


def audited(client: Client, target: str, limit: int = 100) -> list[audit_pb2.AuditEvent]:
    """The events of the newest `limit` whose target is `target`."""
    events = client.audit.list(audit_pb2.ListRequest(limit=limit)).events
    return [e for e in events if e.target == target]


def test_a_reset_is_audited_with_who_what_and_outcome(client: Client) -> None:
    key = unique("py:audit")
    before = time.time()
    reset(client, key)
    [event] = wait_for(lambda: audited(client, key))
    assert event.method == RESET and event.method.endswith("/Reset")
    assert event.principal == "anonymous"  # auth.required is false here
    assert event.outcome == "OK"
    assert event.id
    assert before - 5 <= event.time.ToDatetime().timestamp() <= time.time() + 5


def test_pages_go_from_newest_to_oldest_by_cursor(client: Client) -> None:
    keys = [unique(f"py:audit-page{i}") for i in range(3)]
    for key in keys:
        reset(client, key)
    wait_for(lambda: audited(client, keys[-1]) and audited(client, keys[0]))
    seen: list[audit_pb2.AuditEvent] = []
    cursor = ""
    while len(seen) < 3:
        page = client.audit.list(audit_pb2.ListRequest(limit=1, cursor=cursor))
        assert len(page.events) == 1 and page.next_cursor, "older events remain"
        seen.extend(page.events)
        cursor = page.next_cursor
    # The newest first: our three resets, latest key first.
    assert [e.target for e in seen] == keys[::-1]
    assert len({e.id for e in seen}) == 3


def test_a_bad_cursor_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.audit.list(audit_pb2.ListRequest(cursor="not a cursor"))
    assert [v.field for v in info.value.field_violations] == ["cursor"]


async def test_async_client_reads_the_audit_log(async_client: AsyncClient) -> None:
    key = unique("py:audit-async")
    limit = rl.Limit(gcra=rl.Gcra(limit=1, period=Duration(seconds=60)))
    await async_client.ratelimit.reset(rl.ResetRequest(key=key, limit=limit))
    for _ in range(100):
        events = (await async_client.audit.list(audit_pb2.ListRequest())).events
        found = [e for e in events if e.target == key]
        if found:
            break
        await asyncio.sleep(0.05)
    assert [(e.method, e.principal, e.outcome) for e in found] == [(RESET, "anonymous", "OK")]
