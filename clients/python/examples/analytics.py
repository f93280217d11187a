import os

from datalayer import Client

with Client(os.environ.get("DATALAYER_ADDR", "localhost:50051")) as client:
    # track() only buffers: a thread sends the events every second, or as soon as 500 wait.
    with client.analytics.tracker(flush_every="1s", max_batch=500) as tracker:
        for exchange in ("kraken", "kraken", "binance"):
            tracker.track("signals", exchange=exchange, unique_id="user:42")
    # Leaving the block sent what was left.
    for series in client.analytics.series("signals", since="1h", group_by=["exchange"]):
        print(series.dimensions["exchange"], series.count)
    print("users:", client.analytics.count_unique("signals", since="1h"))
