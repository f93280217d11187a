"""Fixtures for the end-to-end suite: a real redis-server on a free port and
the real `datalayer` binary (never built here: `$DATALAYER_BIN`, default
`target/debug/datalayer`), configured by a TOML file and environment
variables, exactly as an operator runs it.
"""

from __future__ import annotations

import shutil

import grpc
import pytest

from support import CONFIG, RedisServer, Service, datalayer_bin

# SIGTERM must lead to exit status 0 well within this (shutdown_grace is 10s).
SHUTDOWN_TIMEOUT = 15


@pytest.fixture(scope="session")
def binary():
    path = datalayer_bin()
    if not path.is_file():
        pytest.fail(
            f"the datalayer binary is missing: {path} "
            "(build it first, e.g. `cargo build`, or set DATALAYER_BIN)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session", autouse=True)
def _redis_on_path():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (Debian: apt-get install redis-server)", pytrace=False)


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def _run_service(binary, workdir, redis_url):
    service = Service(binary, workdir, CONFIG, redis_url).start()
    yield service
    if service.running:
        rc, took = service.terminate(timeout=SHUTDOWN_TIMEOUT)
        assert rc == 0, f"datalayer exited with {rc} after SIGTERM:\n{service.log_tail()}"


@pytest.fixture
def service(binary, redis, tmp_path):
    """The service backed by the `redis` fixture, SERVING."""
    yield from _run_service(binary, tmp_path, redis.url)


@pytest.fixture
def memory_service(binary, tmp_path):
    """The service with no Redis URL: the in-process memory store."""
    yield from _run_service(binary, tmp_path, None)


@pytest.fixture
def channel(service):
    ch = grpc.insecure_channel(service.target)
    yield ch
    ch.close()


@pytest.fixture
def memory_channel(memory_service):
    ch = grpc.insecure_channel(memory_service.target)
    yield ch
    ch.close()
