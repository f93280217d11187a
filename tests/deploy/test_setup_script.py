"""scripts/setup.sh installs from the lock files as they are: `npm ci`, the
requirements files as written. A lock file out of date is a loud failure
that names the fix, and the lock file is left byte for byte as it was.

The script runs here in a scratch copy of the repository layout, with
package.json files that need nothing from the registry, so these tests need
no network."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy_helpers import REPO

SETUP = REPO / "scripts" / "setup.sh"
PACKAGE = {"name": "scratch", "version": "1.0.0", "private": True}
IN_SYNC_LOCK = {
    "name": "scratch",
    "version": "1.0.0",
    "lockfileVersion": 3,
    "requires": True,
    "packages": {"": {"name": "scratch", "version": "1.0.0"}},
}

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not on PATH")


def scratch_repo(tmp_path: Path, package: dict[str, object], lock: dict[str, object] | None) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    # A dependency npm resolves without the registry.
    (repo / "local-dep").mkdir()
    (repo / "local-dep" / "package.json").write_text('{"name": "local-dep", "version": "1.0.0"}\n')
    shutil.copy(SETUP, repo / "scripts" / "setup.sh")
    (repo / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    if lock is not None:
        (repo / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n")
    return repo


def run_setup(repo: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NPM_CONFIG_UPDATE_NOTIFIER="false", NPM_CONFIG_OFFLINE="true")
    return subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_lock_out_of_date_fails_loudly_and_stays_as_it_was(tmp_path: Path) -> None:
    # package.json asks for a package package-lock.json does not have.
    package = dict(PACKAGE, devDependencies={"local-dep": "file:./local-dep"})
    repo = scratch_repo(tmp_path, package, IN_SYNC_LOCK)
    lock_before = (repo / "package-lock.json").read_bytes()
    done = run_setup(repo)
    assert done.returncode != 0
    assert "package-lock.json is out of date" in done.stderr, done.stderr
    assert "npm install" in done.stderr  # the fix
    assert "Missing: local-dep@1.0.0 from lock file" in done.stderr  # npm's own reason
    assert "Usage:" not in done.stderr
    assert (repo / "package-lock.json").read_bytes() == lock_before
    assert not (repo / "node_modules" / "local-dep").exists()
    # The locks are checked first: nothing else was installed.
    assert not (repo / ".venv").exists()


def test_a_missing_lock_fails_loudly(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path, PACKAGE, None)
    done = run_setup(repo)
    assert done.returncode != 0
    assert "package-lock.json is missing" in done.stderr, done.stderr
    assert not (repo / "package-lock.json").exists()


def test_locks_in_step_install(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path, PACKAGE, IN_SYNC_LOCK)
    lock_before = (repo / "package-lock.json").read_bytes()
    done = run_setup(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repo / "package-lock.json").read_bytes() == lock_before
    assert (repo / ".venv" / "bin" / "python").exists()


def test_setup_never_re_resolves() -> None:
    # No fallback to `npm install` (which rewrites package-lock.json), no
    # pip upgrades past the requirements files.
    text = SETUP.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    commands = re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)  # messages are strings
    assert "npm ci" in commands
    assert "npm install" not in commands
    assert "npm install" in code  # ... named in the messages, as the fix
    assert "--upgrade" not in commands and " -U " not in commands


@pytest.mark.parametrize("directory", [".", "clients/typescript"])
def test_committed_locks_match_their_package_json(directory: str) -> None:
    # What `npm ci` compares first: the dependencies package.json declares
    # are the ones package-lock.json was made for.
    package = json.loads((REPO / directory / "package.json").read_text())
    lock = json.loads((REPO / directory / "package-lock.json").read_text())
    root = lock["packages"][""]
    for kind in ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies"):
        assert package.get(kind, {}) == root.get(kind, {}), f"{directory}: {kind} differ; run `npm install` there"
    for name in {**package.get("dependencies", {}), **package.get("devDependencies", {})}:
        assert f"node_modules/{name}" in lock["packages"], f"{directory}: {name} is not locked"
