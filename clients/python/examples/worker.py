import json
import os
import signal
import threading

from datalayer import Client, Delivery


def analyse(msg: Delivery) -> None:
    job = json.loads(msg.payload)
    if "path" not in job:
        # Raising nacks the message: retried with its backoff, then dead-lettered.
        raise ValueError("the job names no path")
    print(f"analysed {job['path']} (attempt {msg.attempt})", flush=True)
    # Returning acks it.


stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())

with Client(os.environ.get("DATALAYER_ADDR", "localhost:50051")) as client:
    worker = client.queue.work(
        os.environ.get("QUEUE", "analyses"), analyse, concurrency=10, lease="5m", stop_event=stop
    )
    worker.wait()  # until SIGTERM or Ctrl-C; the running handlers finish first
    print(f"stopped: {worker.stats.acked} acked, {worker.stats.nacked} nacked", flush=True)
