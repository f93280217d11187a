"""AnalyticsService through the Python client, against the real binary on
Redis and on the in-process memory store: every RPC (Track, Query with
filters and group_by, Unique, Top of a top label and of a dimension,
ListMetrics), bad input named field by field, the read helpers
(`series`, `count_unique`, `top_values`), and the buffered tracker
(`client.analytics.tracker()`): what it tracks is there after a flush or
a close, `max_batch` flushes on its own, the buffer is bounded, a refused
event does not take its batch with it, and an unreachable service is
counted, never raised. Sync and async."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from datalayer import (
    AsyncClient,
    AsyncTracker,
    Client,
    InvalidArgument,
    MetricSeries,
    Tracker,
    Unavailable,
)
from datalayer._invoke import Metadata
from datalayer.analytics.v1 import analytics_pb2 as pb

from .conftest import Stack, _Recorder, configured_stack, free_port, require, unique, wait_for

SERVICE = "datalayer.analytics.v1.AnalyticsService"


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


@pytest.fixture(params=["redis", "memory"])
def an_client(request: pytest.FixtureRequest) -> Client:
    """A client of the binary on Redis, then of the one on the memory store."""
    c: Client = request.getfixturevalue("client" if request.param == "redis" else "memory_client")
    return c


@pytest.fixture
def offline() -> Iterator[Client]:
    """A client of a closed port: every call fails with UNAVAILABLE."""
    with Client(f"127.0.0.1:{free_port()}", retries=0, timeout=0.5) as c:
        yield c


def metric(prefix: str = "py.an") -> str:
    return unique(prefix)


def ev(name: str, count: int = 0, **dims: str) -> pb.Event:
    e = pb.Event(metric=name, dimensions=dims)
    if count:
        e.count = count
    return e


def query(c: Client, name: str, *, group_by: tuple[str, ...] = (), **extra: Any) -> pb.QueryResponse:
    """The last hour of `name`, a point a minute."""
    req = pb.QueryRequest(metric=name, resolution="1m", group_by=group_by, **extra)
    getattr(req, "from").FromDatetime(datetime.now(timezone.utc) - timedelta(hours=1))
    return c.analytics.query(req)


def totals(answer: pb.QueryResponse, dimension: str | None = None) -> dict[str, int]:
    """Each series' count over the range, by its value of `dimension`."""
    return {s.dimensions[dimension] if dimension else "": sum(p.count for p in s.points) for s in answer.series}


def total(c: Client, name: str) -> int:
    return sum(totals(query(c, name)).values())


def fields(e: InvalidArgument) -> set[str]:
    return {v.field for v in e.field_violations}


# ------------------------------------------------------------------ the RPCs


def test_track_then_query_grouped_and_filtered(an_client: Client) -> None:
    c, m = an_client, metric()
    answer = c.analytics.track(
        pb.TrackRequest(
            events=[
                ev(m, exchange="kraken", side="buy"),
                ev(m, 2, exchange="kraken", side="sell"),
                ev(m, exchange="binance", side="buy"),
            ]
        )
    )
    assert (answer.accepted, answer.folded) == (3, 0)

    everything = query(c, m)
    assert everything.resolution == "1m"
    assert len(everything.series) == 1 and dict(everything.series[0].dimensions) == {}
    # An hour of minutes (rounded outward), zeros where nothing was tracked.
    points = everything.series[0].points
    assert 60 <= len(points) <= 62
    assert sum(p.count for p in points) == 4
    assert [p.count for p in points if p.count] in ([4], [3, 1], [1, 3], [2, 2])
    starts = [p.time.ToDatetime(tzinfo=timezone.utc) for p in points]
    assert all(b - a == timedelta(minutes=1) for a, b in zip(starts, starts[1:]))
    assert abs(starts[-1] - datetime.now(timezone.utc)) < timedelta(minutes=2)

    assert totals(query(c, m, group_by=("exchange",)), "exchange") == {"kraken": 3, "binance": 1}
    by_both = query(c, m, group_by=("exchange", "side"))
    assert {(s.dimensions["exchange"], s.dimensions["side"]): sum(p.count for p in s.points) for s in by_both.series} == {
        ("kraken", "buy"): 1,
        ("kraken", "sell"): 2,
        ("binance", "buy"): 1,
    }
    buys = query(c, m, group_by=("exchange",), filters=[pb.DimensionFilter(dimension="side", values=["buy"])])
    assert totals(buys, "exchange") == {"kraken": 1, "binance": 1}
    neither = query(c, m, filters=[pb.DimensionFilter(dimension="side", values=["hold"])])
    assert totals(neither) == {"": 0}, "no match: one series of zeros"


def test_samples_keep_count_sum_min_max(an_client: Client) -> None:
    c, m = an_client, metric("py.an.latency")
    c.analytics.track(
        pb.TrackRequest(events=[pb.Event(metric=m, sample=v, dimensions={"exchange": "kraken"}) for v in (12.5, -3.0, 40.0)])
    )
    hit = [p for p in query(c, m).series[0].points if p.count]
    assert sum(p.count for p in hit) == 3
    assert sum(p.sum for p in hit) == 49.5
    assert min(p.min for p in hit) == -3.0 and max(p.max for p in hit) == 40.0


def test_unique_counts_distinct_ids(an_client: Client) -> None:
    c, m = an_client, metric("py.an.dau")
    ids = ["u1", "u2", "u1", "u3", "u2", ""]  # "" is not counted
    c.analytics.track(pb.TrackRequest(events=[pb.Event(metric=m, unique_id=u) for u in ids]))
    answer = c.analytics.unique(pb.UniqueRequest(metric=m))
    assert (answer.count, answer.resolution) == (3, "1m")
    assert total(c, m) == 6, "every event counted, with or without an id"
    # A range that ends before the events holds none of them.
    early = pb.UniqueRequest(metric=m, resolution="1h")
    getattr(early, "from").FromDatetime(datetime.now(timezone.utc) - timedelta(days=2))
    early.to.FromDatetime(datetime.now(timezone.utc) - timedelta(days=1))
    assert c.analytics.unique(early).count == 0
    assert c.analytics.unique(pb.UniqueRequest(metric=metric("py.an.none"))).count == 0


def test_top_of_a_top_label_and_of_a_dimension(an_client: Client) -> None:
    c, m = an_client, metric("py.an.cmd")
    events = []
    for user, command, n in [("amy", "price", 5), ("bob", "help", 2), ("cid", "price", 1), ("amy", "buy", 3)]:
        events += [pb.Event(metric=m, dimensions={"command": command}, top={"user": user}) for _ in range(n)]
    c.analytics.track(pb.TrackRequest(events=events))
    users = c.analytics.top(pb.TopRequest(metric=m, dimension="user", k=2))
    assert users.resolution == "1m"
    assert [(e.value, e.count) for e in users.entries] == [("amy", 8), ("bob", 2)]
    everyone = c.analytics.top(pb.TopRequest(metric=m, dimension="user"))  # k unset: 10
    assert [(e.value, e.count) for e in everyone.entries] == [("amy", 8), ("bob", 2), ("cid", 1)]
    # `command` is a dimension, not a top list: its series are ranked.
    commands = c.analytics.top(pb.TopRequest(metric=m, dimension="command", k=10))
    assert [(e.value, e.count) for e in commands.entries] == [("price", 6), ("buy", 3), ("help", 2)]
    # Top labels are not series.
    assert totals(query(c, m, group_by=("command",)), "command") == {"price": 6, "buy": 3, "help": 2}
    assert list(c.analytics.top(pb.TopRequest(metric=m, dimension="nobody")).entries) == []


def test_list_metrics_lists_each_metric_with_its_resolutions(an_client: Client) -> None:
    c, base = an_client, metric("py.an.list")
    names = [f"{base}-b", f"{base}-a"]
    before = datetime.now(timezone.utc)
    c.analytics.track(
        pb.TrackRequest(
            events=[
                ev(names[0], exchange="kraken"),
                ev(names[0], exchange="binance"),
                ev(names[0], exchange="kraken"),
                ev(names[1]),
            ]
        )
    )
    listed = c.analytics.list_metrics(pb.ListMetricsRequest()).metrics
    all_names = [m.name for m in listed]
    assert all_names == sorted(all_names), "name order"
    mine = {m.name: m for m in listed if m.name.startswith(base)}
    assert sorted(mine) == sorted(names)
    b = mine[names[0]]
    assert (b.combinations, b.folded_events) == (2, 0)
    assert mine[names[1]].combinations == 1
    assert [(r.name, r.bucket_seconds, r.retention_seconds) for r in b.resolutions] == [
        ("1m", 60, 48 * 3600),
        ("1h", 3600, 90 * 86400),
        ("1d", 86400, 730 * 86400),
    ]
    tracked = b.last_tracked.ToDatetime(tzinfo=timezone.utc)
    assert before - timedelta(seconds=5) <= tracked <= datetime.now(timezone.utc) + timedelta(seconds=5)


def test_bad_input_is_invalid_argument_naming_each_field(an_client: Client) -> None:
    c, m = an_client, metric("py.an.bad")
    old = pb.Event(metric=m)
    old.time.FromDatetime(datetime.now(timezone.utc) - timedelta(hours=3))
    with pytest.raises(InvalidArgument) as bad:
        c.analytics.track(
            pb.TrackRequest(
                events=[
                    ev(m),
                    pb.Event(metric="bad metric"),
                    pb.Event(metric=m, count=0),
                    pb.Event(metric=m, sample=math.nan),
                    old,
                    pb.Event(metric=m, dimensions={"exchange": ""}),
                ]
            )
        )
    assert fields(bad.value) == {
        "events[1].metric",
        "events[2].value.count",
        "events[3].value.sample",
        "events[4].time",
        "events[5].dimensions.exchange",
    }
    assert "events[1].metric" in str(bad.value)
    # One bad event refuses the batch: the good one was not recorded either.
    assert m not in [x.name for x in c.analytics.list_metrics(pb.ListMetricsRequest()).metrics]
    with pytest.raises(InvalidArgument) as empty:
        c.analytics.track(pb.TrackRequest())
    assert fields(empty.value) == {"events"}

    with pytest.raises(InvalidArgument) as resolution:
        c.analytics.query(pb.QueryRequest(metric=m, resolution="5m"))
    assert fields(resolution.value) == {"resolution"}
    backwards = pb.QueryRequest(metric=m)
    getattr(backwards, "from").FromDatetime(datetime.now(timezone.utc))
    backwards.to.FromDatetime(datetime.now(timezone.utc) - timedelta(hours=1))
    with pytest.raises(InvalidArgument) as order:
        c.analytics.query(backwards)
    assert fields(order.value) == {"from"}
    with pytest.raises(InvalidArgument) as no_values:
        c.analytics.query(pb.QueryRequest(metric=m, filters=[pb.DimensionFilter(dimension="side")]))
    assert fields(no_values.value) == {"filters[0].values"}
    with pytest.raises(InvalidArgument) as unique_metric:
        c.analytics.unique(pb.UniqueRequest(metric=""))
    assert fields(unique_metric.value) == {"metric"}
    with pytest.raises(InvalidArgument) as k:
        c.analytics.top(pb.TopRequest(metric=m, dimension="user", k=101))
    assert fields(k.value) == {"k"}
    with pytest.raises(InvalidArgument) as dimension:
        c.analytics.top(pb.TopRequest(metric=m, dimension="no spaces"))
    assert fields(dimension.value) == {"dimension"}


# ------------------------------------------------------------------ the reads


def test_read_helpers(an_client: Client) -> None:
    c, m = an_client, metric("py.an.reads")
    events = [
        pb.Event(metric=m, dimensions={"exchange": "kraken", "side": "buy"}, unique_id="u1", top={"user": "amy"}),
        pb.Event(metric=m, dimensions={"exchange": "kraken", "side": "sell"}, unique_id="u2", top={"user": "amy"}),
        pb.Event(metric=m, dimensions={"exchange": "bybit", "side": "buy"}, unique_id="u1", top={"user": "bob"}),
        pb.Event(metric=m, count=4, dimensions={"exchange": "bybit", "side": "buy"}, top={"user": "cid"}),
    ]
    c.analytics.track(pb.TrackRequest(events=events))

    (whole,) = c.analytics.series(m, since="1h")
    assert isinstance(whole, MetricSeries) and whole.dimensions == {}
    assert whole.count == 7 and whole.sum == 7.0
    assert 60 <= len(whole.points) <= 62
    assert all(p.time.tzinfo is not None for p in whole.points)
    assert whole.points[1].time - whole.points[0].time == timedelta(minutes=1)

    grouped = c.analytics.series(m, since=timedelta(hours=1), group_by=["exchange"])
    assert {s.dimensions["exchange"]: s.count for s in grouped} == {"kraken": 2, "bybit": 5}
    sells = c.analytics.series(m, since=3_600_000, where={"side": "sell"})
    assert [s.count for s in sells] == [1]
    some = c.analytics.series(m, where={"exchange": ["kraken", "bybit"], "side": "buy"}, group_by=["exchange"])
    assert {s.dimensions["exchange"]: s.count for s in some} == {"kraken": 1, "bybit": 5}
    now = datetime.now(timezone.utc)
    (hourly,) = c.analytics.series(m, since=now - timedelta(hours=3), until=now + timedelta(minutes=1), resolution="1h")
    assert hourly.count == 7 and 3 <= len(hourly.points) <= 5
    (past,) = c.analytics.series(m, since="1h", until=now - timedelta(hours=1))
    assert past.count == 0

    assert c.analytics.count_unique(m) == 2
    assert c.analytics.count_unique(m, since="1h", resolution="1m") == 2
    assert c.analytics.count_unique(m, since="1h", until=now - timedelta(hours=1)) == 0
    assert c.analytics.top_values(m, "user", k=2) == [("cid", 4), ("amy", 2)]
    assert c.analytics.top_values(m, "exchange", since="1h") == [("bybit", 5), ("kraken", 2)]


def test_read_helpers_check_their_arguments(offline: Client) -> None:
    """Refused before anything is sent (the client reaches nothing)."""
    a = offline.analytics
    with pytest.raises(TypeError, match="metric name must be a string"):
        a.series(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric name"):
        a.count_unique("bad metric")
    with pytest.raises(ValueError, match="aware datetime"):
        a.series("m", since=datetime.now())
    with pytest.raises(TypeError, match="ambiguous"):
        a.series("m", since=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duration"):
        a.series("m", since="an hour")
    with pytest.raises(TypeError, match="until must be a datetime"):
        a.series("m", until="1h")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        a.series("m", group_by="exchange")
    with pytest.raises(ValueError, match="where value|must not be empty"):
        a.series("m", where={"side": ""})
    with pytest.raises(TypeError, match="k must be an int"):
        a.top_values("m", "user", k=True)
    with pytest.raises(ValueError, match="k must be at least 1"):
        a.top_values("m", "user", k=0)
    with pytest.raises(ValueError, match="dimension names"):
        a.top_values("m", "no spaces")


# -------------------------------------------------------------------- tracker


def test_tracker_events_are_queryable_after_flush(client: Client) -> None:
    m = metric("py.an.tracker")
    tracker = client.analytics.tracker(flush_every="1h")
    try:
        assert tracker.track(m, exchange="kraken")
        assert tracker.track(m, 2, exchange="kraken")
        assert tracker.track(m, exchange="binance", unique_id="u1", top={"user": "amy"})
        assert tracker.track(m, sample=2.5, exchange="binance", unique_id="u2", top={"user": "amy"})
        assert tracker.track(m, time=datetime.now(timezone.utc) - timedelta(minutes=5), exchange="bybit")
        assert tracker.pending == 5
        assert total(client, m) == 0, "nothing sent before the flush"
        assert tracker.flush() is True
        assert (tracker.pending, tracker.sent, tracker.errors, tracker.dropped) == (0, 5, 0, 0)
        assert totals(query(client, m, group_by=("exchange",)), "exchange") == {"kraken": 3, "binance": 2, "bybit": 1}
        (binance,) = client.analytics.series(m, since="1h", where={"exchange": "binance"})
        assert binance.sum == 3.5  # 1 (a count) + 2.5 (a sample)
        assert client.analytics.count_unique(m) == 2
        assert client.analytics.top_values(m, "user") == [("amy", 2)]
        # The explicit time landed five minutes back.
        (bybit,) = query(client, m, filters=[pb.DimensionFilter(dimension="exchange", values=["bybit"])]).series
        (hit,) = [p for p in bybit.points if p.count]
        age = datetime.now(timezone.utc) - hit.time.ToDatetime(tzinfo=timezone.utc)
        assert timedelta(minutes=4) < age <= timedelta(minutes=6)
        assert tracker.flush() is True, "nothing to send is a success"
        assert tracker.sent == 5
    finally:
        tracker.close()
    assert "sent=5" in repr(tracker)


def test_tracker_flushes_every_flush_every(client: Client) -> None:
    m = metric("py.an.periodic")
    with client.analytics.tracker(flush_every="100ms", max_batch=500) as tracker:
        for _ in range(3):
            tracker.track(m, exchange="kraken")
        wait_for(lambda: tracker.sent == 3, timeout=5)
        assert total(client, m) == 3
        tracker.track(m, exchange="kraken")
        wait_for(lambda: total(client, m) == 4, timeout=5)


def test_tracker_max_batch_triggers_a_flush(client: Client) -> None:
    m = metric("py.an.batch")
    with client.analytics.tracker(flush_every="1h", max_batch=5) as tracker:
        for _ in range(4):
            tracker.track(m)
        time.sleep(0.5)
        assert (tracker.pending, tracker.sent, total(client, m)) == (4, 0, 0), "under max_batch: waits for the timer"
        tracker.track(m)  # the fifth
        wait_for(lambda: tracker.sent == 5, timeout=5)
        assert tracker.pending == 0 and total(client, m) == 5
        for _ in range(12):
            tracker.track(m)
        wait_for(lambda: tracker.sent >= 15, timeout=5)  # two more full batches
        assert total(client, m) == tracker.sent
        assert tracker.sent + tracker.pending == 17 and tracker.pending == 2
    # Leaving the block sent the two left.
    assert tracker.sent == 17 and total(client, m) == 17


def test_tracker_close_flushes_the_rest_then_drops(client: Client) -> None:
    m = metric("py.an.close")
    tracker = client.analytics.tracker(flush_every="1h", max_batch=100)
    for i in range(7):
        tracker.track(m, exchange="kraken" if i % 2 else "binance")
    assert total(client, m) == 0
    assert tracker.close() is True
    assert tracker.closed and tracker.pending == 0 and tracker.sent == 7
    assert totals(query(client, m, group_by=("exchange",)), "exchange") == {"kraken": 3, "binance": 4}
    assert tracker.track(m) is False, "closed: dropped"
    assert tracker.dropped == 1 and tracker.close() is True
    assert total(client, m) == 7


def test_tracker_does_not_raise_when_the_service_is_unreachable(
    offline: Client, caplog: pytest.LogCaptureFixture
) -> None:
    m = metric("py.an.down")
    caplog.set_level(logging.WARNING, logger="datalayer.analytics")
    with offline.analytics.tracker(flush_every="50ms", max_batch=10) as tracker:
        started = time.monotonic()
        for i in range(25):
            assert tracker.track(m, exchange="kraken", unique_id=f"u{i}") is True
        assert time.monotonic() - started < 0.5, "track() never waits for the network"
        wait_for(lambda: tracker.failed == 25, timeout=10)
        assert tracker.errors >= 3 and tracker.sent == 0 and tracker.dropped == 0
        assert isinstance(tracker.last_error, Unavailable)
        assert tracker.flush() is True, "nothing left to send"
        tracker.track(m)
        assert tracker.flush() is False
        assert tracker.failed == 26
    assert tracker.close() is True, "closed, nothing left"
    warnings = [r for r in caplog.records if r.name == "datalayer.analytics" and r.levelno == logging.WARNING]
    assert warnings and "lost" in warnings[0].getMessage()
    assert len(warnings) == 1, "one warning per outage, not one per batch"


def test_tracker_drops_past_max_buffer() -> None:
    """While a Track is in flight the buffer fills; past max_buffer events
    are dropped and counted, and track() keeps returning at once."""
    release = threading.Event()
    calls: list[int] = []

    class Slow:
        def track(
            self, request: pb.TrackRequest, *, timeout: float | None = None, metadata: Metadata = ()
        ) -> pb.TrackResponse:
            calls.append(len(request.events))
            release.wait(10)
            return pb.TrackResponse(accepted=len(request.events))

        query = unique = top = None

    tracker = Tracker(Slow(), flush_every="1h", max_batch=2, max_buffer=4)  # type: ignore[arg-type]
    try:
        tracker.track("m")
        tracker.track("m")  # max_batch: the thread takes both and waits on the call
        wait_for(lambda: calls == [2] and tracker.pending == 0)
        started = time.monotonic()
        results = [tracker.track("m", i + 1) for i in range(6)]
        assert time.monotonic() - started < 0.1
        assert results == [True] * 4 + [False] * 2
        assert (tracker.pending, tracker.dropped) == (4, 2)
    finally:
        release.set()
        assert tracker.close(timeout=5) is True
    assert calls == [2, 2, 2] and tracker.sent == 6 and tracker.pending == 0


def test_tracker_sends_the_rest_of_a_batch_the_service_refused_an_event_of(client: Client) -> None:
    """Arguments track() cannot check (an event older than the service's
    analytics.max_event_age) are refused by the service for the whole batch;
    the tracker sends the batch again without them."""
    m = metric("py.an.salvage")
    too_old = datetime.now(timezone.utc) - timedelta(hours=3)
    with client.analytics.tracker(flush_every="1h") as tracker:
        tracker.track(m, exchange="kraken")
        tracker.track(m, exchange="kraken", time=too_old)
        tracker.track(m, exchange="binance")
        tracker.track(m, exchange="bybit", time=too_old)
        assert tracker.flush() is False
        assert (tracker.sent, tracker.rejected, tracker.failed, tracker.errors) == (2, 2, 0, 1)
        assert isinstance(tracker.last_error, InvalidArgument)
        assert fields(tracker.last_error) == {"events[1].time", "events[3].time"}
        assert totals(query(client, m, group_by=("exchange",)), "exchange") == {"kraken": 1, "binance": 1}


@pytest.fixture(scope="module")
def small_batch_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The binary on its own Redis with analytics.max_batch = 3; its calls
    count for the coverage check."""
    yield from configured_stack(stack, tmp_path_factory, "analytics", "[analytics]\nmax_batch = 3\n")


def test_tracker_splits_batches_the_service_finds_too_large(small_batch_stack: Stack) -> None:
    m = metric("py.an.split")
    with Client(small_batch_stack.addr, interceptors=[_Recorder(small_batch_stack.called)]) as c:
        with c.analytics.tracker(flush_every="1h", max_batch=10) as tracker:
            for _ in range(7):
                tracker.track(m)
            assert tracker.flush() is True
            assert (tracker.sent, tracker.errors, tracker.failed) == (7, 1, 0)
            assert "analytics.max_batch" in str(tracker.last_error)
            for _ in range(7):
                tracker.track(m)
            assert tracker.flush() is True
            assert (tracker.sent, tracker.errors) == (14, 1), "batches of 3 from then on"
        assert total(c, m) == 14


def test_tracker_checks_arguments_at_once(offline: Client) -> None:
    with offline.analytics.tracker(flush_every="1h") as t:
        with pytest.raises(TypeError, match="metric name must be a string"):
            t.track(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="value must be an int"):
            t.track("m", "1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="use sample="):
            t.track("m", 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="value must be an int"):
            t.track("m", True)
        with pytest.raises(TypeError, match="sample must be a number"):
            t.track("m", sample="1.5")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="metric name"):
            t.track("bad metric")
        with pytest.raises(ValueError, match="value must be 1 to"):
            t.track("m", 0)
        with pytest.raises(ValueError, match="finite"):
            t.track("m", sample=math.inf)
        with pytest.raises(ValueError, match="not both"):
            t.track("m", 3, sample=1.0)
        with pytest.raises(TypeError, match="dimension value 'exchange' must be a string"):
            t.track("m", exchange=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="dimension names"):
            t.track("m", **{"no spaces": "x"})
        with pytest.raises(ValueError, match="control characters"):
            t.track("m", exchange="a\nb")
        with pytest.raises(TypeError, match="top must be a mapping"):
            t.track("m", top=["user"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unique_id must be a string"):
            t.track("m", unique_id=42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="aware datetime"):
            t.track("m", time=datetime.now())
        assert t.pending == 0 and t.dropped == 0, "nothing bad was buffered"
    for bad, error in [
        ({"flush_every": 1.5}, TypeError),
        ({"flush_every": "0s"}, ValueError),
        ({"flush_every": "soon"}, ValueError),
        ({"max_batch": 0}, ValueError),
        ({"max_batch": "10"}, TypeError),
        ({"max_batch": 100, "max_buffer": 10}, ValueError),
    ]:
        with pytest.raises(error):
            offline.analytics.tracker(**bad)


# ---------------------------------------------------------------------- async


async def test_async_tracker_and_reads(async_client: AsyncClient) -> None:
    m = metric("py.an.async")
    tracker = async_client.analytics.tracker(flush_every="1h", max_batch=500)
    assert isinstance(tracker, AsyncTracker)
    async with tracker:
        for exchange, user in [("kraken", "amy"), ("kraken", "bob"), ("binance", "amy")]:
            assert tracker.track(m, exchange=exchange, unique_id=user, top={"user": user})
        assert tracker.pending == 3
        assert await tracker.flush() is True
        assert tracker.sent == 3
        grouped = await async_client.analytics.series(m, since="1h", group_by=["exchange"])
        assert {s.dimensions["exchange"]: s.count for s in grouped} == {"kraken": 2, "binance": 1}
        assert await async_client.analytics.count_unique(m, since="1h") == 2
        assert await async_client.analytics.top_values(m, "user") == [("amy", 2), ("bob", 1)]
        tracker.track(m, exchange="bybit")
    # Leaving the block sent the last one.
    assert tracker.closed and tracker.sent == 4 and tracker.pending == 0
    answer = await async_client.analytics.query(pb.QueryRequest(metric=m, group_by=["exchange"]))
    assert {s.dimensions["exchange"]: sum(p.count for p in s.points) for s in answer.series} == {
        "kraken": 2,
        "binance": 1,
        "bybit": 1,
    }
    listed = await async_client.analytics.list_metrics(pb.ListMetricsRequest())
    assert m in [x.name for x in listed.metrics]
    assert (await async_client.analytics.unique(pb.UniqueRequest(metric=m))).count == 2
    assert [e.value for e in (await async_client.analytics.top(pb.TopRequest(metric=m, dimension="user"))).entries] == [
        "amy",
        "bob",
    ]


async def test_async_tracker_max_batch_and_timer(async_client: AsyncClient) -> None:
    m = metric("py.an.async.batch")
    async with async_client.analytics.tracker(flush_every="1h", max_batch=3) as tracker:
        tracker.track(m)
        tracker.track(m)
        await asyncio.sleep(0.3)
        assert (tracker.sent, tracker.pending) == (0, 2)
        tracker.track(m)
        for _ in range(100):
            if tracker.sent == 3:
                break
            await asyncio.sleep(0.05)
        assert tracker.sent == 3 and tracker.pending == 0
    async with async_client.analytics.tracker(flush_every="100ms") as timed:
        timed.track(m)
        for _ in range(100):
            if timed.sent == 1:
                break
            await asyncio.sleep(0.05)
        assert timed.sent == 1, "the timer flushed it"
    assert len(await async_client.analytics.series(m)) == 1
    assert (await async_client.analytics.series(m))[0].count == 4


async def test_async_tracker_counts_an_unreachable_service() -> None:
    c = AsyncClient(f"127.0.0.1:{free_port()}", retries=0, timeout=0.5)
    try:
        tracker = c.analytics.tracker(flush_every="1h")
        for _ in range(5):
            assert tracker.track("py.an.down") is True
        assert await tracker.flush() is False
        assert (tracker.failed, tracker.errors, tracker.sent) == (5, 1, 0)
        assert isinstance(tracker.last_error, Unavailable)
        assert await tracker.close() is True, "nothing was left"
    finally:
        await c.close()
