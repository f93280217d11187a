#!/usr/bin/env bash
# Tests a client as users get it: packaged, installed into a fresh project
# outside the repository, and run against a started service binary
# ($DATALAYER_BIN, on the in-process memory store).
#
#   scripts/test-package.sh python
#     1. `python -m build --no-isolation` (build and hatchling from .venv,
#        pinned in clients/python/requirements-dev.txt): an sdist, and the
#        wheel built from it; the source tree must be left as it was (no
#        src/*.egg-info, no build/);
#     2. a fresh venv of the oldest supported Python found (3.10, else
#        python3), a local wheelhouse of the wheel's dependencies at the
#        versions of .venv (`pip download`, from pip's cache or PyPI), and
#        `pip install --no-index` from it alone, so the wheel's metadata
#        must name everything it needs;
#     3. examples/quickstart.py and the limiter helpers, from a temporary
#        directory, against the binary; the package imported must be the
#        installed one, with py.typed and the .pyi stubs;
#     4. with a Python 3.9 at hand: pip refuses the wheel ("requires a
#        different Python"), and importing the package says it needs 3.10.
#
#   scripts/test-package.sh typescript
#     1. `npm pack` (which builds dist/) into a temporary directory;
#     2. a fresh npm project (`npm init -y`, "type": "module") and
#        `npm install <tarball>` (the dependencies from npm's cache or the
#        registry);
#     3. examples/quickstart.ts compiled by the repository's TypeScript 5
#        and by the newest `typescript` from npm, with a tsconfig that does
#        not name "types" (the package's own @types/node must do), then run
#        against the binary;
#     4. `require("@datalayer/client")` from CommonJS: works where Node has
#        require(esm) (20.19+, 22.12+), else fails with ERR_REQUIRE_ESM.
#
# Each takes well under two minutes once the caches are warm. Assumes
# scripts/setup.sh has run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
what=${1:-}
case $what in python | typescript) ;; *)
  echo "usage: $0 python|typescript" >&2
  exit 2
  ;;
esac
BIN=${DATALAYER_BIN:-$root/target/debug/datalayer}
case $BIN in /*) ;; *) BIN=$root/$BIN ;; esac

fail() {
  printf 'test-package (%s): %s\n' "$what" "$1" >&2
  shift
  if [ $# -gt 0 ]; then printf '%s\n' "$@" >&2; fi
  exit 1
}
log() { printf 'test-package (%s): %s\n' "$what" "$*"; }

[ -x "$BIN" ] || fail "no service binary at $BIN (set DATALAYER_BIN, or cargo build)"
[ -x .venv/bin/python ] || fail "no .venv: run scripts/setup.sh"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/datalayer-package.XXXXXX")
SVC_PID=
cleanup() {
  stop_service
  if [ -n "${PACKAGE_KEEP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the service: the memory store, a free port, SERVING --------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
stop_service() {
  if [ -n "$SVC_PID" ]; then
    kill "$SVC_PID" 2>/dev/null || true
    wait "$SVC_PID" 2>/dev/null || true
    SVC_PID=
  fi
}
# A fresh service (the previous one stopped): the quickstart expects one.
start_service() {
  local port
  stop_service
  port=$(free_port)
  ADDR=127.0.0.1:$port
  env -u DATALAYER_CONFIG -u DATALAYER__REDIS__URL \
    DATALAYER__SERVER__ADDR="$ADDR" \
    DATALAYER__METRICS__ADDR=127.0.0.1:0 \
    DATALAYER__TELEMETRY__LOG_LEVEL=error \
    "$BIN" serve >"$TMP/service.log" 2>&1 &
  SVC_PID=$!
  for _ in $(seq 500); do
    if "$BIN" health --addr "$ADDR" --timeout 1s >/dev/null 2>&1; then return 0; fi
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.02
  done
  cat "$TMP/service.log" >&2
  fail "the service is not SERVING at $ADDR"
}

# What examples/quickstart.{py,ts} print against a fresh service.
expect_quickstart() {
  local got=$1 want
  want=$(printf '%s\n' "allowed=$2 remaining=9" "computing the report" "42 trades today" \
    "42 trades today" "bad request: key: must not be empty")
  [ "$got" = "$want" ] || fail "quickstart printed:" "$got" "expected:" "$want"
}

# Files of $1 (caches left out): what a build may not change.
tree_of() {
  (cd "$1" && find . \( -name .mypy_cache -o -name .pytest_cache -o -name __pycache__ \) -prune -o -print | LC_ALL=C sort)
}

# A Python X.Y interpreter: on PATH, or pyenv's; empty if none.
python_of() {
  local c
  for c in "$(command -v "python$1" 2>/dev/null || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
}

test_python() {
  local pkg=clients/python before after wheel py venv site
  before=$(tree_of "$pkg")
  .venv/bin/python -c 'import build, hatchling' 2>/dev/null ||
    fail ".venv lacks build or hatchling: run scripts/setup.sh (clients/python/requirements-dev.txt)"
  .venv/bin/python -m build --no-isolation --outdir "$TMP/dist" "$pkg" >"$TMP/build.log" 2>&1 ||
    { cat "$TMP/build.log" >&2; fail "python -m build failed"; }
  after=$(tree_of "$pkg")
  if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "building changed $pkg (above: > added, < removed); it must build out of tree"
  fi
  wheel=$(echo "$TMP"/dist/datalayer_client-*-py3-none-any.whl)
  [ -f "$wheel" ] || fail "no wheel in $TMP/dist: $(ls "$TMP/dist")"
  log "built $(basename "$wheel") and $(cd "$TMP/dist" && ls ./*.tar.gz | sed 's|^\./||'); $pkg unchanged"

  py=$(python_of 3.10)
  py=${py:-python3}
  venv=$TMP/venv
  "$py" -m venv "$venv"
  .venv/bin/pip freeze --exclude-editable --disable-pip-version-check >"$TMP/constraints.txt"
  "$venv/bin/pip" download --quiet --disable-pip-version-check -c "$TMP/constraints.txt" \
    --dest "$TMP/wheelhouse" "$wheel" || fail "could not fetch the wheel's dependencies"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$TMP/wheelhouse" \
    datalayer-client || fail "the wheel does not install from its wheelhouse alone"
  log "installed into a fresh venv ($("$venv/bin/python" -V)) with --no-index: $(cd "$TMP/wheelhouse" && ls | paste -sd ' ' -)"

  start_service
  mkdir "$TMP/app"
  cp "$pkg/examples/quickstart.py" "$TMP/app/"
  (
    cd "$TMP/app"
    "$venv/bin/python" -I - <<'EOF' || exit 1
import pathlib, sys
import datalayer
where = pathlib.Path(datalayer.__file__).parent
assert str(where).startswith(sys.prefix), f"datalayer imported from {where}, not the venv"
assert (where / "py.typed").is_file(), "py.typed is missing"
assert (where / "ratelimit" / "v1" / "ratelimit_pb2.pyi").is_file(), "the .pyi stubs are missing"
EOF
    expect_quickstart "$(DATALAYER_ADDR=$ADDR "$venv/bin/python" -I quickstart.py)" True
    DATALAYER_ADDR=$ADDR "$venv/bin/python" -I - <<'EOF'
import asyncio, os
from datalayer import AsyncClient, Client
with Client(f"http://{os.environ['DATALAYER_ADDR']}") as client:
    tokens = client.ratelimit.gcra(10, "10s", prefix="pkg")
    assert tokens.report("u", 25).overdrawn and not tokens.limit("u").success
    ten, two = client.ratelimit.gcra(10, "1m", prefix="ten"), client.ratelimit.gcra(2, "1m", prefix="two")
    answers = [client.ratelimit.limit_all("u", [ten, two]) for _ in range(3)]
    assert [a.success for a in answers] == [True, True, False] and ten.remaining("u") == 8
aio = AsyncClient(os.environ["DATALAYER_ADDR"])  # outside a running event loop
async def main() -> None:
    assert (await aio.ratelimit.gcra(1, "1m").limit("a")).success
    await aio.close()
asyncio.run(main())
EOF
  ) || fail "the installed package failed against the service (above)"
  log "quickstart.py and the limiter helpers ran against the service"

  local py39
  py39=$(python_of 3.9)
  if [ -z "$py39" ]; then
    log "no Python 3.9 found: skipped the requires-python check"
    return 0
  fi
  "$py39" -m venv "$TMP/venv39"
  if "$TMP/venv39/bin/pip" install --disable-pip-version-check --no-index --no-deps "$wheel" >"$TMP/pip39.log" 2>&1; then
    fail "pip installed the wheel on Python 3.9"
  fi
  grep -q "requires a different Python: 3\.9\.[0-9]* not in '>=3.10'" "$TMP/pip39.log" ||
    { cat "$TMP/pip39.log" >&2; fail "pip's refusal on 3.9 does not name the Python version"; }
  mkdir "$TMP/unpacked"
  (cd "$TMP/unpacked" && "$py39" -m zipfile -e "$wheel" .)
  if PYTHONPATH=$TMP/unpacked "$py39" -c 'import datalayer' >"$TMP/import39.log" 2>&1; then
    fail "the package imported on Python 3.9"
  fi
  grep -q "ImportError: datalayer-client needs Python 3.10 or newer" "$TMP/import39.log" ||
    { cat "$TMP/import39.log" >&2; fail "importing on 3.9 does not say it needs 3.10"; }
  log "Python 3.9: pip says \"requires a different Python\", import says it needs 3.10"
}

test_typescript() {
  local pkg=$root/clients/typescript tarball app tsc5 tsc_latest
  command -v npm >/dev/null || fail "npm is not on PATH"
  tsc5=$pkg/node_modules/.bin/tsc
  [ -x "$tsc5" ] || fail "$tsc5 missing: run scripts/setup.sh"
  (cd "$pkg" && npm pack --pack-destination "$TMP" --loglevel=error >"$TMP/pack.log" 2>&1) ||
    { cat "$TMP/pack.log" >&2; fail "npm pack failed"; }
  tarball=$(echo "$TMP"/datalayer-client-*.tgz)
  [ -f "$tarball" ] || fail "no tarball in $TMP"
  # Read into a file first: `grep -q` on a pipe exits at the first match,
  # and under pipefail tar's SIGPIPE would then fail the check at random.
  tar -xzOf "$tarball" package/dist/index.d.ts >"$TMP/index.d.ts"
  grep -q '^/// <reference types="node"' "$TMP/index.d.ts" ||
    fail "dist/index.d.ts lacks its reference to @types/node"

  app=$TMP/app
  mkdir "$app"
  (
    cd "$app"
    npm init -y >/dev/null
    npm pkg set type=module
    npm install --no-audit --no-fund --loglevel=error "$tarball" >"$TMP/install.log" 2>&1 ||
      { cat "$TMP/install.log" >&2; exit 1; }
  ) || fail "npm install of the tarball failed"
  [ -d "$app/node_modules/@types/node" ] || fail "@types/node was not installed with the package"
  log "packed $(basename "$tarball"), installed into a fresh npm project"

  cp "$pkg/examples/quickstart.ts" "$app/"
  # A consumer's tsconfig: no "types", no "lib", no skipLibCheck.
  cat >"$app/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "target": "ES2022",
    "module": "NodeNext",
    "moduleResolution": "NodeNext",
    "strict": true,
    "outDir": "out"
  },
  "files": ["quickstart.ts"]
}
EOF
  (cd "$app" && "$tsc5" -p . && mv out out-ts5) || fail "TypeScript $("$tsc5" --version) could not compile quickstart.ts"
  (cd "$app" && npm install --no-save --no-audit --no-fund --loglevel=error typescript@7.0.2 >"$TMP/tsc.log" 2>&1) ||
    { cat "$TMP/tsc.log" >&2; fail "could not install typescript@7.0.2 (the newest on 2026-12-02)"; }
  tsc_latest=$app/node_modules/.bin/tsc
  (cd "$app" && "$tsc_latest" -p . && mv out out-latest) ||
    fail "TypeScript $("$tsc_latest" --version) (the newest) could not compile quickstart.ts"
  log "quickstart.ts compiles with $("$tsc5" --version) and $("$tsc_latest" --version), no \"types\" in tsconfig"

  local out
  for out in out-ts5 out-latest; do
    start_service
    expect_quickstart "$(cd "$app" && DATALAYER_URL=http://$ADDR node "$out/quickstart.js")" true
  done
  log "the compiled quickstart ran against the service"

  cat >"$app/require.cjs" <<'EOF'
const [major, minor] = process.versions.node.split(".").map(Number);
const requireEsm = (major === 20 && minor >= 19) || (major === 22 && minor >= 12) || major >= 23;
try {
  const { createClient, RateLimiter } = require("@datalayer/client");
  if (typeof createClient !== "function" || typeof RateLimiter !== "function") throw new Error("missing exports");
  if (!requireEsm) throw new Error(`require() worked on Node ${process.versions.node}: update the README`);
  console.log(`require() works on Node ${process.versions.node}`);
} catch (e) {
  if (requireEsm || e.code !== "ERR_REQUIRE_ESM") throw e;
  console.log(`Node ${process.versions.node}: require() fails with ERR_REQUIRE_ESM, as documented`);
}
EOF
  local said
  said=$(cd "$app" && node require.cjs) || fail "require(\"@datalayer/client\") from CommonJS (above)"
  log "$said"
}

"test_$what"
log "passed"
