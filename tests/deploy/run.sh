#!/usr/bin/env bash
# Runs the deployment tests: the Dockerfile, the Helm chart, scripts/setup.sh,
# and the chart's alerts and dashboard against the real binary
# ($DATALAYER_BIN, default target/debug/datalayer; built by scripts/test.sh)
# and redis-server. Set up first with `bash scripts/setup.sh`. Builds nothing.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
  echo "tests/deploy: .venv is missing: run bash scripts/setup.sh" >&2
  exit 2
fi
exec .venv/bin/python -m pytest -q tests/deploy "$@"
