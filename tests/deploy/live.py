"""The real binary and a real redis-server as child processes, for the deploy
tests that check the chart's monitoring against what the service exports.

The binary is $DATALAYER_BIN (default target/debug/datalayer, relative to the
repository root), as in tests/e2e; scripts/test.sh builds it and sets it.
Both servers listen on 127.0.0.1 only, on ports the kernel picks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from deploy_helpers import REPO


def datalayer_bin() -> Path:
    path = Path(os.environ.get("DATALAYER_BIN", "target/debug/datalayer"))
    return path if path.is_absolute() else REPO / path


def poll(what: str, probe: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Calls `probe` until it returns something true; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as e:  # noqa: BLE001 - reported if it never settles
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout}s; last seen: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """redis-server on a free loopback port, keeping nothing on disk."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poll(f"redis-server on port {self.port}", self.ping)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class Service:
    """The datalayer binary with a config file, its listen addresses set to
    port 0 through the environment; the addresses it picked are read from its
    JSON log."""

    def __init__(self, binary: Path, config: Path, env: dict[str, str]):
        self.binary = binary
        self.config = config
        self.extra_env = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.grpc_addr = ""
        self.metrics_addr = ""

    def env(self) -> dict[str, str]:
        # Nothing from the caller's environment may reconfigure the service.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATALAYER", "OTEL_"))}
        env.update(
            {
                "DATALAYER__SERVER__ADDR": "127.0.0.1:0",
                "DATALAYER__METRICS__ADDR": "127.0.0.1:0",
                "DATALAYER__TELEMETRY__LOG_FORMAT": "json",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> "Service":
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config)],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        poll("the service logs its gRPC and metrics addresses", self._addresses, timeout=15)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _addresses(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"datalayer exited with {self.proc.returncode}:\n{self.log()}")
        for line in list(self.lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = str(entry.get("message", ""))
            if message.startswith("serving Prometheus metrics"):
                self.metrics_addr = entry["addr"]
            elif message.startswith("datalayer serving gRPC"):
                self.grpc_addr = entry["addr"]
        return bool(self.grpc_addr and self.metrics_addr)

    def log(self) -> str:
        return "".join(self.lines[-40:])

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
