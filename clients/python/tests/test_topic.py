"""TopicService through the Python client, against the real binary on Redis
and on the in-process memory store: every RPC (publish, batches, fan-out
subscriptions replayed from an id, from a time or from now, resumed after a
disconnect while publishing goes on; consumer groups with acks and
redelivery after `ack_timeout`; stats, delete, bad input)."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from datalayer import AsyncClient, Client, InvalidArgument, ServerStream
from datalayer.topic.v1 import topic_pb2 as tp

from .conftest import Stack, require, unique, wait_for

SERVICE = "datalayer.topic.v1.TopicService"
#: topic.max_payload_bytes (docs/configuration.md).
MAX_PAYLOAD = 256 * 1024


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


@pytest.fixture(params=["redis", "memory"])
def topic_client(request: pytest.FixtureRequest) -> Client:
    """A client of the binary on Redis, then of the one on the memory store."""
    name = "client" if request.param == "redis" else "memory_client"
    c: Client = request.getfixturevalue(name)
    return c


def topic_name() -> str:
    return unique("py.topic")


def ms(n: int) -> Duration:
    return Duration(seconds=n // 1000, nanos=(n % 1000) * 1_000_000)


def id_key(message_id: str) -> tuple[int, int]:
    """A message id (`<ms>-<seq>`) as a sortable pair."""
    millis, _, seq = message_id.partition("-")
    return int(millis), int(seq or 0)


def publish(c: Client, topic: str, payload: bytes, **headers: str) -> str:
    return c.topic.publish(tp.PublishRequest(topic=topic, payload=payload, headers=headers)).id


def stats(c: Client, topic: str) -> tp.GetTopicStatsResponse:
    return c.topic.get_topic_stats(tp.GetTopicStatsRequest(topic=topic))


class Subscription:
    """A Subscribe stream read by a thread into a queue, so a test waits
    for the next event with a timeout and can drop the stream at any time."""

    def __init__(self, c: Client, request: tp.SubscribeRequest) -> None:
        self.stream: ServerStream[tp.SubscribeResponse] = c.topic.subscribe(request)
        self.events: queue.Queue[object] = queue.Queue()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        try:
            for event in self.stream:
                self.events.put(event)
            self.events.put("end")
        except Exception as e:  # handed to the test thread
            self.events.put(e)

    def event(self, timeout: float = 5.0) -> tp.SubscribeResponse:
        item = self.events.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, tp.SubscribeResponse), item
        return item

    def message(self, timeout: float = 5.0) -> tp.Message:
        event = self.event(timeout)
        assert event.WhichOneof("event") == "message", event
        return event.message

    def messages(self, n: int, timeout: float = 5.0) -> list[tp.Message]:
        return [self.message(timeout) for _ in range(n)]

    def quiet(self, seconds: float) -> bool:
        """Nothing arrives for `seconds`."""
        try:
            item = self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        self.events.put(item)
        return False

    def close(self) -> None:
        self.stream.cancel()
        self.reader.join(timeout=5)
        assert not self.reader.is_alive()


@pytest.fixture
def subscriptions() -> Iterator[list[Subscription]]:
    """Subscriptions a test opens (`open`), closed when it ends."""
    opened: list[Subscription] = []
    yield opened
    for s in opened:
        s.stream.cancel()


def subscribe(opened: list[Subscription], c: Client, topic: str, **fields: object) -> Subscription:
    s = Subscription(c, tp.SubscribeRequest(topic=topic, **fields))  # type: ignore[arg-type]
    opened.append(s)
    return s


def live(s: Subscription, c: Client, topic: str, timeout: float = 10.0) -> list[tp.Message]:
    """Publishes `sentinel <n>` until one reaches `s` (so it follows the
    topic live); the sentinels it got, in order."""
    deadline = time.monotonic() + timeout
    for n in itertools.count():
        publish(c, topic, f"sentinel {n}".encode())
        try:
            got = [s.message(timeout=0.3)]
            break
        except queue.Empty:
            assert time.monotonic() < deadline, "the subscription never followed the topic"
    while not s.quiet(0.3):
        got.append(s.message())
    return got


# ------------------------------------------------------- publish and replay


def test_publish_batch_and_replay_from_the_start_in_order(
    topic_client: Client, subscriptions: list[Subscription]
) -> None:
    c, t = topic_client, topic_name()
    before = time.time()
    first = publish(c, t, b"one\x00\xff", kind="trade", **{"trace-id": "t.1"})
    batch = c.topic.publish_batch(
        tp.PublishBatchRequest(
            topic=t,
            messages=[
                tp.NewMessage(payload=b"two", headers={"n": "2"}),
                tp.NewMessage(payload=b""),
                tp.NewMessage(payload=b"four", headers={"n": "4", "empty": ""}),
            ],
        )
    ).ids
    ids = [first, *batch]
    assert len(batch) == 3 and len(set(ids)) == 4
    assert [id_key(i) for i in ids] == sorted(id_key(i) for i in ids), "ids grow in the order published"

    s = subscribe(subscriptions, c, t, after_id="0-0")
    got = s.messages(4)
    assert [m.id for m in got] == ids
    assert [m.payload for m in got] == [b"one\x00\xff", b"two", b"", b"four"]
    assert [dict(m.headers) for m in got] == [
        {"kind": "trade", "trace-id": "t.1"},
        {"n": "2"},
        {},
        {"n": "4", "empty": ""},
    ]
    for m in got:
        published = m.publish_time.ToDatetime(tzinfo=timezone.utc).timestamp()
        assert before - 1 <= published <= time.time() + 1
        assert m.publish_time.ToMilliseconds() == id_key(m.id)[0], "publish_time is the id's milliseconds"
        assert m.delivery_count == 0, "a fan-out delivery carries no count"
    assert s.quiet(0.3), "nothing past what was published"

    # The same stream follows what is published next.
    later = publish(c, t, b"five")
    assert [(m.id, m.payload) for m in s.messages(1)] == [(later, b"five")]

    # From an id in the middle: what follows it, exactly.
    middle = subscribe(subscriptions, c, t, after_id=ids[1])
    assert [m.id for m in middle.messages(3)] == [ids[2], ids[3], later]
    assert middle.quiet(0.3)


def test_every_fan_out_subscriber_gets_every_message(topic_client: Client, subscriptions: list[Subscription]) -> None:
    c, t = topic_client, topic_name()
    a, b = subscribe(subscriptions, c, t, after_id="0-0"), subscribe(subscriptions, c, t, after_id="0-0")
    ids = c.topic.publish_batch(
        tp.PublishBatchRequest(topic=t, messages=[tp.NewMessage(payload=str(i).encode()) for i in range(5)])
    ).ids
    assert [m.id for m in a.messages(5)] == list(ids)
    assert [m.id for m in b.messages(5)] == list(ids)
    assert stats(c, t).local_subscribers == 2
    a.close()
    wait_for(lambda: stats(c, t).local_subscribers == 1)


def test_resume_after_a_disconnect_misses_and_repeats_nothing(topic_client: Client) -> None:
    """A publisher goes on while the subscriber drops its stream twice and
    subscribes again after the last id it saw: it sees every message once,
    in order."""
    c, t = topic_client, topic_name()
    total = 120
    published: list[tuple[str, bytes]] = []
    failed: list[BaseException] = []

    def publisher() -> None:
        try:
            for i in range(total):
                payload = f"m{i}".encode()
                published.append((publish(c, t, payload), payload))
                time.sleep(0.005)
        except BaseException as e:  # handed to the test thread
            failed.append(e)

    writer = threading.Thread(target=publisher, daemon=True)
    writer.start()
    seen: list[tuple[str, bytes]] = []
    last = "0-0"
    for upto in (15, 45, total):  # two disconnects, then to the end
        s = Subscription(c, tp.SubscribeRequest(topic=t, after_id=last))
        try:
            while len(seen) < upto:
                m = s.message(timeout=10)
                seen.append((m.id, m.payload))
                last = m.id
        finally:
            s.close()
        time.sleep(0.05)  # disconnected while the publisher goes on
    writer.join(timeout=30)
    assert not failed, failed
    assert len(published) == total
    assert seen == published, "every message once, in the order published"


def test_latest_gets_only_what_is_published_from_now_on(
    topic_client: Client, subscriptions: list[Subscription]
) -> None:
    c, t = topic_client, topic_name()
    for i in range(3):
        publish(c, t, f"old {i}".encode())
    for fields in ({"latest": True}, {}):  # `latest` is the default
        floor = id_key(stats(c, t).last_id)
        s = subscribe(subscriptions, c, t, **fields)
        sentinels = live(s, c, t)
        assert all(id_key(m.id) > floor for m in sentinels), "a message from before the subscription was replayed"
        new = [publish(c, t, f"new {i}".encode()) for i in range(3)]
        assert [m.id for m in s.messages(3)] == new
        assert s.quiet(0.2)
        s.close()


def test_since_replays_from_a_time(topic_client: Client, subscriptions: list[Subscription]) -> None:
    c, t = topic_client, topic_name()
    before = [publish(c, t, f"before {i}".encode()) for i in range(3)]
    time.sleep(0.05)
    after = [publish(c, t, f"after {i}".encode()) for i in range(3)]
    assert id_key(after[0])[0] > id_key(before[-1])[0], "in a later millisecond"

    # At the millisecond of the first `after`: it and what follows.
    at = Timestamp()
    at.FromMilliseconds(id_key(after[0])[0])
    s = subscribe(subscriptions, c, t, since=at)
    assert [m.id for m in s.messages(3)] == after
    assert s.quiet(0.3)

    # A time before the topic began: all of it.
    old = Timestamp()
    old.FromDatetime(datetime(2020, 1, 1, tzinfo=timezone.utc))
    everything = subscribe(subscriptions, c, t, since=old)
    assert [m.id for m in everything.messages(6)] == before + after


# ------------------------------------------------------------ consumer groups


def test_group_members_share_the_messages_and_ack(topic_client: Client, make_client) -> None:  # type: ignore[no-untyped-def]
    """Two members of one group, each acking what it gets: every message is
    delivered to exactly one of them, once."""
    c, t, g = topic_client, topic_name(), "workers"
    # Each member on its own connection, as two processes would be.
    other: Client = make_client(target=c.target)
    got: dict[str, list[tp.Message]] = {"a": [], "b": []}
    members = {
        name: Subscription(
            client, tp.SubscribeRequest(topic=t, group=g, consumer=name, after_id="0-0", ack_timeout=ms(10_000))
        )
        for name, client in (("a", c), ("b", other))
    }
    acked: list[int] = []
    stop = threading.Event()

    def work(name: str) -> None:
        s = members[name]
        while not stop.is_set():
            try:
                m = s.message(timeout=0.1)
            except queue.Empty:
                continue
            got[name].append(m)
            acked.append(c.topic.ack(tp.AckRequest(topic=t, group=g, ids=[m.id])).acked)

    workers = [threading.Thread(target=work, args=(name,), daemon=True) for name in members]
    for w in workers:
        w.start()
    try:
        ids = [publish(c, t, f"job {i}".encode()) for i in range(20)]
        for i in range(10):  # some later, one at a time
            ids.append(publish(c, t, f"job {20 + i}".encode()))
            time.sleep(0.03)
        wait_for(lambda: len(got["a"]) + len(got["b"]) >= len(ids), timeout=10)
        time.sleep(0.3)  # nothing more comes
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=5)
        for s in members.values():
            s.close()
    delivered = [m.id for m in got["a"] + got["b"]]
    assert sorted(delivered, key=id_key) == ids, "each message to exactly one member"
    assert not set(m.id for m in got["a"]) & set(m.id for m in got["b"])
    for name in members:
        assert [id_key(m.id) for m in got[name]] == sorted(id_key(m.id) for m in got[name]), "in order per member"
    assert all(m.delivery_count == 1 for m in got["a"] + got["b"])
    assert acked == [1] * len(ids)

    done = stats(c, t)
    assert done.exists and done.length == len(ids)
    assert [(gs.name, gs.pending, gs.consumers, gs.last_delivered_id) for gs in done.groups] == [(g, 0, 2, ids[-1])]


def test_unacked_messages_of_a_member_that_left_go_to_another(
    topic_client: Client, subscriptions: list[Subscription]
) -> None:
    c, t, g = topic_client, topic_name(), "g1"
    ack_timeout = 800
    ids = c.topic.publish_batch(
        tp.PublishBatchRequest(topic=t, messages=[tp.NewMessage(payload=f"job {i}".encode()) for i in range(3)])
    ).ids

    # The only member takes all three, acks the first, and leaves.
    a = subscribe(subscriptions, c, t, group=g, consumer="a", after_id="0-0", ack_timeout=ms(ack_timeout))
    first = a.messages(3)
    taken = time.monotonic()
    assert [(m.id, m.payload, m.delivery_count) for m in first] == [
        (ids[0], b"job 0", 1),
        (ids[1], b"job 1", 1),
        (ids[2], b"job 2", 1),
    ]
    assert c.topic.ack(tp.AckRequest(topic=t, group=g, ids=[ids[0]])).acked == 1
    assert c.topic.ack(tp.AckRequest(topic=t, group=g, ids=[ids[0]])).acked == 0, "already acknowledged"
    assert c.topic.ack(tp.AckRequest(topic=t, group="no-such-group", ids=[ids[1]])).acked == 0
    a.close()
    pending = stats(c, t).groups
    assert [(gs.name, gs.pending) for gs in pending] == [(g, 2)]

    # Another member gets what `a` did not acknowledge, once its ack
    # timeout has passed, delivered a second time.
    b = subscribe(subscriptions, c, t, group=g, consumer="b", ack_timeout=ms(ack_timeout))
    again = b.messages(2, timeout=10)
    waited = time.monotonic() - taken
    assert [(m.id, m.payload) for m in again] == [(ids[1], b"job 1"), (ids[2], b"job 2")]
    assert all(m.delivery_count >= 2 for m in again), [m.delivery_count for m in again]
    assert waited >= ack_timeout / 1000 - 0.1, f"redelivered after {waited:.3f}s, before the ack timeout"
    assert b.quiet(0.3), "the acknowledged message is not delivered again"

    assert c.topic.ack(tp.AckRequest(topic=t, group=g, ids=[m.id for m in again])).acked == 2
    after = stats(c, t)
    assert after.exists and (after.length, after.first_id, after.last_id) == (3, ids[0], ids[2])
    assert [(gs.name, gs.pending, gs.consumers, gs.last_delivered_id) for gs in after.groups] == [(g, 0, 2, ids[2])]
    assert b.quiet(ack_timeout / 1000 + 0.3), "nothing is redelivered once acknowledged"


def test_a_new_group_starts_where_from_says(topic_client: Client, subscriptions: list[Subscription]) -> None:
    c, t = topic_client, topic_name()
    old = publish(c, t, b"old")
    # No `from`: the group starts at the newest message, so `old` is not delivered.
    s = subscribe(subscriptions, c, t, group="from-now", consumer="x")
    wait_for(lambda: [gs.name for gs in stats(c, t).groups] == ["from-now"])
    new = publish(c, t, b"new")
    m = s.message()
    assert (m.id, m.payload, m.delivery_count) == (new, b"new", 1)
    # From an id: what follows it.
    replay = subscribe(subscriptions, c, t, group="replay", consumer="x", after_id="0-0")
    assert [m.id for m in replay.messages(2)] == [old, new]
    groups = {gs.name: gs for gs in stats(c, t).groups}
    assert (groups["from-now"].pending, groups["replay"].pending) == (1, 2)


# ------------------------------------------------------------ stats and delete


def test_stats_and_delete(topic_client: Client, subscriptions: list[Subscription]) -> None:
    c, t = topic_client, topic_name()
    absent = stats(c, t)
    assert (absent.exists, absent.length, absent.first_id, absent.last_id, list(absent.groups)) == (False, 0, "", "", [])
    assert not c.topic.delete_topic(tp.DeleteTopicRequest(topic=t)).deleted

    ids = [publish(c, t, f"{i}".encode()) for i in range(4)]
    s = stats(c, t)
    assert (s.exists, s.length, s.first_id, s.last_id, list(s.groups)) == (True, 4, ids[0], ids[-1], [])
    assert s.local_subscribers == 0

    assert c.topic.delete_topic(tp.DeleteTopicRequest(topic=t)).deleted
    gone = stats(c, t)
    assert (gone.exists, gone.length) == (False, 0)
    assert not c.topic.delete_topic(tp.DeleteTopicRequest(topic=t)).deleted
    replay = subscribe(subscriptions, c, t, after_id="0-0")
    assert replay.quiet(0.3), "nothing of the deleted topic is replayed"

    # The name is usable again, from scratch.
    fresh = publish(c, t, b"fresh")
    assert [(m.id, m.payload) for m in replay.messages(1)] == [(fresh, b"fresh")]
    assert stats(c, t).length == 1


# ------------------------------------------------------------------ bad input


def violations(e: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in e.value.field_violations]


def test_bad_input_names_the_field(topic_client: Client) -> None:
    c, t = topic_client, topic_name()
    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish(tp.PublishRequest(topic="", payload=b"x"))
    assert violations(bad) == ["topic"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish(tp.PublishRequest(topic="not a name!", payload=b"x"))
    assert violations(bad) == ["topic"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish(tp.PublishRequest(topic=t, payload=b"x" * (MAX_PAYLOAD + 1)))
    assert violations(bad) == ["payload"]
    assert "topic.max_payload_bytes" in bad.value.message
    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish(tp.PublishRequest(topic=t, payload=b"x", headers={f"h{i}": "v" for i in range(17)}))
    assert violations(bad) == ["headers"]
    # At the bound: accepted.
    assert c.topic.publish(tp.PublishRequest(topic=t, payload=b"x" * MAX_PAYLOAD)).id

    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish_batch(
            tp.PublishBatchRequest(
                topic=t, messages=[tp.NewMessage(payload=b"x" * (MAX_PAYLOAD + 1)), tp.NewMessage(payload=b"ok")]
            )
        )
    assert violations(bad) == ["messages[0].payload"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish_batch(tp.PublishBatchRequest(topic=t, messages=[]))
    assert violations(bad) == ["messages"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.publish_batch(tp.PublishBatchRequest(topic=t, messages=[tp.NewMessage(payload=b"x")] * 101))
    assert violations(bad) == ["messages"]  # topic.max_batch
    assert stats(c, t).length == 1, "nothing of a refused batch was published"

    with pytest.raises(InvalidArgument) as bad:
        c.topic.ack(tp.AckRequest(topic=t, group="g", ids=["not-an-id"]))
    assert violations(bad) == ["ids[0]"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.ack(tp.AckRequest(topic=t, group="g", ids=[]))
    assert violations(bad) == ["ids"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.ack(tp.AckRequest(topic=t, group="", ids=["1-0"]))
    assert violations(bad) == ["group"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.get_topic_stats(tp.GetTopicStatsRequest(topic=""))
    assert violations(bad) == ["topic"]
    with pytest.raises(InvalidArgument) as bad:
        c.topic.delete_topic(tp.DeleteTopicRequest(topic="x" * 129))
    assert violations(bad) == ["topic"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"after_id": "not-an-id"}, "after_id"),
        ({"after_id": "1-2-3"}, "after_id"),
        ({"group": "bad group"}, "group"),
        ({"group": "g", "consumer": "bad consumer"}, "consumer"),
        ({"group": "g", "ack_timeout": ms(10)}, "ack_timeout"),  # under 100 ms
        ({"group": "g", "ack_timeout": Duration(seconds=13 * 3600)}, "ack_timeout"),  # topic.max_ack_timeout
    ],
)
def test_bad_subscriptions_name_the_field(topic_client: Client, fields: dict[str, object], field: str) -> None:
    stream = topic_client.topic.subscribe(tp.SubscribeRequest(topic=topic_name(), **fields))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as bad:
        next(stream)
    assert violations(bad) == [field]


# ---------------------------------------------------------------------- async


async def test_async_publish_subscribe_ack(async_client: AsyncClient) -> None:
    t = topic_name()
    ids = (
        await async_client.topic.publish_batch(
            tp.PublishBatchRequest(topic=t, messages=[tp.NewMessage(payload=b"a"), tp.NewMessage(payload=b"b")])
        )
    ).ids
    stream = async_client.topic.subscribe(tp.SubscribeRequest(topic=t, group="g", consumer="c", after_id="0-0"))
    try:
        got = []
        async for event in stream:
            got.append(event.message)
            if len(got) == 2:
                break
    finally:
        stream.cancel()
    assert [(m.id, m.payload, m.delivery_count) for m in got] == [(ids[0], b"a", 1), (ids[1], b"b", 1)]
    assert (await async_client.topic.ack(tp.AckRequest(topic=t, group="g", ids=list(ids)))).acked == 2
    s = await async_client.topic.get_topic_stats(tp.GetTopicStatsRequest(topic=t))
    assert [(g.name, g.pending) for g in s.groups] == [("g", 0)]
    assert (await async_client.topic.delete_topic(tp.DeleteTopicRequest(topic=t))).deleted
