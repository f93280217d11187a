"""LeaderboardService through the Python client, against the real binary on
Redis and on the in-process memory store: every RPC (board definitions,
Submit with each operator, ordering and every tie-break, Top with keyset
cursors, AroundOwner, Records, Rank, DeleteRecord, periods of resetting
boards, idempotent retries, the score bound, bad input) and the WatchTop
stream, on the blocking client and on `AsyncClient`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from datalayer import (
    AlreadyExists,
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServerStream,
)
from datalayer.leaderboard.v1 import leaderboard_pb2 as lb

from .conftest import Stack, require, unique

SERVICE = "datalayer.leaderboard.v1.LeaderboardService"
#: Scores and subscores stay within ±(2^53 − 1).
LIMIT = (1 << 53) - 1


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


@pytest.fixture(params=["redis", "memory"])
def lb_client(request: pytest.FixtureRequest) -> Client:
    """A client of the binary on Redis, then of the one on the memory store."""
    name = "client" if request.param == "redis" else "memory_client"
    c: Client = request.getfixturevalue(name)
    return c


def board_id(prefix: str = "py.lb") -> str:
    return unique(prefix)


def create(c: Client, board: lb.Leaderboard) -> lb.Leaderboard:
    return c.leaderboard.create_leaderboard(lb.CreateLeaderboardRequest(leaderboard=board)).leaderboard


def submit(
    c: Client,
    board: str,
    owner: str,
    score: int,
    *,
    subscore: int = 0,
    metadata: bytes = b"",
    operator: lb.Operator.ValueType = lb.OPERATOR_UNSPECIFIED,
    idempotency_key: str = "",
) -> lb.SubmitResponse:
    return c.leaderboard.submit(
        lb.SubmitRequest(
            leaderboard_id=board,
            owner_id=owner,
            score=score,
            subscore=subscore,
            metadata=metadata,
            operator=operator,
            idempotency_key=idempotency_key,
        )
    )


def top(c: Client, board: str, limit: int = 10, cursor: str = "", period: str = "") -> lb.TopResponse:
    return c.leaderboard.top(lb.TopRequest(leaderboard_id=board, limit=limit, cursor=cursor, period_id=period))


def owners(records: Iterable[lb.Record]) -> list[str]:
    return [r.owner_id for r in records]


def rank(c: Client, board: str, owner: str, period: str = "") -> lb.RankResponse:
    return c.leaderboard.rank(lb.RankRequest(leaderboard_id=board, owner_id=owner, period_id=period))


def fields(e: InvalidArgument) -> set[str]:
    return {v.field for v in e.field_violations}


# ------------------------------------------------------------- definitions


def test_create_get_update_delete_a_board(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    made = create(c, lb.Leaderboard(id=bid, metadata=b"weekly pnl"))
    # Defaults: highest first, best score kept, earliest first on ties.
    assert (made.id, made.sort_order, made.operator, made.tie_break) == (
        bid,
        lb.SORT_ORDER_DESCENDING,
        lb.OPERATOR_BEST,
        lb.TIE_BREAK_EARLIEST,
    )
    assert (made.metadata, made.reset_cron, made.keep_periods, made.decrement_floor) == (b"weekly pnl", "", 0, 0)
    created = made.create_time.ToDatetime(tzinfo=timezone.utc)
    assert abs((created - datetime.now(timezone.utc)).total_seconds()) < 5

    with pytest.raises(AlreadyExists):
        create(c, lb.Leaderboard(id=bid, metadata=b"other", sort_order=lb.SORT_ORDER_ASCENDING))
    got = c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=bid))
    assert got.leaderboard == made, "a refused create changes nothing"
    # A board that never resets has one period, without an end.
    assert got.current_period.owners == 0 and not got.current_period.HasField("end_time")

    first = submit(c, bid, "x", 1)
    assert first.period_id == got.current_period.id
    assert c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=bid)).current_period.owners == 1

    # Metadata, retention and floor may change; fields left unset keep theirs.
    updated = c.leaderboard.update_leaderboard(
        lb.UpdateLeaderboardRequest(leaderboard=lb.Leaderboard(id=bid, metadata=b"daily", decrement_floor=-10))
    ).leaderboard
    assert (updated.metadata, updated.decrement_floor, updated.operator) == (b"daily", -10, lb.OPERATOR_BEST)
    assert updated.create_time == made.create_time
    assert c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=bid)).leaderboard == updated
    # The new floor applies to the next write.
    down = submit(c, bid, "x", 50, operator=lb.OPERATOR_DECREMENT)
    assert down.record.score == -10

    # Order, operator and tie-break are fixed; a board cannot start resetting.
    for change, field in [
        (lb.Leaderboard(id=bid, sort_order=lb.SORT_ORDER_ASCENDING), "leaderboard.sort_order"),
        (lb.Leaderboard(id=bid, operator=lb.OPERATOR_SET), "leaderboard.operator"),
        (lb.Leaderboard(id=bid, tie_break=lb.TIE_BREAK_LATEST), "leaderboard.tie_break"),
        (lb.Leaderboard(id=bid, reset_cron="0 0 * * MON"), "leaderboard.reset_cron"),
    ]:
        with pytest.raises(InvalidArgument) as fixed:
            c.leaderboard.update_leaderboard(lb.UpdateLeaderboardRequest(leaderboard=change))
        assert fields(fixed.value) == {field}
    with pytest.raises(NotFound):
        c.leaderboard.update_leaderboard(lb.UpdateLeaderboardRequest(leaderboard=lb.Leaderboard(id=board_id())))

    assert c.leaderboard.delete_leaderboard(lb.DeleteLeaderboardRequest(id=bid)).deleted
    assert not c.leaderboard.delete_leaderboard(lb.DeleteLeaderboardRequest(id=bid)).deleted
    with pytest.raises(NotFound):
        c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=bid))
    with pytest.raises(NotFound):
        submit(c, bid, "x", 1)
    # Created again, it starts empty.
    create(c, lb.Leaderboard(id=bid))
    assert list(top(c, bid).records) == []
    assert not rank(c, bid, "x").found


def test_list_boards_in_id_order_by_page_token(lb_client: Client) -> None:
    c, base = lb_client, board_id("py.lb.list")
    mine = [f"{base}-{i}" for i in (2, 0, 1)]
    for bid in mine:
        create(c, lb.Leaderboard(id=bid, metadata=bid.encode()))
    listed: list[lb.Leaderboard] = []
    token = ""
    pages = 0
    while True:
        page = c.leaderboard.list_leaderboards(lb.ListLeaderboardsRequest(page_size=2, page_token=token))
        assert len(page.leaderboards) <= 2
        listed.extend(page.leaderboards)
        pages += 1
        if not page.next_page_token:
            break
        assert page.next_page_token == page.leaderboards[-1].id
        token = page.next_page_token
    ids = [b.id for b in listed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "id order, each board once"
    ours = [b for b in listed if b.id.startswith(base)]
    assert [b.id for b in ours] == sorted(mine)
    assert [b.metadata for b in ours] == [b.id.encode() for b in ours]
    assert pages >= 2
    # Starting after one of ours lists the rest.
    after = c.leaderboard.list_leaderboards(lb.ListLeaderboardsRequest(page_size=1000, page_token=f"{base}-0"))
    assert [b.id for b in after.leaderboards if b.id.startswith(base)] == [f"{base}-1", f"{base}-2"]
    with pytest.raises(InvalidArgument) as bad:
        c.leaderboard.list_leaderboards(lb.ListLeaderboardsRequest(page_size=100_000))
    assert fields(bad.value) == {"page_size"}


# ---------------------------------------------------------------- submits


def test_best_keeps_the_better_record(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid))
    first = submit(c, bid, "amy", 10, metadata=b"m1")
    assert first.improved and first.previous_rank == 0 and not first.replayed
    r = first.record
    assert (r.owner_id, r.score, r.subscore, r.rank, r.submissions, r.metadata) == ("amy", 10, 0, 1, 1, b"m1")
    bob = submit(c, bid, "bob", 20)
    assert bob.record.rank == 1 and bob.previous_rank == 0

    worse = submit(c, bid, "amy", 5, metadata=b"m2")
    assert not worse.improved and worse.previous_rank == 2
    r = worse.record
    assert (r.score, r.subscore, r.rank, r.submissions, r.metadata) == (10, 0, 2, 2, b"m1"), "kept, metadata too"
    assert r.update_time == first.record.update_time, "a kept record was not updated"

    # (score, subscore) compare as one tuple.
    sub = submit(c, bid, "amy", 10, subscore=1, metadata=b"m3")
    assert sub.improved and (sub.record.score, sub.record.subscore, sub.record.metadata) == (10, 1, b"m3")
    up = submit(c, bid, "amy", 30)
    assert up.improved and up.previous_rank == 2 and up.record.rank == 1
    assert (up.record.metadata, up.record.submissions) == (b"m3", 4), "empty metadata keeps the record's"
    assert rank(c, bid, "bob").record.rank == 2


def test_set_increment_and_decrement(lb_client: Client) -> None:
    c = lb_client
    inc = board_id()
    create(c, lb.Leaderboard(id=inc, operator=lb.OPERATOR_INCREMENT, decrement_floor=-5))
    assert submit(c, inc, "p", 3, subscore=1).record.score == 3
    total = submit(c, inc, "p", 4, subscore=1)
    assert (total.record.score, total.record.subscore, total.improved) == (7, 2, True)
    same = submit(c, inc, "p", 0)
    assert not same.improved and same.record.score == 7, "an increment of 0 changes nothing"
    # The operator can be chosen per submission.
    down = submit(c, inc, "p", 2, operator=lb.OPERATOR_DECREMENT)
    assert down.record.score == 5 and down.improved
    floored = submit(c, inc, "p", 6000, operator=lb.OPERATOR_DECREMENT)
    assert floored.record.score == -5, "never below the board's decrement_floor"
    fresh = submit(c, inc, "q", 1, operator=lb.OPERATOR_DECREMENT)
    assert fresh.record.score == -1, "a decrement without a record starts from 0"
    replaced = submit(c, inc, "p", 42, operator=lb.OPERATOR_SET)
    assert replaced.record.score == 42 and replaced.record.submissions == 6

    s = board_id()
    create(c, lb.Leaderboard(id=s, operator=lb.OPERATOR_SET))
    submit(c, s, "a", 100)
    lower = submit(c, s, "a", 1)
    assert lower.improved and lower.record.score == 1, "set replaces even with a worse score"
    best = submit(c, s, "a", 0, operator=lb.OPERATOR_BEST)
    assert not best.improved and best.record.score == 1

    # Ascending: lower is better for best.
    asc = board_id()
    create(c, lb.Leaderboard(id=asc, sort_order=lb.SORT_ORDER_ASCENDING))
    submit(c, asc, "lap", 50)
    assert not submit(c, asc, "lap", 60).improved
    faster = submit(c, asc, "lap", 40)
    assert faster.improved and faster.record.score == 40


def test_concurrent_increments_sum_exactly(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid, operator=lb.OPERATOR_INCREMENT))

    def add(start: int) -> None:
        for i in range(start, start + 25):
            submit(c, bid, "p", i)

    threads = [threading.Thread(target=add, args=(1 + 25 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = rank(c, bid, "p")
    assert (r.record.score, r.record.submissions, r.owners) == (5050, 100, 1)


def test_ordering_and_every_tie_break(lb_client: Client) -> None:
    c = lb_client
    # c reaches (10, 5) first, then b; a has (10, 1); d is negative.
    # Earliest: c ahead of b; latest: b ahead of c; owner id: b < c.
    cases = [
        (lb.SORT_ORDER_DESCENDING, lb.TIE_BREAK_EARLIEST, ["c", "b", "a", "d"]),
        (lb.SORT_ORDER_DESCENDING, lb.TIE_BREAK_LATEST, ["b", "c", "a", "d"]),
        (lb.SORT_ORDER_DESCENDING, lb.TIE_BREAK_OWNER_ID, ["b", "c", "a", "d"]),
        (lb.SORT_ORDER_ASCENDING, lb.TIE_BREAK_EARLIEST, ["d", "a", "c", "b"]),
        (lb.SORT_ORDER_ASCENDING, lb.TIE_BREAK_LATEST, ["d", "a", "b", "c"]),
        (lb.SORT_ORDER_ASCENDING, lb.TIE_BREAK_OWNER_ID, ["d", "a", "b", "c"]),
    ]
    for sort, tie, want in cases:
        bid = board_id()
        create(c, lb.Leaderboard(id=bid, sort_order=sort, tie_break=tie, operator=lb.OPERATOR_SET))
        for owner, score, subscore in [("c", 10, 5), ("b", 10, 5), ("a", 10, 1), ("d", -3, 0)]:
            submit(c, bid, owner, score, subscore=subscore)
        page = top(c, bid)
        assert owners(page.records) == want, (sort, tie)
        assert [r.rank for r in page.records] == [1, 2, 3, 4]
        assert page.next_cursor == ""


def test_top_pages_with_a_keyset_cursor(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid, operator=lb.OPERATOR_SET))
    for i in range(7):
        submit(c, bid, f"p{i}", i * 10)
    page1 = top(c, bid, 3)
    assert owners(page1.records) == ["p6", "p5", "p4"] and [r.rank for r in page1.records] == [1, 2, 3]
    assert page1.next_cursor and page1.period_id

    # p0 jumps to the top between pages: the next page neither repeats
    # nor skips an owner that stayed, and its ranks are current.
    submit(c, bid, "p0", 1000)
    page2 = top(c, bid, 3, page1.next_cursor)
    assert owners(page2.records) == ["p3", "p2", "p1"]
    assert [r.rank for r in page2.records] == [5, 6, 7]
    assert page2.next_cursor == "", "no record follows"
    assert owners(top(c, bid).records) == ["p0", "p6", "p5", "p4", "p3", "p2", "p1"]  # limit 0: 10

    with pytest.raises(InvalidArgument) as bad:
        top(c, bid, 100_000, "zz", "yesterday")
    assert fields(bad.value) == {"limit", "cursor", "period_id"}


def test_around_owner_records_rank_and_delete_record(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid))
    for i in range(10):
        submit(c, bid, f"o{i}", i * 100)

    around = c.leaderboard.around_owner(lb.AroundOwnerRequest(leaderboard_id=bid, owner_id="o5", above=2, below=1))
    assert around.found and around.period_id
    assert owners(around.records) == ["o7", "o6", "o5", "o4"]
    assert [(r.rank, r.score) for r in around.records] == [(3, 700), (4, 600), (5, 500), (6, 400)]
    edge = c.leaderboard.around_owner(lb.AroundOwnerRequest(leaderboard_id=bid, owner_id="o9", above=3, below=1))
    assert owners(edge.records) == ["o9", "o8"]
    alone = c.leaderboard.around_owner(lb.AroundOwnerRequest(leaderboard_id=bid, owner_id="o0"))
    assert owners(alone.records) == ["o0"] and alone.records[0].rank == 10

    got = c.leaderboard.records(lb.RecordsRequest(leaderboard_id=bid, owner_ids=["o8", "nobody", "o1"]))
    assert [(r.owner_id, r.rank, r.score) for r in got.records] == [("o8", 2, 800), ("o1", 9, 100)]

    r = rank(c, bid, "o3")
    assert r.found and (r.record.owner_id, r.record.rank, r.record.score, r.owners) == ("o3", 7, 300, 10)
    assert r.period_id == got.period_id == around.period_id
    missing = rank(c, bid, "nobody")
    assert not missing.found and not missing.HasField("record") and missing.owners == 10

    deleted = c.leaderboard.delete_record(lb.DeleteRecordRequest(leaderboard_id=bid, owner_id="o9"))
    assert deleted.deleted
    assert not c.leaderboard.delete_record(lb.DeleteRecordRequest(leaderboard_id=bid, owner_id="o9")).deleted
    first = top(c, bid, 1)
    assert owners(first.records) == ["o8"] and first.records[0].rank == 1
    assert rank(c, bid, "o3").owners == 9
    none = c.leaderboard.around_owner(lb.AroundOwnerRequest(leaderboard_id=bid, owner_id="o9", above=1, below=1))
    assert not none.found and list(none.records) == []

    with pytest.raises(InvalidArgument) as bad:
        c.leaderboard.records(lb.RecordsRequest(leaderboard_id=bid, owner_ids=["o1", ""]))
    assert fields(bad.value) == {"owner_ids[1]"}


# ---------------------------------------------------------------- periods


def test_a_weekly_board_reports_its_current_period(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    made = create(c, lb.Leaderboard(id=bid, reset_cron="0 0 * * MON", time_zone="Europe/Paris", keep_periods=4))
    assert (made.reset_cron, made.time_zone, made.keep_periods) == ("0 0 * * MON", "Europe/Paris", 4)
    period = c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=bid)).current_period
    paris = ZoneInfo("Europe/Paris")
    start = period.start_time.ToDatetime(tzinfo=timezone.utc).astimezone(paris)
    end = period.end_time.ToDatetime(tzinfo=timezone.utc).astimezone(paris)
    assert (start.weekday(), start.hour, start.minute) == (0, 0, 0), start
    assert (end.weekday(), end.hour, end.minute) == (0, 0, 0), end
    assert end.date() - start.date() == timedelta(days=7)
    assert start <= datetime.now(timezone.utc) < end
    written = submit(c, bid, "amy", 5)
    assert written.period_id == period.id
    periods = c.leaderboard.list_periods(lb.ListPeriodsRequest(leaderboard_id=bid)).periods
    assert [(p.id, p.owners) for p in periods] == [(period.id, 1)]


def test_a_resetting_board_keeps_past_periods_readable(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid, reset_cron="* * * * * *", keep_periods=5))
    first = submit(c, bid, "early", 1)
    # "late" is written until a write lands in the next period; each write
    # is in the period its answer names.
    late_in: set[str] = set()
    deadline = time.monotonic() + 5
    while True:
        later = submit(c, bid, "late", 2)
        late_in.add(later.period_id)
        if later.period_id != first.period_id:
            break
        assert time.monotonic() < deadline, "the period never rolled over"
        time.sleep(0.1)
    assert int(later.period_id) > int(first.period_id)
    expected = {first.period_id: ["late", "early"] if first.period_id in late_in else ["early"]}
    expected.update({p: ["late"] for p in late_in if p != first.period_id})

    periods = c.leaderboard.list_periods(lb.ListPeriodsRequest(leaderboard_id=bid)).periods
    starts = [int(p.id) for p in periods]
    assert starts == sorted(starts, reverse=True), "newest first"
    assert {p.id: p.owners for p in periods if p.owners} == {p: len(o) for p, o in expected.items()}
    assert int(periods[0].id) >= int(later.period_id), "the current period first"
    for p in periods:
        assert p.end_time.seconds - p.start_time.seconds == 1

    # Each past period is read by its id.
    for pid, want in expected.items():
        page = top(c, bid, period=pid)
        assert owners(page.records) == want and page.period_id == pid
    assert rank(c, bid, "early", first.period_id).found
    assert not rank(c, bid, "early", later.period_id).found
    removed = c.leaderboard.delete_record(
        lb.DeleteRecordRequest(leaderboard_id=bid, owner_id="early", period_id=first.period_id)
    )
    assert removed.deleted
    assert "early" not in owners(top(c, bid, period=first.period_id).records)
    assert owners(top(c, bid, period=later.period_id).records) == ["late"], "other periods untouched"


# ---------------------------------------------------------------- WatchTop


def _drain(stream: ServerStream[lb.WatchTopResponse], into: queue.Queue[object]) -> None:
    try:
        for answer in stream:
            into.put(answer)
        into.put("end")
    except Exception as e:  # handed to the test thread
        into.put(e)


def _next(answers: queue.Queue[object], timeout: float = 5.0) -> lb.WatchTopResponse:
    item = answers.get(timeout=timeout)
    assert isinstance(item, lb.WatchTopResponse), item
    return item


def _pending(answers: queue.Queue[object]) -> list[object]:
    out: list[object] = []
    while True:
        try:
            out.append(answers.get_nowait())
        except queue.Empty:
            return out


def test_watch_top_follows_the_top_until_the_board_is_deleted(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid))
    stream = c.leaderboard.watch_top(lb.WatchTopRequest(leaderboard_id=bid, limit=2))
    answers: queue.Queue[object] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(stream, answers), daemon=True)
    reader.start()
    try:
        first = _next(answers)
        assert list(first.records) == [] and first.period_id

        submit(c, bid, "amy", 7)
        assert [(r.owner_id, r.score, r.rank) for r in _next(answers).records] == [("amy", 7, 1)]
        submit(c, bid, "bob", 9)
        assert [(r.owner_id, r.rank) for r in _next(answers).records] == [("bob", 1), ("amy", 2)]
        amy = submit(c, bid, "amy", 12)
        got = _next(answers)
        assert [(r.owner_id, r.score, r.rank) for r in got.records] == [("amy", 12, 1), ("bob", 9, 2)]
        assert got.records[0] == amy.record and got.period_id == first.period_id

        c.leaderboard.delete_leaderboard(lb.DeleteLeaderboardRequest(id=bid))
        end = answers.get(timeout=5)
        assert isinstance(end, NotFound), end
    finally:
        stream.cancel()
        reader.join(timeout=5)
    assert not reader.is_alive()

    # A board that does not exist is NOT_FOUND at once.
    with pytest.raises(NotFound):
        next(c.leaderboard.watch_top(lb.WatchTopRequest(leaderboard_id=bid, limit=2), timeout=5))
    with pytest.raises(InvalidArgument) as bad:
        next(c.leaderboard.watch_top(lb.WatchTopRequest(leaderboard_id=bid, limit=100_000), timeout=5))
    assert fields(bad.value) == {"limit"}


def test_watch_top_is_quiet_while_its_top_stays(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid))
    submit(c, bid, "amy", 7)
    submit(c, bid, "bob", 9)
    stream = c.leaderboard.watch_top(lb.WatchTopRequest(leaderboard_id=bid, limit=2))
    answers: queue.Queue[object] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(stream, answers), daemon=True)
    reader.start()
    try:
        assert owners(_next(answers).records) == ["bob", "amy"]
        # Owners ranked below the top 2 do not change the top 2: nothing is
        # sent (the first such owner included).
        submit(c, bid, "carl", 1)
        submit(c, bid, "dan", 2)
        time.sleep(1.0)  # four watch intervals
        resent = [owners(a.records) for a in _pending(answers) if isinstance(a, lb.WatchTopResponse)]
        assert resent == [], f"WatchTop resent an unchanged top 2: {resent}"
        # A change inside the top 2 is sent.
        submit(c, bid, "dan", 8)
        assert owners(_next(answers).records) == ["bob", "dan"]
    finally:
        stream.cancel()
        reader.join(timeout=5)


# ------------------------------------------------------- retries and input


def test_an_idempotency_key_is_applied_once_and_replayed(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid, operator=lb.OPERATOR_INCREMENT))
    first = submit(c, bid, "bot", 5, idempotency_key="trade-1")
    assert not first.replayed and first.record.score == 5
    again = submit(c, bid, "bot", 5, idempotency_key="trade-1")
    assert again.replayed
    assert again.record == first.record and again.period_id == first.period_id
    # A retry answers the first answer even if the rest of it differs.
    differs = submit(c, bid, "bot", 100, idempotency_key="trade-1")
    assert differs.replayed and differs.record.score == 5
    r = rank(c, bid, "bot")
    assert (r.record.score, r.record.submissions) == (5, 1), "applied once"

    # Keys are per owner; another key applies again.
    other_owner = submit(c, bid, "human", 3, idempotency_key="trade-1")
    assert not other_owner.replayed and other_owner.record.score == 3
    other_key = submit(c, bid, "bot", 5, idempotency_key="trade-2")
    assert not other_key.replayed and other_key.record.score == 10
    assert rank(c, bid, "bot").record.submissions == 2


def test_bad_input_names_every_field(lb_client: Client) -> None:
    c = lb_client
    with pytest.raises(InvalidArgument) as bad:
        c.leaderboard.submit(
            lb.SubmitRequest(
                leaderboard_id="{bad}",
                owner_id="",
                score=-(1 << 63),
                subscore=(1 << 63) - 1,
                operator=99,  # type: ignore[arg-type]
                metadata=b"\0" * (1 << 20),
                idempotency_key="k" * 4096,
            )
        )
    assert fields(bad.value) == {
        "leaderboard_id",
        "owner_id",
        "score",
        "subscore",
        "operator",
        "metadata",
        "idempotency_key",
    }
    with pytest.raises(InvalidArgument) as board:
        create(
            c, lb.Leaderboard(id="bad id", reset_cron="every day", time_zone="Mars/Base", keep_periods=1_000_000)
        )
    assert fields(board.value) == {
        "leaderboard.id",
        "leaderboard.reset_cron",
        "leaderboard.time_zone",
        "leaderboard.keep_periods",
    }
    with pytest.raises(InvalidArgument) as zone_alone:
        create(c, lb.Leaderboard(id=board_id(), time_zone="Europe/Paris"))
    assert fields(zone_alone.value) == {"leaderboard.time_zone"}
    with pytest.raises(InvalidArgument) as none:
        c.leaderboard.create_leaderboard(lb.CreateLeaderboardRequest())
    assert fields(none.value) == {"leaderboard"}
    with pytest.raises(InvalidArgument) as get:
        c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=""))
    assert fields(get.value) == {"id"}


def test_unknown_boards_are_not_found(lb_client: Client) -> None:
    c, bid = lb_client, board_id("py.lb.none")
    calls: list[Callable[[], object]] = [
        lambda: c.leaderboard.get_leaderboard(lb.GetLeaderboardRequest(id=bid)),
        lambda: submit(c, bid, "x", 1),
        lambda: top(c, bid),
        lambda: rank(c, bid, "x"),
        lambda: c.leaderboard.records(lb.RecordsRequest(leaderboard_id=bid, owner_ids=["x"])),
        lambda: c.leaderboard.around_owner(lb.AroundOwnerRequest(leaderboard_id=bid, owner_id="x")),
        lambda: c.leaderboard.delete_record(lb.DeleteRecordRequest(leaderboard_id=bid, owner_id="x")),
        lambda: c.leaderboard.list_periods(lb.ListPeriodsRequest(leaderboard_id=bid)),
    ]
    for call in calls:
        with pytest.raises(NotFound, match="CreateLeaderboard"):
            call()
    assert not c.leaderboard.delete_leaderboard(lb.DeleteLeaderboardRequest(id=bid)).deleted


def test_scores_at_the_bound_stay_exact(lb_client: Client) -> None:
    c, bid = lb_client, board_id()
    create(c, lb.Leaderboard(id=bid, operator=lb.OPERATOR_INCREMENT))
    submit(c, bid, "hi", LIMIT - 1)
    submit(c, bid, "hi2", LIMIT - 2)
    submit(c, bid, "lo", -LIMIT)
    page = top(c, bid)
    assert [(r.owner_id, r.score) for r in page.records] == [("hi", LIMIT - 1), ("hi2", LIMIT - 2), ("lo", -LIMIT)]
    with pytest.raises(FailedPrecondition):
        submit(c, bid, "hi", 2)  # would pass 2^53 − 1
    r = rank(c, bid, "hi")
    assert (r.record.score, r.record.submissions) == (LIMIT - 1, 1), "nothing was written"
    with pytest.raises(InvalidArgument) as bad:
        submit(c, bid, "x", LIMIT + 1)
    assert fields(bad.value) == {"score"}


# ------------------------------------------------------------------ async


async def test_async_client_submits_reads_and_watches(async_client: AsyncClient) -> None:
    bid = board_id("py.lb.async")
    await async_client.leaderboard.create_leaderboard(
        lb.CreateLeaderboardRequest(leaderboard=lb.Leaderboard(id=bid, operator=lb.OPERATOR_SET))
    )
    await async_client.leaderboard.submit(lb.SubmitRequest(leaderboard_id=bid, owner_id="a", score=3))
    stream = async_client.leaderboard.watch_top(lb.WatchTopRequest(leaderboard_id=bid, limit=3))
    async with stream:
        first = await stream.__anext__()
        assert owners(first.records) == ["a"]
        await async_client.leaderboard.submit(lb.SubmitRequest(leaderboard_id=bid, owner_id="b", score=4))
        second = await stream.__anext__()
        assert [(r.owner_id, r.rank) for r in second.records] == [("b", 1), ("a", 2)]
    page = await async_client.leaderboard.top(lb.TopRequest(leaderboard_id=bid, limit=1))
    assert owners(page.records) == ["b"] and page.next_cursor
    assert (await async_client.leaderboard.delete_leaderboard(lb.DeleteLeaderboardRequest(id=bid))).deleted
