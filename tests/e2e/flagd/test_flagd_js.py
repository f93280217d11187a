"""The published JavaScript OpenFeature SDK (@openfeature/server-sdk) and
flagd provider (@openfeature/flagd-provider, RPC mode), from the root
package.json's devDependencies, against the real binary: js/test.mjs becomes
ready, evaluates a boolean and a string flag, then waits for a
configuration-change event while this side changes `changing-flag` through
FlagService.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading

import pytest

from flagd_support import HERE, TestbedServer
from support import REPO_ROOT

SCRIPT = HERE / "js" / "test.mjs"
PACKAGES = ["@openfeature/server-sdk", "@openfeature/flagd-provider", "@grpc/grpc-js"]
TIMEOUT_S = 30


@pytest.fixture
def node():
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not on PATH (Node 20+ is needed for the JavaScript provider test)", pytrace=False)
    for package in PACKAGES:
        if not (REPO_ROOT / "node_modules" / package / "package.json").exists():
            pytest.fail(f"node_modules/{package} is missing: run `bash scripts/setup.sh` (npm ci)", pytrace=False)
    return path


@pytest.fixture
def server(binary, tmp_path):
    server = TestbedServer(binary, tmp_path / "server").start()
    yield server
    server.stop()


def test_js_flagd_provider(node, server):
    proc = subprocess.Popen(
        [node, str(SCRIPT), str(server.port)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    out: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"test.mjs said nothing for {TIMEOUT_S}s; so far: {out}") from None
            if line is None:
                break
            out.append(line)
            if line == "WAITING_FOR_CHANGE":
                assert server.toggle_default_variant("changing-flag") == "bar"
        rc = proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert rc == 0, f"node test.mjs exited {rc}\nstdout:\n" + "\n".join(out) + f"\nstderr:\n{stderr}"
    checks = {c["check"]: c for c in (json.loads(line) for line in out if line.startswith("{"))}
    assert list(checks) == ["ready", "boolean", "string", "change", "after-change", "done"], out
    assert checks["boolean"]["value"] is True
    assert checks["string"]["value"] == "hi"
    assert "changing-flag" in checks["change"]["flagsChanged"]
    assert checks["after-change"]["value"] == "bar"
