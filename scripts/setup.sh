#!/usr/bin/env bash
# Installs everything the test suites need, idempotently, into the repo:
# a Python virtualenv at .venv and npm packages under node_modules/.
# Needs: python3 (3.11+), node 20+ and npm, redis-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "setup: redis-server is not on PATH (Debian: apt-get install redis-server)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
reqs=()
for f in tests/e2e/requirements.txt clients/python/requirements-dev.txt tests/deploy/requirements.txt; do
  [ -f "$f" ] && reqs+=(-r "$f")
done
if [ ${#reqs[@]} -gt 0 ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "${reqs[@]}"
fi
if [ -f clients/python/pyproject.toml ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e clients/python
fi

npm ci --silent --no-audit --no-fund 2>/dev/null || npm install --silent --no-audit --no-fund
if [ -f clients/typescript/package.json ]; then
  (cd clients/typescript && { npm ci --silent --no-audit --no-fund 2>/dev/null || npm install --silent --no-audit --no-fund; })
fi
