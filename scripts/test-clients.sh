#!/usr/bin/env bash
# Tests both clients against the real service binary and a real redis-server:
#   generated code up to date (scripts/check-generated.sh),
#   Python: mypy --strict on the package and examples, then pytest,
#   TypeScript: tsc build into dist/, tsc --noEmit on src+tests+examples,
#               then node --test;
#   packaging (scripts/test-package.sh): each client packed as users get it
#               (wheel / npm pack), installed into a fresh venv / npm project
#               in a temporary directory, its quickstart run against the
#               binary. Needs PyPI and the npm registry, or their caches.
# Assumes scripts/setup.sh has run. The binary is $DATALAYER_BIN, default
# target/debug/datalayer (build it first: cargo build).
# Runs every step even when one fails; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export DATALAYER_BIN=${DATALAYER_BIN:-$root/target/debug/datalayer}
if [ ! -x "$DATALAYER_BIN" ]; then
  echo "test-clients: $DATALAYER_BIN not found: build it first (cargo build)" >&2
  exit 1
fi

failed=()
step() {
  local name=$1
  shift
  echo "==> $name"
  if ! "$@"; then
    failed+=("$name")
    echo "==> FAILED: $name" >&2
  fi
}

step "generated code up to date" bash scripts/check-generated.sh
step "python: mypy --strict" bash -c 'cd clients/python && ../../.venv/bin/mypy --strict'
step "python: pytest" bash -c 'cd clients/python && ../../.venv/bin/python -m pytest -q -p no:cacheprovider'
step "typescript: build (tsc)" bash -c 'cd clients/typescript && npx --no-install tsc -p tsconfig.build.json'
step "typescript: tsc --noEmit" bash -c 'cd clients/typescript && npx --no-install tsc -p tsconfig.json --noEmit'
step "typescript: node --test" bash -c 'cd clients/typescript && node --import tsx --test --test-concurrency=1 --test-reporter=spec test/*.test.ts'
step "python: package (wheel into a fresh venv, quickstart)" bash scripts/test-package.sh python
step "typescript: package (npm pack into a fresh project, quickstart)" bash scripts/test-package.sh typescript

if [ ${#failed[@]} -gt 0 ]; then
  printf 'test-clients: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "test-clients: all client checks passed"
