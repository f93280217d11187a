#!/usr/bin/env bash
# Runs every test of the project, from a fresh clone:
#   1. installs what the suites need (scripts/setup.sh: .venv, node_modules);
#   2. the Rust suites: unit tests, and the one integration-test binary
#      (tests/it) that shares one redis-server and one 3-master cluster per
#      run, starts servers of its own where a test kills or freezes Redis,
#      and the service on port 0. Built with the example service (`echo`),
#      which proves a service gets routes, health and invariants by one
#      line in the registration list;
#   3. end-to-end: reflection + `buf curl` + health against the real binary;
#   4. the Python and TypeScript clients against the real binary;
#   5. the Dockerfile and Helm chart checks.
# Needs redis-server, python3, node/npm and cargo on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "cargo test"
cargo test --locked --all-targets --features echo
# The binary the other suites run is the product's, without the example
# service (cargo test built one with it).
cargo build --locked --bins

# Where cargo put it (CARGO_TARGET_DIR may point elsewhere).
export DATALAYER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/datalayer"

step "end-to-end (reflection, buf curl, health)"
bash tests/e2e/run.sh

if [ -f scripts/test-clients.sh ]; then
  step "clients (Python, TypeScript)"
  bash scripts/test-clients.sh
fi

step "deploy (Dockerfile, Helm chart)"
bash tests/deploy/run.sh

step "all tests passed"
