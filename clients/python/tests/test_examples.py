"""The quickstart of the repository README.md, and the worker and analytics
examples of clients/python/README.md, run as they are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import Stack, require

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart(stack: Stack) -> None:
    require(stack, "datalayer.ratelimit.v1.RateLimitService")
    require(stack, "datalayer.cache.v1.CacheService")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env={**os.environ, "DATALAYER_ADDR": stack.addr},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.splitlines() == [
        "allowed=True remaining=9",
        "computing the report",
        "42 trades today",
        "42 trades today",
        "bad request: key: must not be empty",
    ], out


def test_readme_shows_the_quickstart_verbatim() -> None:
    doc = (EXAMPLES.parents[2] / "README.md").read_text()
    block = doc.split("```python quickstart\n", 1)[1].split("```\n", 1)[0]
    assert block == (EXAMPLES / "quickstart.py").read_text()


def test_worker_example(stack: Stack) -> None:
    """examples/worker.py handles a queue until SIGTERM, as
    clients/python/README.md shows it."""
    import signal
    import time

    from datalayer import Client
    from datalayer.queue.v1 import queue_pb2 as qp

    from .conftest import unique, wait_for

    require(stack, "datalayer.queue.v1.QueueService")
    q = unique("py.example.worker")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "worker.py")],
        env={**os.environ, "DATALAYER_ADDR": stack.addr, "QUEUE": q},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Client(stack.addr) as c:
            for job in ({"path": "a.csv"}, {"path": "b.csv"}, {"nopath": 1}):
                spec = qp.MessageSpec(payload=json.dumps(job).encode(), max_attempts=1)
                c.queue.enqueue(qp.EnqueueRequest(queue=q, message=spec))

            def done() -> bool:
                s = c.queue.stats(qp.StatsRequest(queue=q))
                return s.acked_total == 2 and s.dead == 1

            wait_for(done, timeout=20)
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert sorted(lines[:-1]) == ["analysed a.csv (attempt 1)", "analysed b.csv (attempt 1)"], out
    assert lines[-1] == "stopped: 2 acked, 1 nacked", out
    assert "ValueError: the job names no path" in err  # the handler's failure, logged


def test_python_readme_shows_the_worker_example_verbatim() -> None:
    doc = (EXAMPLES.parent / "README.md").read_text()
    block = doc.split("```python worker\n", 1)[1].split("```\n", 1)[0]
    assert block == (EXAMPLES / "worker.py").read_text()


def test_analytics_example(stack: Stack) -> None:
    """examples/analytics.py tracks through a tracker, then reads, as
    clients/python/README.md shows it."""
    require(stack, "datalayer.analytics.v1.AnalyticsService")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "analytics.py")],
        env={**os.environ, "DATALAYER_ADDR": stack.addr},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.splitlines() == ["binance 1", "kraken 2", "users: 1"], out


def test_python_readme_shows_the_analytics_example_verbatim() -> None:
    doc = (EXAMPLES.parent / "README.md").read_text()
    block = doc.split("```python analytics\n", 1)[1].split("```\n", 1)[0]
    assert block == (EXAMPLES / "analytics.py").read_text()
