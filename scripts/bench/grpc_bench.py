"""Helper of scripts/bench.sh: the requests each workload sends, as
pre-encoded gRPC bodies for h2load, and the same requests made once through
a real gRPC client to check their answers (h2load sees HTTP status only; a
gRPC error is a 200 with `grpc-status` != 0 in the trailers).

    grpc_bench.py bodies OUTDIR           write OUTDIR/<workload>.bin
    grpc_bench.py create-board ADDR       CreateLeaderboard "bench" (SET)
    grpc_bench.py prepare ADDR            Set the key the Get workload reads
    grpc_bench.py verify ADDR WORKLOAD    one real call; exit 1 if it is wrong
    grpc_bench.py path WORKLOAD           the HTTP/2 path of the workload

Runs with the repository's .venv (grpcio and the generated `datalayer`
package from clients/python/src).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

from datalayer.cache.v1 import cache_pb2, cache_pb2_grpc
from datalayer.leaderboard.v1 import leaderboard_pb2 as lb_pb2
from datalayer.leaderboard.v1 import leaderboard_pb2_grpc as lb_grpc
from datalayer.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc

VALUE = b"x" * 100
BOARD = "bench"
# The board bench.sh fills: owner:0000001 .. owner:1000000, owner i with
# score i (descending board, so owner i ranks OWNERS - i + 1).
OWNERS = 1_000_000
RANK_OWNER = 250_000
SUBMIT_OWNER = 750_000


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
}


def frame(message) -> bytes:
    """A gRPC message on the wire: not compressed (0), 4-byte big-endian
    length, the protobuf."""
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def fail(workload: str, what: str, reply) -> None:
    print(f"verify {workload}: {what}; reply: {reply}".replace("\n", " "), file=sys.stderr)
    sys.exit(1)


def verify(addr: str, workload: str) -> None:
    with grpc.insecure_channel(addr) as ch:
        try:
            if workload == "check":
                r = ratelimit_pb2_grpc.RateLimitServiceStub(ch).Check(check_request(), timeout=5)
                if not r.allowed or r.reason != ratelimit_pb2.REASON_WITHIN_LIMIT:
                    fail(workload, "not allowed", r)
                out = f"allowed, remaining {r.remaining} of {r.limit}"
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
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
