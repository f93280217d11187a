#!/usr/bin/env bash
# Runs the deployment tests (Dockerfile + Helm chart). Set up first with
# `bash scripts/setup.sh`. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m pytest -q tests/deploy "$@"
