#!/usr/bin/env bash
# Runs the end-to-end suite against an already built binary:
#   $DATALAYER_BIN (default target/debug/datalayer, relative to the repo root).
# Builds nothing. Needs `bash scripts/setup.sh` (.venv, node_modules/.bin/buf)
# and redis-server on PATH. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${DATALAYER_BIN:-target/debug/datalayer}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "tests/e2e: the datalayer binary is missing or not executable: $bin" >&2
  echo "tests/e2e: build it first (cargo build) or set DATALAYER_BIN" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "tests/e2e: .venv is missing: run bash scripts/setup.sh" >&2
  exit 2
fi
export DATALAYER_BIN="$bin"
exec .venv/bin/python -m pytest -q tests/e2e "$@"
