"""QueueService through the Python client, against the real binary on Redis
and on the in-process memory store: every RPC (enqueue, lease, ack, nack
with retries and dead letters, extend, cancel, delays, dedup, priorities,
groups, batches, pause, stats, cron schedules) and the bidirectional
`Consume` stream, which the generated wrappers leave to the stub
(`client.queue.stub.Consume`)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from datalayer import AsyncClient, Client, FailedPrecondition, InvalidArgument
from datalayer.errors import from_rpc_error
from datalayer.queue.v1 import queue_pb2 as qp

from .conftest import Stack, require, unique

SERVICE = "datalayer.queue.v1.QueueService"


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


@pytest.fixture(params=["redis", "memory"])
def queue_client(request: pytest.FixtureRequest) -> Client:
    """A client of the binary on Redis, then of the one on the memory store."""
    name = "client" if request.param == "redis" else "memory_client"
    c: Client = request.getfixturevalue(name)
    return c


def queue_name() -> str:
    return unique("py.queue")


def ms(n: int) -> Duration:
    return Duration(seconds=n // 1000, nanos=(n % 1000) * 1_000_000)


def secs(d: Duration) -> float:
    return d.ToTimedelta().total_seconds()


def seconds_from_now(t: Timestamp) -> float:
    return (t.ToDatetime(tzinfo=timezone.utc) - datetime.now(timezone.utc)).total_seconds()


def fixed(n_ms: int) -> qp.Backoff:
    return qp.Backoff(fixed=ms(n_ms))


def enqueue(c: Client, q: str, spec: qp.MessageSpec) -> qp.EnqueueResponse:
    return c.queue.enqueue(qp.EnqueueRequest(queue=q, message=spec))


def lease(
    c: Client, q: str, n: int = 10, *, lease_ms: int | None = None, wait_ms: int | None = None
) -> list[qp.Message]:
    req = qp.LeaseRequest(queue=q, max_messages=n)
    if lease_ms is not None:
        req.lease_duration.CopyFrom(ms(lease_ms))
    if wait_ms is not None:
        req.wait.CopyFrom(ms(wait_ms))
    return list(c.queue.lease(req).messages)


def ack(c: Client, q: str, m: qp.Message) -> None:
    c.queue.ack(qp.AckRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token))


def stats(c: Client, q: str) -> qp.StatsResponse:
    return c.queue.stats(qp.StatsRequest(queue=q))


def payloads(ms_: list[qp.Message]) -> list[bytes]:
    return [m.payload for m in ms_]


# ------------------------------------------------------- deliveries and acks


def test_enqueue_lease_ack_round_trip(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    sent = enqueue(c, q, qp.MessageSpec(payload=b"job-1\x00\xff", headers={"kind": "rsi", "trace-id": "t.1"}))
    assert sent.message_id and not sent.deduplicated
    waiting = stats(c, q)
    assert (waiting.waiting, waiting.leased, waiting.enqueued_total) == (1, 0, 1)
    assert waiting.HasField("oldest_waiting_age") and secs(waiting.oldest_waiting_age) < 5

    got = lease(c, q)
    assert len(got) == 1
    m = got[0]
    assert (m.message_id, m.payload) == (sent.message_id, b"job-1\x00\xff")
    assert dict(m.headers) == {"kind": "rsi", "trace-id": "t.1"}
    assert (m.attempt, m.max_attempts, m.priority, m.group_key) == (1, 5, 0, "")  # queue.default_max_attempts
    assert m.lease_token
    assert 25 < seconds_from_now(m.lease_expires_at) <= 31  # queue.default_lease: 30 s
    assert -5 < seconds_from_now(m.enqueued_at) <= 1
    leased = stats(c, q)
    assert (leased.waiting, leased.leased) == (0, 1)
    assert lease(c, q) == [], "a leased message is not delivered twice"

    ack(c, q, m)
    ack(c, q, m)  # a repeated ack of the same lease is a normal answer
    assert lease(c, q) == []
    done = stats(c, q)
    assert (done.waiting, done.leased, done.dead, done.enqueued_total, done.acked_total) == (0, 0, 0, 1, 1)

    with pytest.raises(FailedPrecondition, match="lease lost"):
        c.queue.ack(qp.AckRequest(queue=q, message_id=m.message_id, lease_token="not-the-token"))


def test_an_expired_lease_redelivers_and_fences_the_old_token(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    enqueue(c, q, qp.MessageSpec(payload=b"x", backoff=fixed(0)))
    first = lease(c, q, 1, lease_ms=300)[0]
    assert 0 < seconds_from_now(first.lease_expires_at) <= 0.4
    assert lease(c, q) == [], "not before the lease runs out"
    time.sleep(0.5)
    second = lease(c, q, 1, wait_ms=2000)[0]
    assert (second.message_id, second.attempt) == (first.message_id, 2)
    assert second.lease_token != first.lease_token
    assert stats(c, q).retried_total == 1

    # The first delivery is fenced out of every lease operation.
    mid, token = first.message_id, first.lease_token
    with pytest.raises(FailedPrecondition, match="lease lost"):
        c.queue.ack(qp.AckRequest(queue=q, message_id=mid, lease_token=token))
    with pytest.raises(FailedPrecondition, match="lease lost"):
        c.queue.nack(qp.NackRequest(queue=q, message_id=mid, lease_token=token))
    with pytest.raises(FailedPrecondition, match="lease lost"):
        c.queue.extend_lease(qp.ExtendLeaseRequest(queue=q, message_id=mid, lease_token=token, lease_duration=ms(5000)))
    ack(c, q, second)
    assert stats(c, q).acked_total == 1


def test_extend_lease_keeps_the_message_past_its_first_lease(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    enqueue(c, q, qp.MessageSpec(payload=b"long job", backoff=fixed(0)))
    m = lease(c, q, 1, lease_ms=400)[0]
    extended = c.queue.extend_lease(
        qp.ExtendLeaseRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token, lease_duration=ms(10_000))
    )
    assert 9 < seconds_from_now(extended.lease_expires_at) <= 10.5
    time.sleep(0.6)  # past the first lease
    assert lease(c, q) == [], "still leased"
    s = stats(c, q)
    assert (s.leased, s.retried_total) == (1, 0)
    ack(c, q, m)  # the same token still holds the message
    assert stats(c, q).acked_total == 1
    with pytest.raises(InvalidArgument) as bad:
        c.queue.extend_lease(
            qp.ExtendLeaseRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token, lease_duration=ms(10))
        )
    assert [v.field for v in bad.value.field_violations] == ["lease_duration"]


# ------------------------------------------------ retries and dead letters


def test_nack_retries_with_backoff_then_dead_letters_once(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    mid = enqueue(c, q, qp.MessageSpec(payload=b"flaky", max_attempts=3, backoff=fixed(50))).message_id
    attempts: list[int] = []
    answers: list[bool] = []
    for _ in range(3):
        m = lease(c, q, 1, wait_ms=3000)[0]
        assert m.message_id == mid and m.max_attempts == 3
        attempts.append(m.attempt)
        nack = c.queue.nack(
            qp.NackRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token, reason=f"failed {m.attempt}")
        )
        answers.append(nack.dead)
    assert attempts == [1, 2, 3]
    assert answers == [False, False, True], "dead after max_attempts, not before"
    assert lease(c, q, 1, wait_ms=300) == [], "a dead message is not delivered"

    dead = c.queue.list_dead(qp.ListDeadRequest(queue=q)).messages
    assert len(dead) == 1 and dead[0].reason == "failed 3"
    assert (dead[0].message.message_id, dead[0].message.payload, dead[0].message.attempt) == (mid, b"flaky", 3)
    assert -5 < seconds_from_now(dead[0].died_at) <= 1
    s = stats(c, q)
    assert (s.waiting, s.delayed, s.leased, s.dead, s.dead_total, s.retried_total) == (0, 0, 0, 1, 1, 2)


def test_nack_retry_after_overrides_the_backoff(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    # The message's own backoff would hold it back for a minute.
    enqueue(c, q, qp.MessageSpec(payload=b"r", backoff=fixed(60_000)))
    m = lease(c, q, 1)[0]
    answer = c.queue.nack(
        qp.NackRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token, retry_after=ms(300))
    )
    assert not answer.dead
    assert lease(c, q) == [], "not before retry_after"
    assert stats(c, q).delayed == 1
    started = time.monotonic()
    again = lease(c, q, 1, wait_ms=3000)
    assert [(a.message_id, a.attempt) for a in again] == [(m.message_id, 2)]
    assert time.monotonic() - started < 2.5, "retried after retry_after, not the 60 s backoff"
    m = again[0]
    too_late = ms(31 * 86_400_000)  # past queue.max_delay (30 days)
    with pytest.raises(InvalidArgument) as bad:
        c.queue.nack(qp.NackRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token, retry_after=too_late))
    assert [v.field for v in bad.value.field_violations] == ["retry_after"]


def test_dead_letters_page_redrive_and_purge(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    ids = [enqueue(c, q, qp.MessageSpec(payload=p)).message_id for p in (b"d0", b"d1", b"d2")]
    for m in lease(c, q, 3):
        reason = f"bad {m.payload!r}"
        answer = c.queue.nack(
            qp.NackRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token, dead_letter=True, reason=reason)
        )
        assert answer.dead, "dead_letter sends it to the dead letters at the first attempt"
    assert stats(c, q).dead == 3

    # Oldest first, two per page.
    page1 = c.queue.list_dead(qp.ListDeadRequest(queue=q, limit=2))
    assert [d.message.message_id for d in page1.messages] == ids[:2] and page1.next_cursor
    assert [d.reason for d in page1.messages] == ["bad b'd0'", "bad b'd1'"]
    page2 = c.queue.list_dead(qp.ListDeadRequest(queue=q, limit=2, cursor=page1.next_cursor))
    assert [d.message.message_id for d in page2.messages] == ids[2:] and page2.next_cursor == ""
    with pytest.raises(InvalidArgument) as bad:
        c.queue.list_dead(qp.ListDeadRequest(queue=q, cursor="not-a-cursor"))
    assert [v.field for v in bad.value.field_violations] == ["cursor"]

    # Redrive one by id: back with fresh attempts; an id that is not dead is not counted.
    redriven = c.queue.redrive_dead(qp.RedriveDeadRequest(queue=q, message_ids=[ids[1], "999999999"]))
    assert redriven.redriven == 1
    back = lease(c, q, 10, wait_ms=2000)
    assert [(m.message_id, m.payload, m.attempt) for m in back] == [(ids[1], b"d1", 1)]
    ack(c, q, back[0])
    assert [d.message.message_id for d in c.queue.list_dead(qp.ListDeadRequest(queue=q)).messages] == [ids[0], ids[2]]

    # Purge one by id, then every one left.
    assert c.queue.purge_dead(qp.PurgeDeadRequest(queue=q, message_ids=[ids[2]])).purged == 1
    assert c.queue.purge_dead(qp.PurgeDeadRequest(queue=q, message_ids=[ids[2]])).purged == 0
    assert c.queue.purge_dead(qp.PurgeDeadRequest(queue=q)).purged == 1
    assert list(c.queue.list_dead(qp.ListDeadRequest(queue=q)).messages) == []
    s = stats(c, q)
    assert (s.dead, s.dead_total, s.acked_total) == (0, 3, 1)
    # Redrive with no ids takes every dead message; none are left.
    assert c.queue.redrive_dead(qp.RedriveDeadRequest(queue=q)).redriven == 0


# ---------------------------------------------- cancel, delay, dedup, order


def test_cancel_removes_a_waiting_message_not_a_leased_one(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    a = enqueue(c, q, qp.MessageSpec(payload=b"a")).message_id
    b = enqueue(c, q, qp.MessageSpec(payload=b"b")).message_id
    assert c.queue.cancel(qp.CancelRequest(queue=q, message_id=b)).cancelled
    assert not c.queue.cancel(qp.CancelRequest(queue=q, message_id=b)).cancelled, "already gone"
    got = lease(c, q)
    assert [m.message_id for m in got] == [a]
    assert not c.queue.cancel(qp.CancelRequest(queue=q, message_id=a)).cancelled, "leased: not cancelled"
    assert not c.queue.cancel(qp.CancelRequest(queue=q, message_id="999999999")).cancelled
    ack(c, q, got[0])
    s = stats(c, q)
    assert (s.waiting, s.leased, s.acked_total, s.enqueued_total) == (0, 0, 1, 2)


def test_cancel_of_a_bad_id_names_the_message_id_field(queue_client: Client) -> None:
    with pytest.raises(InvalidArgument) as bad:
        queue_client.queue.cancel(qp.CancelRequest(queue=queue_name(), message_id="not-an-id"))
    # CancelRequest has one field `message_id`: the violation must name it
    # (as Ack, Nack and ExtendLease do), not a `message_ids[0]` it lacks.
    assert [v.field for v in bad.value.field_violations] == ["message_id"]


def test_delay_holds_a_message_back_and_a_long_poll_gets_it(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    enqueue(c, q, qp.MessageSpec(payload=b"later", delay=ms(500)))
    enqueue(c, q, qp.MessageSpec(payload=b"now"))
    assert payloads(lease(c, q)) == [b"now"]
    s = stats(c, q)
    assert (s.delayed, s.waiting) == (1, 0)
    started = time.monotonic()
    got = lease(c, q, 10, wait_ms=3000)
    elapsed = time.monotonic() - started
    assert payloads(got) == [b"later"]
    assert 0.2 < elapsed < 2.5, elapsed

    # not_before: an absolute time, likewise.
    at = Timestamp()
    at.FromDatetime(datetime.now(timezone.utc) + timedelta(milliseconds=400))
    enqueue(c, q, qp.MessageSpec(payload=b"at", not_before=at))
    assert lease(c, q) == []
    assert payloads(lease(c, q, 10, wait_ms=3000)) == [b"at"]


def test_a_long_poll_wakes_on_an_enqueue(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    got: list[qp.Message] = []
    poller = threading.Thread(target=lambda: got.extend(lease(c, q, 1, wait_ms=4000)))
    started = time.monotonic()
    poller.start()
    time.sleep(0.3)
    enqueue(c, q, qp.MessageSpec(payload=b"wake"))
    poller.join(timeout=6)
    assert payloads(got) == [b"wake"]
    assert time.monotonic() - started < 3, "woken by the enqueue, not by the end of the wait"


def test_dedup_id_answers_the_first_id_within_the_window(queue_client: Client) -> None:
    c, q = queue_client, queue_name()

    def with_id(dedup: str) -> qp.MessageSpec:
        return qp.MessageSpec(payload=b"order", dedup_id=dedup, dedup_window=ms(1000))

    first = enqueue(c, q, with_id("order-7"))
    again = enqueue(c, q, with_id("order-7"))
    assert not first.deduplicated and again.deduplicated
    assert again.message_id == first.message_id
    other = enqueue(c, q, with_id("order-8"))
    assert not other.deduplicated and other.message_id != first.message_id
    assert stats(c, q).waiting == 2
    time.sleep(1.2)  # past the window
    later = enqueue(c, q, with_id("order-7"))
    assert not later.deduplicated and later.message_id not in (first.message_id, other.message_id)
    s = stats(c, q)
    assert (s.waiting, s.enqueued_total) == (3, 3)


def test_higher_priority_first_then_fifo(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    for p, prio in [(b"a", 0), (b"b", 0), (b"c", 5), (b"d", 5), (b"e", 9)]:
        enqueue(c, q, qp.MessageSpec(payload=p, priority=prio))
    got = lease(c, q, 10)
    assert payloads(got) == [b"e", b"c", b"d", b"a", b"b"]
    assert [m.priority for m in got] == [9, 5, 5, 0, 0]


def test_a_group_delivers_one_at_a_time_in_order_across_retries(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    for p, g in [(b"a1", "acct-a"), (b"a2", "acct-a"), (b"b1", "acct-b"), (b"a3", "acct-a")]:
        enqueue(c, q, qp.MessageSpec(payload=p, group_key=g))
    first = lease(c, q, 10)
    assert payloads(first) == [b"a1", b"b1"], "one message per group"
    assert [m.group_key for m in first] == ["acct-a", "acct-b"]
    a1 = first[0]
    c.queue.nack(qp.NackRequest(queue=q, message_id=a1.message_id, lease_token=a1.lease_token, retry_after=ms(100)))
    retried = lease(c, q, 10, wait_ms=3000)
    assert [(m.payload, m.attempt) for m in retried] == [(b"a1", 2)], "a2 waits behind the retried a1"
    ack(c, q, retried[0])
    assert payloads(lease(c, q, 10)) == [b"a2"]


def test_enqueue_batch_answers_in_order(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    batch = c.queue.enqueue_batch(
        qp.EnqueueBatchRequest(
            queue=q,
            messages=[
                qp.MessageSpec(payload=b"x"),
                qp.MessageSpec(payload=b"y", dedup_id="same"),
                qp.MessageSpec(payload=b"z", dedup_id="same"),
                qp.MessageSpec(payload=b"w", headers={"n": "4"}),
            ],
        )
    )
    results = list(batch.results)
    assert [r.deduplicated for r in results] == [False, False, True, False]
    assert results[2].message_id == results[1].message_id
    assert len({r.message_id for r in results}) == 3
    got = lease(c, q, 10)
    assert [(m.message_id, m.payload) for m in got] == [
        (results[0].message_id, b"x"),
        (results[1].message_id, b"y"),
        (results[3].message_id, b"w"),
    ]
    assert dict(got[2].headers) == {"n": "4"}

    # One bad message refuses the whole batch, naming it by index.
    with pytest.raises(InvalidArgument) as bad:
        c.queue.enqueue_batch(
            qp.EnqueueBatchRequest(queue=q, messages=[qp.MessageSpec(payload=b"ok"), qp.MessageSpec(priority=10)])
        )
    assert [v.field for v in bad.value.field_violations] == ["messages[1].priority"]
    assert stats(c, q).enqueued_total == 3
    with pytest.raises(InvalidArgument) as too_many:
        c.queue.enqueue_batch(qp.EnqueueBatchRequest(queue=q, messages=[qp.MessageSpec()] * 101))
    assert [v.field for v in too_many.value.field_violations] == ["messages"]


def test_pause_stops_deliveries_not_enqueues_and_resume_restarts_them(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    enqueue(c, q, qp.MessageSpec(payload=b"x"))
    c.queue.pause(qp.PauseRequest(queue=q))
    enqueue(c, q, qp.MessageSpec(payload=b"y"))
    assert lease(c, q, 10) == []
    s = stats(c, q)
    assert s.paused and (s.waiting, s.leased) == (2, 0)
    c.queue.resume(qp.ResumeRequest(queue=q))
    assert not stats(c, q).paused
    got = lease(c, q, 10)
    assert payloads(got) == [b"x", b"y"]
    for m in got:
        ack(c, q, m)
    s = stats(c, q)
    assert (s.enqueued_total, s.acked_total, s.waiting) == (2, 2, 0)
    assert s.enqueue_rate > 0 and s.ack_rate > 0


def test_bad_input_names_the_fields(queue_client: Client) -> None:
    c = queue_client
    bad_spec = qp.MessageSpec(
        priority=12, max_attempts=100_000, headers={"bad name": "v"}, backoff=fixed(3 * 86_400_000)
    )
    with pytest.raises(InvalidArgument) as bad:
        c.queue.enqueue(qp.EnqueueRequest(queue="bad queue", message=bad_spec))
    assert {v.field for v in bad.value.field_violations} == {
        "queue",
        "message.priority",
        "message.max_attempts",
        "message.headers",
        "message.backoff.fixed",
    }
    with pytest.raises(InvalidArgument) as missing:
        c.queue.enqueue(qp.EnqueueRequest(queue=queue_name()))
    assert [v.field for v in missing.value.field_violations] == ["message"]
    with pytest.raises(InvalidArgument) as wait:
        c.queue.lease(qp.LeaseRequest(queue=queue_name(), max_messages=100_000, wait=ms(3_600_000)))
    assert {v.field for v in wait.value.field_violations} == {"max_messages", "wait"}
    with pytest.raises(InvalidArgument) as ref:
        c.queue.ack(qp.AckRequest(queue=queue_name(), message_id="abc"))
    assert {v.field for v in ref.value.field_violations} == {"message_id", "lease_token"}
    with pytest.raises(InvalidArgument) as stats_bad:
        c.queue.stats(qp.StatsRequest(queue=""))
    assert [v.field for v in stats_bad.value.field_violations] == ["queue"]


# ------------------------------------------------------------- schedules


def test_schedules_are_stored_listed_replaced_and_deleted(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    template = qp.MessageSpec(payload=b"report", headers={"kind": "daily"}, priority=3, max_attempts=2)
    made = c.queue.upsert_schedule(
        qp.UpsertScheduleRequest(
            queue=q,
            schedule=qp.Schedule(id="daily", cron="0 9 * * MON-FRI", time_zone="Europe/Paris", template=template),
        )
    ).schedule
    assert (made.id, made.cron, made.time_zone) == ("daily", "0 9 * * MON-FRI", "Europe/Paris")
    assert (made.template.payload, dict(made.template.headers)) == (b"report", {"kind": "daily"})
    assert (made.template.priority, made.template.max_attempts) == (3, 2)
    # The next run is the next weekday 09:00 in Paris.
    paris = made.next_run.ToDatetime(tzinfo=timezone.utc).astimezone(ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute, paris.second) == (9, 0, 0) and paris.weekday() < 5
    assert 0 < seconds_from_now(made.next_run) <= 4 * 86_400

    listed = c.queue.list_schedules(qp.ListSchedulesRequest(queue=q)).schedules
    assert [(s.id, s.cron, s.time_zone, s.next_run) for s in listed] == [
        ("daily", "0 9 * * MON-FRI", "Europe/Paris", made.next_run)
    ]
    assert listed[0].template.payload == b"report"

    # Upsert with the same id replaces; another id adds.
    c.queue.upsert_schedule(
        qp.UpsertScheduleRequest(queue=q, schedule=qp.Schedule(id="daily", cron="30 6 * * *", template=template))
    )
    c.queue.upsert_schedule(
        qp.UpsertScheduleRequest(queue=q, schedule=qp.Schedule(id="yearly", cron="0 0 1 1 *", template=template))
    )
    listed = c.queue.list_schedules(qp.ListSchedulesRequest(queue=q)).schedules
    assert sorted((s.id, s.cron, s.time_zone) for s in listed) == [
        ("daily", "30 6 * * *", ""),
        ("yearly", "0 0 1 1 *", ""),
    ]
    utc = next(s for s in listed if s.id == "daily").next_run.ToDatetime(tzinfo=timezone.utc)
    assert (utc.hour, utc.minute) == (6, 30)

    assert c.queue.delete_schedule(qp.DeleteScheduleRequest(queue=q, id="daily")).deleted
    assert not c.queue.delete_schedule(qp.DeleteScheduleRequest(queue=q, id="daily")).deleted
    assert [s.id for s in c.queue.list_schedules(qp.ListSchedulesRequest(queue=q)).schedules] == ["yearly"]
    assert c.queue.delete_schedule(qp.DeleteScheduleRequest(queue=q, id="yearly")).deleted
    assert list(c.queue.list_schedules(qp.ListSchedulesRequest(queue=q)).schedules) == []
    assert stats(c, q).enqueued_total == 0, "no tick was due"


def test_a_schedule_enqueues_one_message_per_tick(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    c.queue.upsert_schedule(
        qp.UpsertScheduleRequest(
            queue=q,
            schedule=qp.Schedule(id="every-second", cron="* * * * * *", template=qp.MessageSpec(payload=b"tick")),
        )
    )
    ticks: list[qp.Message] = []
    deadline = time.monotonic() + 8
    while len(ticks) < 2:
        assert time.monotonic() < deadline, f"the schedule fired {len(ticks)} times in 8 s"
        ticks.extend(lease(c, q, 10, wait_ms=2000))
    assert c.queue.delete_schedule(qp.DeleteScheduleRequest(queue=q, id="every-second")).deleted
    time.sleep(0.3)
    ticks.extend(lease(c, q, 100))  # any tick that fired before the delete
    assert {m.payload for m in ticks} == {b"tick"}
    assert {m.headers["schedule-id"] for m in ticks} == {"every-second"}
    at = sorted(int(m.headers["schedule-tick"]) for m in ticks)
    assert len(set(at)) == len(at), f"a tick fired twice: {at}"
    assert all(t % 1000 == 0 for t in at), at
    # Deleted (a tick is fired atomically, before or after the delete): no more ticks.
    time.sleep(2.2)
    assert lease(c, q, 100) == []
    assert list(c.queue.list_schedules(qp.ListSchedulesRequest(queue=q)).schedules) == []


def test_bad_schedules_name_their_fields(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    with pytest.raises(InvalidArgument) as bad:
        c.queue.upsert_schedule(
            qp.UpsertScheduleRequest(
                queue=q,
                schedule=qp.Schedule(
                    id="x", cron="every day", time_zone="Mars/Olympus", template=qp.MessageSpec(payload=b"t")
                ),
            )
        )
    assert {v.field for v in bad.value.field_violations} == {"schedule.cron", "schedule.time_zone"}
    at = Timestamp(seconds=int(time.time()) + 60)
    with pytest.raises(InvalidArgument) as absolute:
        c.queue.upsert_schedule(
            qp.UpsertScheduleRequest(
                queue=q, schedule=qp.Schedule(id="y", cron="0 0 * * *", template=qp.MessageSpec(not_before=at))
            )
        )
    assert [v.field for v in absolute.value.field_violations] == ["schedule.template.not_before"]
    with pytest.raises(InvalidArgument) as dedup:
        c.queue.upsert_schedule(
            qp.UpsertScheduleRequest(
                queue=q, schedule=qp.Schedule(id="z", cron="0 0 * * *", template=qp.MessageSpec(dedup_id="d"))
            )
        )
    assert [v.field for v in dedup.value.field_violations] == ["schedule.template.dedup_id"]
    with pytest.raises(InvalidArgument) as no_template:
        c.queue.upsert_schedule(qp.UpsertScheduleRequest(queue=q, schedule=qp.Schedule(id="t", cron="0 0 * * *")))
    assert [v.field for v in no_template.value.field_violations] == ["schedule.template"]
    assert list(c.queue.list_schedules(qp.ListSchedulesRequest(queue=q)).schedules) == []


# ----------------------------------------------------------------- Consume


class Consumer:
    """A `Consume` stream: requests fed from a queue, answers drained by a
    thread (so a test can also see that nothing arrives)."""

    def __init__(self, c: Client, start: qp.ConsumeRequest) -> None:
        self._requests: queue.Queue[qp.ConsumeRequest | None] = queue.Queue()
        self._requests.put(start)
        self.answers: queue.Queue[object] = queue.Queue()
        self.call = c.queue.stub.Consume(self._outbound(), timeout=30)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _outbound(self) -> Iterator[qp.ConsumeRequest]:
        while True:
            r = self._requests.get()
            if r is None:
                return
            yield r

    def _drain(self) -> None:
        try:
            for answer in self.call:
                self.answers.put(answer)
            self.answers.put("end")
        except grpc.RpcError as e:
            self.answers.put(from_rpc_error(e))

    def credit(self, n: int) -> None:
        self._requests.put(qp.ConsumeRequest(credit=n))

    def next(self, timeout: float = 5.0) -> qp.Message:
        item = self.answers.get(timeout=timeout)
        assert isinstance(item, qp.ConsumeResponse), item
        return item.message

    def end(self, timeout: float = 5.0) -> object:
        """What ended the stream: "end", or the error."""
        item = self.answers.get(timeout=timeout)
        assert not isinstance(item, qp.ConsumeResponse), item
        return item

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self._reader.join(timeout=5)


def start(q: str, credits: int, lease_ms: int | None = None) -> qp.ConsumeRequest:
    s = qp.ConsumeRequest.Start(queue=q, credits=credits)
    if lease_ms is not None:
        s.lease_duration.CopyFrom(ms(lease_ms))
    return qp.ConsumeRequest(start=s)


def test_consume_sends_no_more_than_the_credits_granted(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    for i in range(5):
        enqueue(c, q, qp.MessageSpec(payload=f"m{i}".encode(), headers={"i": str(i)}))
    consumer = Consumer(c, start(q, 2, lease_ms=20_000))
    try:
        got = [consumer.next(), consumer.next()]
        with pytest.raises(queue.Empty):
            consumer.answers.get(timeout=0.8)  # no message past the credits
        assert stats(c, q).leased == 2
        consumer.credit(1)
        got.append(consumer.next())
        assert payloads(got) == [b"m0", b"m1", b"m2"]
        assert [m.headers["i"] for m in got] == ["0", "1", "2"]
        assert all(m.attempt == 1 and m.lease_token for m in got)
        assert all(15 < seconds_from_now(m.lease_expires_at) <= 21 for m in got), "start.lease_duration"
        with pytest.raises(queue.Empty):
            consumer.answers.get(timeout=0.5)
        s = stats(c, q)
        assert (s.leased, s.waiting) == (3, 2)

        # Deliveries are leases: acked as Lease's are.
        for m in got:
            ack(c, q, m)
        assert stats(c, q).acked_total == 3

        # A message enqueued while the consumer waits with credits arrives.
        consumer.credit(3)
        more = [consumer.next(), consumer.next()]
        assert payloads(more) == [b"m3", b"m4"]
        enqueue(c, q, qp.MessageSpec(payload=b"late"))
        late = consumer.next()
        assert late.payload == b"late"
        for m in [*more, late]:
            ack(c, q, m)
        s = stats(c, q)
        assert (s.acked_total, s.leased, s.waiting) == (6, 0, 0)
    finally:
        consumer.close()


def test_consume_ends_when_the_consumer_is_done_and_checks_start(queue_client: Client) -> None:
    c, q = queue_client, queue_name()
    enqueue(c, q, qp.MessageSpec(payload=b"only"))
    consumer = Consumer(c, start(q, 1))
    try:
        m = consumer.next()
        assert m.payload == b"only"
        consumer._requests.put(None)  # half-close with no credit left: the stream ends
        assert consumer.end() == "end"
        ack(c, q, m)
    finally:
        consumer.close()

    not_started = Consumer(c, qp.ConsumeRequest(credit=1))
    try:
        err = not_started.end()
        assert isinstance(err, InvalidArgument), err
        assert [v.field for v in err.field_violations] == ["start"]
    finally:
        not_started.close()

    bad = Consumer(c, qp.ConsumeRequest(start=qp.ConsumeRequest.Start(queue="bad queue", credits=1)))
    try:
        err = bad.end()
        assert isinstance(err, InvalidArgument), err
        assert [v.field for v in err.field_violations] == ["start.queue"]
    finally:
        bad.close()

    greedy = Consumer(c, start(q, 1))
    try:
        greedy.credit(20_000)
        err = greedy.end()
        assert isinstance(err, InvalidArgument), err
        assert [v.field for v in err.field_violations] == ["credit"]
    finally:
        greedy.close()


async def test_async_consume_and_ack(async_client: AsyncClient) -> None:
    q = queue_name()
    await async_client.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"a1")))
    credits: asyncio.Queue[int | None] = asyncio.Queue()

    async def outbound() -> AsyncIterator[qp.ConsumeRequest]:
        yield start(q, 1)
        while (n := await credits.get()) is not None:
            yield qp.ConsumeRequest(credit=n)

    call = async_client.queue.stub.Consume(outbound(), timeout=30)

    async def read() -> qp.Message:
        answer = await asyncio.wait_for(call.read(), 5)
        assert isinstance(answer, qp.ConsumeResponse), answer
        return answer.message

    try:
        first = await read()
        assert (first.payload, first.attempt) == (b"a1", 1)
        await async_client.queue.enqueue(qp.EnqueueRequest(queue=q, message=qp.MessageSpec(payload=b"a2")))
        await credits.put(1)
        second = await read()
        assert second.payload == b"a2"
        for m in (first, second):
            await async_client.queue.ack(qp.AckRequest(queue=q, message_id=m.message_id, lease_token=m.lease_token))
        s = await async_client.queue.stats(qp.StatsRequest(queue=q))
        assert (s.acked_total, s.leased, s.waiting) == (2, 0, 0)
    finally:
        await credits.put(None)
        call.cancel()
