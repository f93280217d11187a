"""Helper of scripts/bench.sh: the requests each workload sends, as
pre-encoded gRPC bodies for h2load, and the same requests made once through
a real gRPC client to check their answers (h2load sees HTTP status only; a
gRPC error is a 200 with `grpc-status` != 0 in the trailers).

    grpc_bench.py bodies OUTDIR           write OUTDIR/<workload>.bin
    grpc_bench.py create-board ADDR       CreateLeaderboard "bench" (SET)
    grpc_bench.py prepare ADDR            Set the key the Get workload reads
    grpc_bench.py verify ADDR WORKLOAD    one real call; exit 1 if it is wrong
    grpc_bench.py count ADDR WORKLOAD     what analytics counted so far (Query):
                                          events of the metric "bench"
                                          (analytics-track), or decisions of
                                          the policy bench_analytics
                                          (check-analytics)
    grpc_bench.py path WORKLOAD           the HTTP/2 path of the workload

Runs with the repository's .venv (grpcio and the generated `datalayer`
package from clients/python/src).
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from datalayer.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from datalayer.cache.v1 import cache_pb2, cache_pb2_grpc
from datalayer.leaderboard.v1 import leaderboard_pb2 as lb_pb2
from datalayer.leaderboard.v1 import leaderboard_pb2_grpc as lb_grpc
from datalayer.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as envoy_common_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

VALUE = b"x" * 100
BOARD = "bench"
# The board bench.sh fills: owner:0000001 .. owner:1000000, owner i with
# score i (descending board, so owner i ranks OWNERS - i + 1).
OWNERS = 1_000_000
RANK_OWNER = 250_000
SUBMIT_OWNER = 750_000
# analytics-track: a batch of 100 events of the metric "bench", over 4
# exchanges x 2 sides (8 series), each with its own unique id, from a pool of
# TRACK_IDS ids spelled as redis-benchmark spells __rand_int__ with -r 100
# (%012d), so the raw PFADD adds the same 100 members.
TRACK_METRIC = "bench"
TRACK_BATCH = 100
TRACK_IDS = 100
EXCHANGES = ("binance", "coinbase", "kraken", "bybit")
SIDES = ("buy", "sell")
# check-analytics / check-plain: the policies bench.sh configures, identical
# GCRA limits (a million per second), the first with `analytics = true`.
POLICY_ANALYTICS = "bench_analytics"
POLICY_PLAIN = "bench_plain"
RL_METRIC = "ratelimit.checks"
# check-flood: the policy bench.sh configures (fixed window, 1000 per hour,
# with `ratelimit.denial_cache = true`), checked on one hot key that
# bench.sh first takes to its limit: every later check is over it.
POLICY_FLOOD = "bench_flood"
FLOOD_KEY = "flood-hot"
FLOOD_LIMIT = 1000
# envoy: the domain bench.sh configures in Envoy's YAML (descriptor
# bench=x: a fixed window of a million per second, so every call is OK).
ENVOY_DOMAIN = "bench"
ENVOY_LIMIT = 1_000_000


def owner(i: int) -> str:
    return f"owner:{i:07d}"


def check_request() -> ratelimit_pb2.CheckRequest:
    # GCRA, a million per second: admits everything this machine can send.
    return ratelimit_pb2.CheckRequest(
        key="bench-check",
        limit=ratelimit_pb2.Limit(
            gcra=ratelimit_pb2.Gcra(limit=1_000_000, period=duration_pb2.Duration(seconds=1))
        ),
    )


def policy_check_request(policy: str, key: str = "bench-policy") -> ratelimit_pb2.CheckRequest:
    return ratelimit_pb2.CheckRequest(key=key, policy=policy)


def track_request() -> analytics_pb2.TrackRequest:
    # No value (a count of 1 each), no time (the store's clock).
    return analytics_pb2.TrackRequest(
        events=[
            analytics_pb2.Event(
                metric=TRACK_METRIC,
                dimensions={"exchange": EXCHANGES[i % 4], "side": SIDES[i // 4 % 2]},
                unique_id=f"{i % TRACK_IDS:012d}",
            )
            for i in range(TRACK_BATCH)
        ]
    )


def envoy_request() -> rls_pb2.RateLimitRequest:
    entry = envoy_common_pb2.RateLimitDescriptor.Entry(key="bench", value="x")
    return rls_pb2.RateLimitRequest(
        domain=ENVOY_DOMAIN,
        descriptors=[envoy_common_pb2.RateLimitDescriptor(entries=[entry])],
    )


def get_request() -> cache_pb2.GetRequest:
    return cache_pb2.GetRequest(key="bench-get")


def set_request(key: str = "bench-set", ttl_s: int = 60) -> cache_pb2.SetRequest:
    return cache_pb2.SetRequest(key=key, value=VALUE, ttl=duration_pb2.Duration(seconds=ttl_s))


def submit_request() -> lb_pb2.SubmitRequest:
    # The same score, a better subscore: the first call moves the record
    # (a new write number), every later one keeps it where it is.
    return lb_pb2.SubmitRequest(
        leaderboard_id=BOARD, owner_id=owner(SUBMIT_OWNER), score=SUBMIT_OWNER, subscore=1
    )


def rank_request() -> lb_pb2.RankRequest:
    return lb_pb2.RankRequest(leaderboard_id=BOARD, owner_id=owner(RANK_OWNER))


# workload -> (HTTP/2 path, request)
WORKLOADS = {
    "check": ("/datalayer.ratelimit.v1.RateLimitService/Check", check_request),
    "cache-get": ("/datalayer.cache.v1.CacheService/Get", get_request),
    "cache-set": ("/datalayer.cache.v1.CacheService/Set", set_request),
    "lb-submit": ("/datalayer.leaderboard.v1.LeaderboardService/Submit", submit_request),
    "lb-rank": ("/datalayer.leaderboard.v1.LeaderboardService/Rank", rank_request),
    "analytics-track": ("/datalayer.analytics.v1.AnalyticsService/Track", track_request),
    "check-analytics": (
        "/datalayer.ratelimit.v1.RateLimitService/Check",
        lambda: policy_check_request(POLICY_ANALYTICS),
    ),
    # check-analytics' baseline: the same Check on the policy without analytics.
    "check-plain": (
        "/datalayer.ratelimit.v1.RateLimitService/Check",
        lambda: policy_check_request(POLICY_PLAIN),
    ),
    "check-flood": (
        "/datalayer.ratelimit.v1.RateLimitService/Check",
        lambda: policy_check_request(POLICY_FLOOD, FLOOD_KEY),
    ),
    "envoy": ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", envoy_request),
}


def frame(message) -> bytes:
    """A gRPC message on the wire: not compressed (0), 4-byte big-endian
    length, the protobuf."""
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def fail(workload: str, what: str, reply) -> None:
    print(f"verify {workload}: {what}; reply: {reply}".replace("\n", " "), file=sys.stderr)
    sys.exit(1)


def counted(ch: grpc.Channel, workload: str) -> tuple[int, int]:
    """What analytics hold for the workload over the last hour (1m
    buckets): (count, unique ids)."""
    stub = analytics_pb2_grpc.AnalyticsServiceStub(ch)
    now = time.time()
    since = timestamp_pb2.Timestamp(seconds=int(now) - 3600)
    if workload == "analytics-track":
        metric, filters = TRACK_METRIC, []
    elif workload == "check-analytics":
        metric = RL_METRIC
        filters = [
            analytics_pb2.DimensionFilter(dimension="policy", values=[POLICY_ANALYTICS]),
            analytics_pb2.DimensionFilter(dimension="result", values=["allowed"]),
        ]
    else:
        sys.exit(f"no analytics for {workload}")
    q = stub.Query(
        analytics_pb2.QueryRequest(metric=metric, resolution="1m", filters=filters, **{"from": since}),
        timeout=10,
    )
    total = sum(p.count for s in q.series for p in s.points)
    u = stub.Unique(
        analytics_pb2.UniqueRequest(metric=metric, resolution="1m", **{"from": since}), timeout=10
    )
    return total, u.count


def verify(addr: str, workload: str) -> None:
    with grpc.insecure_channel(addr) as ch:
        try:
            if workload == "check":
                r = ratelimit_pb2_grpc.RateLimitServiceStub(ch).Check(check_request(), timeout=5)
                if not r.allowed or r.reason != ratelimit_pb2.REASON_WITHIN_LIMIT:
                    fail(workload, "not allowed", r)
                out = f"allowed, remaining {r.remaining} of {r.limit}"
            elif workload == "check-flood":
                # Over the limit: denied, with a time to retry (the end of
                # the window), by Redis or by the denial cache alike.
                r = ratelimit_pb2_grpc.RateLimitServiceStub(ch).Check(
                    policy_check_request(POLICY_FLOOD, FLOOD_KEY), timeout=5
                )
                retry = r.retry_after.ToTimedelta().total_seconds()
                if r.allowed or r.reason != ratelimit_pb2.REASON_OVER_LIMIT \
                        or not r.HasField("retry_after") or retry <= 0 \
                        or r.limit != FLOOD_LIMIT or r.remaining != 0:
                    fail(workload, f"expected {FLOOD_KEY} over {POLICY_FLOOD}'s limit of "
                         f"{FLOOD_LIMIT}: denied, REASON_OVER_LIMIT, retry_after set", r)
                out = (f"denied by {POLICY_FLOOD}, {ratelimit_pb2.Reason.Name(r.reason)}, "
                       f"remaining {r.remaining} of {r.limit}, retry_after {retry:.3f} s, "
                       f"reset_after {r.reset_after.ToTimedelta().total_seconds():.3f} s")
            elif workload in ("check-analytics", "check-plain"):
                policy = POLICY_ANALYTICS if workload == "check-analytics" else POLICY_PLAIN
                before = counted(ch, "check-analytics")[0]
                r = ratelimit_pb2_grpc.RateLimitServiceStub(ch).Check(
                    policy_check_request(policy), timeout=5
                )
                if not r.allowed or r.reason != ratelimit_pb2.REASON_WITHIN_LIMIT \
                        or r.limit != 1_000_000:
                    fail(workload, f"not allowed by {policy} (a million per second)", r)
                out = f"allowed by {policy}, remaining {r.remaining} of {r.limit}"
                if workload == "check-analytics":
                    # The decision reaches ratelimit.checks at the next flush
                    # (analytics.flush_interval, 1 s).
                    deadline = time.monotonic() + 5
                    while (now := counted(ch, workload)[0]) <= before:
                        if time.monotonic() > deadline:
                            fail(workload, f"{RL_METRIC} did not count the decision in 5 s", now)
                        time.sleep(0.2)
                    out += f"; {RL_METRIC} {{policy={policy}, result=allowed}}: {before} -> {now}"
            elif workload == "analytics-track":
                before = counted(ch, workload)[0]
                r = analytics_pb2_grpc.AnalyticsServiceStub(ch).Track(track_request(), timeout=5)
                if r.accepted != TRACK_BATCH or r.folded != 0:
                    fail(workload, f"expected {TRACK_BATCH} accepted, none folded", r)
                total, uniques = counted(ch, workload)
                if total - before != TRACK_BATCH:
                    fail(workload, f"the count grew by {total - before}, not {TRACK_BATCH}", r)
                # HyperLogLog: 0.81% standard error.
                if abs(uniques - TRACK_IDS) > TRACK_IDS * 0.05:
                    fail(workload, f"{uniques} unique ids, expected about {TRACK_IDS}", r)
                out = f"accepted {r.accepted}, folded {r.folded}; count {before} -> {total}, {uniques} unique ids"
            elif workload == "envoy":
                r = rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(envoy_request(), timeout=5)
                ok = rls_pb2.RateLimitResponse.OK
                if r.overall_code != ok or len(r.statuses) != 1 or r.statuses[0].code != ok \
                        or r.statuses[0].current_limit.requests_per_unit != ENVOY_LIMIT:
                    fail(workload, f"expected OK under {ENVOY_DOMAIN}'s bench=x limit of {ENVOY_LIMIT}/s", r)
                out = (f"OK, limit {r.statuses[0].current_limit.requests_per_unit}/s, "
                       f"remaining {r.statuses[0].limit_remaining}")
            elif workload == "cache-get":
                r = cache_pb2_grpc.CacheServiceStub(ch).Get(get_request(), timeout=5)
                if not r.found or r.entry.value != VALUE:
                    fail(workload, "not the 100-byte value", r)
                out = f"found, {len(r.entry.value)} bytes, version {r.entry.version}"
            elif workload == "cache-set":
                r = cache_pb2_grpc.CacheServiceStub(ch).Set(set_request(), timeout=5)
                if not r.stored:
                    fail(workload, "not stored", r)
                out = f"stored, version {r.version}"
            elif workload == "lb-submit":
                r = lb_grpc.LeaderboardServiceStub(ch).Submit(submit_request(), timeout=5)
                want = OWNERS - SUBMIT_OWNER + 1
                rec = r.record
                if (rec.owner_id, rec.score, rec.subscore, rec.rank) != (
                    owner(SUBMIT_OWNER), SUBMIT_OWNER, 1, want,
                ):
                    fail(workload, f"expected {owner(SUBMIT_OWNER)} at rank {want}", r)
                out = f"{rec.owner_id} rank {rec.rank} (before {r.previous_rank}), submissions {rec.submissions}"
            elif workload == "lb-rank":
                r = lb_grpc.LeaderboardServiceStub(ch).Rank(rank_request(), timeout=5)
                want = OWNERS - RANK_OWNER + 1
                if not r.found or r.owners != OWNERS or r.record.rank != want \
                        or r.record.score != RANK_OWNER:
                    fail(workload, f"expected {owner(RANK_OWNER)} at rank {want} of {OWNERS}", r)
                out = f"{r.record.owner_id} rank {r.record.rank} of {r.owners}, score {r.record.score}"
            else:
                sys.exit(f"unknown workload {workload}")
        except grpc.RpcError as e:
            fail(workload, f"gRPC {e.code().name}: {e.details()}", "")
    print(f"verify {workload}: ok ({out})")


def main() -> None:
    cmd, *args = sys.argv[1:] or ["help"]
    if cmd == "bodies":
        out = Path(args[0])
        out.mkdir(parents=True, exist_ok=True)
        for name, (_, make) in WORKLOADS.items():
            (out / f"{name}.bin").write_bytes(frame(make()))
    elif cmd == "path":
        print(WORKLOADS[args[0]][0])
    elif cmd == "create-board":
        with grpc.insecure_channel(args[0]) as ch:
            board = lb_pb2.Leaderboard(id=BOARD, operator=lb_pb2.OPERATOR_SET)
            r = lb_grpc.LeaderboardServiceStub(ch).CreateLeaderboard(
                lb_pb2.CreateLeaderboardRequest(leaderboard=board), timeout=5
            )
            print(f"created board {r.leaderboard.id}")
    elif cmd == "prepare":
        with grpc.insecure_channel(args[0]) as ch:
            r = cache_pb2_grpc.CacheServiceStub(ch).Set(set_request("bench-get", 3600), timeout=5)
            if not r.stored:
                sys.exit(f"prepare: bench-get not stored: {r}")
    elif cmd == "verify":
        verify(args[0], args[1])
    elif cmd == "count":
        with grpc.insecure_channel(args[0]) as ch:
            try:
                print(counted(ch, args[1])[0])
            except grpc.RpcError as e:
                sys.exit(f"count {args[1]}: gRPC {e.code().name}: {e.details()}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
