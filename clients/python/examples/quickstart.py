import os
import time
from typing import Callable

from google.protobuf.duration_pb2 import Duration

from datalayer import Client, DatalayerError, InvalidArgument, Unavailable
from datalayer.cache.v1 import cache_pb2
from datalayer.ratelimit.v1 import ratelimit_pb2

target = os.environ.get("DATALAYER_ADDR", "localhost:50051")

with Client(target, timeout=2.0, retries=3) as client:
    # Rate limit: 10 calls per minute for user:42 (GCRA).
    ten_a_minute = ratelimit_pb2.Limit(
        gcra=ratelimit_pb2.Gcra(limit=10, period=Duration(seconds=60))
    )
    answer = client.ratelimit.check(
        ratelimit_pb2.CheckRequest(key="user:42", limit=ten_a_minute)
    )
    print(f"allowed={answer.allowed} remaining={answer.remaining}")

    # Cache get-or-set: one caller computes a missing value, the others wait.
    def get_or_set(key: str, compute: Callable[[], bytes]) -> bytes:
        while True:
            got = client.cache.get_or_lease(cache_pb2.GetOrLeaseRequest(key=key))
            if got.status in (cache_pb2.LEASE_STATUS_HIT, cache_pb2.LEASE_STATUS_STALE):
                return got.entry.value
            if got.status == cache_pb2.LEASE_STATUS_LEASED:
                value = compute()
                client.cache.set(
                    cache_pb2.SetRequest(
                        key=key,
                        value=value,
                        ttl=Duration(seconds=300),
                        lease_token=got.lease_token,
                    )
                )
                return value
            time.sleep(got.retry_after.ToTimedelta().total_seconds())  # WAIT

    def compute_report() -> bytes:
        print("computing the report")
        return b"42 trades today"

    print(get_or_set("report:today", compute_report).decode())
    print(get_or_set("report:today", compute_report).decode())  # a hit

    # Errors are exceptions carrying the service's details.
    try:
        client.ratelimit.check(ratelimit_pb2.CheckRequest(key="", limit=ten_a_minute))
    except InvalidArgument as err:
        for field, description in err.field_violations:
            print(f"bad request: {field}: {description}")
    except Unavailable as err:  # retried only when safe (RetryInfo), then raised
        print(f"store down, retry in {err.retry_after}s")
    except DatalayerError as err:  # any other status
        print(f"failed: {err.code.name}: {err.message}")
