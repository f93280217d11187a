"""Harness: a real `redis-server` on a free port and the real service binary
(`DATALAYER_BIN`, default target/debug/datalayer) pointed at it, started once
per session; health must say SERVING before any test runs.

A second binary on the in-process memory store (no `redis.url`) is started
on demand (`memory_stack`, with the `memory_client` / `async_memory_client`
fixtures). `run_service(..., config=FILE, credentials=...)` starts one with
a configuration file (API keys, TLS: lists do not fit environment
variables), `new_key` makes an API key with `datalayer keys new`, and
`make_certs` a CA, a server and client certificates with `openssl`.

Every call made through a client built by these fixtures is recorded when
it is made (a stream, server-streaming or bidirectional, when it is
opened), and `test_zz_coverage.py` checks that every RPC the running binary serves (asked
by reflection) was called.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from datalayer import AsyncClient, Client

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("DATALAYER_BIN", REPO / "target" / "debug" / "datalayer"))
# Every datalayer package (datalayer.ratelimit.v1, datalayer.cache.v1, ...).
PACKAGE = "datalayer."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_ping(self.port):
            assert time.monotonic() < deadline, f"redis-server did not start on port {self.port}"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def health_status(channel: grpc.Channel, service: str = "") -> int | None:
    """grpc.health.v1.Health/Check with hand-encoded messages: the status
    number (1 = SERVING), or None for an unknown service / no answer."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    name = service.encode()
    request = (b"\x0a" + bytes([len(name)]) + name) if name else b""
    try:
        reply: bytes = check(request, timeout=1)
    except grpc.RpcError:
        return None
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


@dataclass
class Stack:
    addr: str
    redis: Redis
    proc: subprocess.Popen[bytes]
    served: dict[str, list[str]] = field(default_factory=dict)  # service -> methods
    called: set[str] = field(default_factory=set)  # "/pkg.Service/Method"
    #: For a TLS listener: how the harness's own health checks connect.
    credentials: grpc.ChannelCredentials | None = None

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.addr)
        return grpc.secure_channel(self.addr, self.credentials)

    def pause_service(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume_service(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def serves(self, service: str) -> bool:
        return service in self.served

    def wait_serving(self, timeout: float = 15.0) -> None:
        with self.channel() as ch:
            deadline = time.monotonic() + timeout
            while health_status(ch) != 1:
                assert self.proc.poll() is None, "the service exited"
                assert time.monotonic() < deadline, "health never became SERVING"
                time.sleep(0.05)


def reflect_services(addr: str) -> dict[str, list[str]]:
    with grpc.insecure_channel(addr) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        out: dict[str, list[str]] = {}
        for name in db.get_services():
            if name.startswith(PACKAGE):
                out[name] = [m.name for m in pool.FindServiceByName(name).methods]
        return out


def run_service(
    redis: Redis | None,
    called: set[str] | None = None,
    *,
    config: Path | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    reflect: bool = True,
) -> Iterator[Stack]:
    """The binary on a free port, on `redis` (None: the memory store),
    SERVING; stopped (with `redis`) when the generator is closed.

    `config`: a configuration file (`--config`; the environment still sets
    the address, metrics and health settings). `credentials`: how to reach a
    TLS listener for the health checks. `reflect=False` skips listing the
    served RPCs (reflection needs a key when `auth.required` is true)."""
    if not BIN.exists():
        pytest.fail(f"service binary {BIN} not found (build it, or set DATALAYER_BIN)")
    port = free_port()
    env = dict(os.environ)
    env.pop("DATALAYER__REDIS__URL", None)
    env.update(
        DATALAYER__SERVER__ADDR=f"127.0.0.1:{port}",
        DATALAYER__METRICS__ADDR="127.0.0.1:0",
        DATALAYER__HEALTH__PROBE_INTERVAL="100ms",
        DATALAYER__HEALTH__PROBE_TIMEOUT="100ms",
        DATALAYER__TELEMETRY__LOG_LEVEL="warn",
    )
    if redis is not None:
        env["DATALAYER__REDIS__URL"] = f"redis://127.0.0.1:{redis.port}"
    log = open(Path(os.environ.get("DATALAYER_LOG", os.devnull)), "ab")
    args = [str(BIN)] + (["--config", str(config)] if config is not None else [])
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    # On the memory store, `redis` is a placeholder that was never started.
    s = Stack(addr=f"127.0.0.1:{port}", redis=redis or Redis(0), proc=proc, credentials=credentials)
    if called is not None:
        s.called = called
    try:
        s.wait_serving()
        if reflect:
            s.served = reflect_services(s.addr)
        yield s
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if redis is not None:
            redis.kill()
        log.close()


def configured_stack(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, name: str, toml: str
) -> Iterator[Stack]:
    """The binary on a Redis of its own, configured by `toml` (a
    datalayer.toml); its calls count for the coverage check as those of
    `stack` do. For module fixtures: `yield from configured_stack(...)`."""
    config = tmp_path_factory.mktemp(name) / "datalayer.toml"
    config.write_text(toml)
    redis = Redis(free_port())
    redis.start()
    yield from run_service(redis, called=stack.called, config=config)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    redis = Redis(free_port())
    redis.start()
    yield from run_service(redis)


@pytest.fixture(scope="session")
def memory_stack(stack: Stack) -> Iterator[Stack]:
    """The binary on the in-process memory store; its calls count for the
    coverage check as those of `stack` do."""
    yield from run_service(None, called=stack.called)


def _record(called: set[str], details: Any) -> None:
    m = details.method
    called.add(m.decode() if isinstance(m, bytes) else m)


class _Recorder(  # type: ignore[misc]
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor
):
    def __init__(self, called: set[str]) -> None:
        self.called = called

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        _record(self.called, details)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        _record(self.called, details)
        return continuation(details, request)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        # Bidirectional streams (QueueService/Consume): the generated
        # wrappers leave them to the stub, on the same intercepted channel.
        _record(self.called, details)
        return continuation(details, requests)


class _AsyncRecorder(  # type: ignore[misc]
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, called: set[str]) -> None:
        self.called = called

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        _record(self.called, details)
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        _record(self.called, details)
        return await continuation(details, request)

    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        _record(self.called, details)
        return await continuation(details, requests)


@pytest.fixture
def make_client(stack: Stack) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        c = Client(kwargs.pop("target", stack.addr), interceptors=[_Recorder(stack.called)], **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()


@pytest.fixture
async def async_client(stack: Stack) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(stack.addr, interceptors=[_AsyncRecorder(stack.called)])
    yield c
    await c.close()


@pytest.fixture
def memory_client(memory_stack: Stack) -> Iterator[Client]:
    with Client(memory_stack.addr, interceptors=[_Recorder(memory_stack.called)]) as c:
        yield c


@pytest.fixture
async def async_memory_client(memory_stack: Stack) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(memory_stack.addr, interceptors=[_AsyncRecorder(memory_stack.called)])
    yield c
    await c.close()


def require(stack: Stack, service: str) -> None:
    """Skips the test when the running binary does not serve `service` yet."""
    if not stack.serves(service):
        pytest.skip(f"{service} is not served by {BIN}")


def unique(prefix: str) -> str:
    return f"{prefix}:{time.monotonic_ns()}"


@dataclass(frozen=True)
class ApiKey:
    """A key made by `datalayer keys new`: the secret, and the
    `auth.keys` entry the command printed (which keeps only its SHA-256)."""

    key: str
    id: str
    tenant: str
    sha256: str

    def entry(self, allow: tuple[str, ...] = ("*",), expires: str | None = None) -> str:
        """The entry as a YAML flow mapping, as `keys new` prints it."""
        quoted = ", ".join(f'"{a}"' for a in allow)
        extra = f', expires: "{expires}"' if expires else ""
        return f'{{ id: {self.id}, tenant: {self.tenant}, sha256: "{self.sha256}", allow: [{quoted}]{extra} }}'


def new_key(key_id: str, tenant: str) -> ApiKey:
    out = subprocess.run(
        [str(BIN), "keys", "new", "--id", key_id, "--tenant", tenant], check=True, capture_output=True, text=True
    ).stdout
    key = re.search(r"^\s*(dlk_[0-9a-f]{64})$", out, re.M)
    entry = re.search(r'^\s*- \{ id: (\S+), tenant: (\S+), sha256: "([0-9a-f]{64})", allow: \["\*"\] \}$', out, re.M)
    assert key and entry, f"unexpected `datalayer keys new` output:\n{out}"
    assert (entry[1], entry[2]) == (key_id, tenant)
    return ApiKey(key=key[1], id=key_id, tenant=tenant, sha256=entry[3])


@dataclass(frozen=True)
class Certs:
    """PEM files made by `make_certs` in `dir`: `ca.crt`, `server.crt` /
    `server.key` (for localhost and 127.0.0.1), and `<cn>.crt` / `<cn>.key`
    per client common name."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def make_certs(dir: Path, clients: tuple[str, ...] = ()) -> Certs:
    """A CA, a server certificate it signed for localhost and 127.0.0.1
    (subjectAltName), and one client certificate (X.509 v3, extendedKeyUsage
    clientAuth) per common name in `clients`."""
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    new_ca = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]
    _openssl(dir, *new_ca, "-subj", "/CN=datalayer-client-test-ca", *ca_ext)
    leaves = [("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")]
    leaves += [(cn, cn, "extendedKeyUsage=clientAuth\n") for cn in clients]
    for name, cn, ext in leaves:
        (dir / f"{name}.ext").write_text(ext)
        csr = ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr"]
        _openssl(dir, *csr, "-subj", f"/CN={cn}")
        sign = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
        _openssl(dir, *sign, "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return Certs(dir)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Polls `predicate` until it answers something truthy (returned), or
    fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(interval)
