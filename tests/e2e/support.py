"""Helpers shared by the end-to-end tests: processes (redis-server and the
datalayer binary), health polling and a reflection-only gRPC client.

Nothing here knows the datalayer protos: every datalayer message type is
built at run time from descriptors the server hands out by reflection, the
way grpcurl works.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import types
from pathlib import Path
from typing import IO, Callable, Iterable

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# The configuration file every service in this suite runs with. `auth` is the
# example policy of docs/configuring.md.
CONFIG = """\
[health]
# Notice Redis coming and going quickly (the default is 1s).
probe_interval = "200ms"

[ratelimit.policies.auth]          # 5 login attempts per minute
algorithm = "sliding_window"
limit = 5
window = "1m"

[ratelimit.policies.open]          # keeps answering when Redis is away
algorithm = "gcra"
limit = 100
period = "1m"
fail_mode = "open"
"""

RATELIMIT_SERVICE = "datalayer.ratelimit.v1.RateLimitService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(
    what: str,
    probe: Callable[[], object],
    done: Callable[[object], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
) -> float:
    """Calls `probe` until `done(result)` holds; returns the seconds it took.

    Fails with the last result seen when `timeout` passes first.
    """
    started = time.monotonic()
    last: object = None
    while True:
        try:
            last = probe()
        except Exception as e:  # noqa: BLE001 - reported below if it never settles
            last = e
        else:
            if done(last):
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"{what}: not reached within {timeout}s; last seen: {last!r}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------
# redis-server


class RedisServer:
    """A real `redis-server` on a free port, without persistence."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        assert self.proc is None, "redis-server already running"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poll(
            f"redis-server PONG on port {self.port}",
            self.ping,
            bool,
            timeout=10,
            interval=0.02,
        )
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kills the process like a crash and waits until it is gone."""
        if self.proc is None:
            return
        try:
            self.proc.send_signal(signal.SIGCONT)  # in case it was frozen
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


# --------------------------------------------------------------------------
# the datalayer binary


def datalayer_bin() -> Path:
    """The binary under test: $DATALAYER_BIN, default target/debug/datalayer,
    relative paths taken from the repository root."""
    path = Path(os.environ.get("DATALAYER_BIN", "target/debug/datalayer"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


class Service:
    """The datalayer binary as a child process, configured by file and env."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        config_text: str,
        redis_url: str | None,
    ):
        self.binary = binary
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.config_path = workdir / "datalayer.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / "datalayer.log"
        self.redis_url = redis_url
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def env(self) -> dict[str, str]:
        # Nothing from the caller's environment may reconfigure the service.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DATALAYER") and not k.startswith("OTEL_")
        }
        env["DATALAYER__SERVER__ADDR"] = self.target
        # Several services run at once: never the fixed default metrics port.
        env["DATALAYER__METRICS__ADDR"] = "127.0.0.1:0"
        if self.redis_url is not None:
            env["DATALAYER__REDIS__URL"] = self.redis_url
        return env

    def start(self, wait_serving: bool = True) -> "Service":
        """Starts the process; by default waits until health says SERVING."""
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path)],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if not wait_serving:
            return self
        # Wait for the listener first: a gRPC channel that finds the port
        # closed backs off for a second before trying again.
        try:
            poll("the gRPC port accepts connections", self._accepts, bool, timeout=10, interval=0.02)
        except AssertionError as e:
            self.kill()
            raise AssertionError(f"{e}\n--- service log ---\n{self.log_tail()}") from None
        channel = grpc.insecure_channel(self.target)
        try:
            stub = health_pb2_grpc.HealthStub(channel)

            def overall() -> int:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"datalayer exited with {self.proc.returncode} during start-up:\n"
                        + self.log_tail()
                    )
                return stub.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                ).status

            try:
                poll("health SERVING after start", overall, lambda s: s == SERVING, timeout=10)
            except AssertionError as e:
                self.kill()
                raise AssertionError(f"{e}\n--- service log ---\n{self.log_tail()}") from None
        finally:
            channel.close()
        return self

    def _accepts(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"datalayer exited with {self.proc.returncode} during start-up")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def terminate(self, timeout: float = 20) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"datalayer did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}"
            ) from None
        took = time.monotonic() - started
        self.proc = None
        self._log.close()
        return rc, took

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        if self._log is not None:
            self._log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# health


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


def wait_for_health(
    channel: grpc.Channel, want: int, services: Iterable[str] = ("",), timeout: float = 10
) -> float:
    """Polls every service in `services` until all report `want`."""
    services = list(services)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(want)
    return poll(
        f"health {name} for {services}",
        lambda: {s: health_status(channel, s) for s in services},
        lambda got: all(v == want for v in got.values()),
        timeout=timeout,
    )


# --------------------------------------------------------------------------
# reflection


def _reflection_method(version: str) -> str:
    return f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"


class ReflectionDatabase(ProtoReflectionDescriptorDatabase):
    """grpcio-reflection's descriptor database, over a chosen reflection
    version.

    grpcio-reflection ships the v1alpha messages and stub only. The v1
    messages are the same messages under a new package name: every field,
    number and type is identical, so they are byte-for-byte the same on the
    wire and only the method path differs. For "v1" the same client is
    pointed at `/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`;
    the server routes by that path, so the answers come from its v1 service.
    """

    def __init__(self, channel: grpc.Channel, version: str = "v1"):
        super().__init__(channel)
        self.version = version
        self._stub = types.SimpleNamespace(
            ServerReflectionInfo=channel.stream_stream(
                _reflection_method(version),
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
        )


def raw_reflection(
    channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest, version: str
) -> reflection_pb2.ServerReflectionResponse:
    """One request on a fresh ServerReflectionInfo stream, its one answer."""
    call = channel.stream_stream(
        _reflection_method(version),
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = call(iter([request]), timeout=5)
    return next(responses)


class DynamicClient:
    """Calls methods whose types are known only from reflection."""

    def __init__(self, channel: grpc.Channel, version: str = "v1"):
        self.channel = channel
        self.db = ReflectionDatabase(channel, version)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def message(self, full_name: str):
        """The message class for `full_name`, built from reflected descriptors."""
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def enum_value(self, enum_full_name: str, value_name: str) -> int:
        return self.pool.FindEnumTypeByName(enum_full_name).values_by_name[value_name].number

    def unary(self, method_full_name: str) -> "DynamicMethod":
        """A unary method given as `package.Service/Method`."""
        service_name, _, method_name = method_full_name.partition("/")
        service = self.pool.FindServiceByName(service_name)
        method = service.methods_by_name[method_name]
        assert not method.client_streaming and not method.server_streaming
        return DynamicMethod(self.channel, method)


class DynamicMethod:
    """One unary method, its request and response classes from reflection."""

    def __init__(self, channel: grpc.Channel, method):
        self.descriptor = method
        self.request_class = message_factory.GetMessageClass(method.input_type)
        self.response_class = message_factory.GetMessageClass(method.output_type)
        self._call = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self.response_class.FromString,
        )

    def __call__(self, request=None, timeout: float = 5, **fields):
        """Calls with `request`, or with a request made from `fields`."""
        if request is None:
            request = self.request_class(**fields)
        return self._call(request, timeout=timeout)


def duration_seconds(d) -> float:
    """A google.protobuf.Duration (any message class) in seconds."""
    return d.seconds + d.nanos / 1e9
