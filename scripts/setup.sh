#!/usr/bin/env bash
# Installs everything the test suites need into the repository, from the lock
# files as they are:
#   - npm packages under node_modules/ (and clients/typescript/node_modules/)
#     with `npm ci`, which installs package-lock.json exactly and refuses a
#     lock that is out of step with its package.json;
#   - a Python virtualenv at .venv with the requirements files as written
#     (their exact pins and ranges; nothing is upgraded past them).
# It never writes a lock file. When one is out of date it stops with an
# error that says how to fix it; fix it yourself, review and commit it.
# Idempotent. Needs: python3 (3.11+), node 20+ and npm, redis-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  printf 'setup: %s\n' "$@" >&2
  exit 1
}

command -v redis-server >/dev/null || fail "redis-server is not on PATH (Debian: apt-get install redis-server)"
command -v python3 >/dev/null || fail "python3 is not on PATH (3.11+ is needed)"
command -v npm >/dev/null || fail "npm is not on PATH (node 20+ with npm is needed)"

# `npm ci` in $1, exactly as package-lock.json says. A lock out of step with
# package.json is an error, never a reason to re-resolve.
npm_ci() {
  local dir=$1 out backup status=0
  [ -f "$dir/package.json" ] || return 0
  [ -f "$dir/package-lock.json" ] ||
    fail "$dir/package-lock.json is missing." \
      "Run \`npm install\` in $dir, review the lock file it writes and commit it."
  backup=$(mktemp)
  cp "$dir/package-lock.json" "$backup"
  out=$(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error 2>&1) || status=$?
  if ! cmp -s "$backup" "$dir/package-lock.json"; then
    # npm ci does not write the lock; if a future npm ever did, undo it.
    cp "$backup" "$dir/package-lock.json"
    rm -f "$backup"
    fail "npm ci changed $dir/package-lock.json; it was restored. Check the npm version (npm $(npm --version))."
  fi
  rm -f "$backup"
  if [ "$status" -ne 0 ]; then
    if grep -qi "in sync" <<<"$out"; then
      # npm's reason and what differs, without the usage text it appends.
      grep -Ei "in sync|^npm error (missing|invalid):" <<<"$out" >&2 || true
      fail "$dir/package-lock.json is out of date with $dir/package.json (npm's message above)." \
        "Run \`npm install\` in $dir, review and commit package-lock.json; this script never rewrites it."
    fi
    printf '%s\n' "$out" >&2
    fail "\`npm ci\` failed in $dir (exit $status, output above)."
  fi
}

# The lock files first: the quickest to find out of date.
npm_ci .
npm_ci clients/typescript

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || fail "could not create .venv with python3 -m venv (Debian: apt-get install python3-venv)"
fi
reqs=()
for f in tests/e2e/requirements.txt clients/python/requirements-dev.txt tests/deploy/requirements.txt; do
  if [ -f "$f" ]; then reqs+=(-r "$f"); fi
done
if [ ${#reqs[@]} -gt 0 ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "${reqs[@]}" ||
    fail "pip could not install the pinned requirements (${reqs[*]}); see pip's message above." \
      "The files disagree with each other or with PyPI: fix the pins there, this script installs them as written."
fi
if [ -f clients/python/pyproject.toml ]; then
  # The former setuptools backend left src/*.egg-info in the tree (hatchling
  # writes nothing there); a stale one would be seen as a second install.
  rm -rf clients/python/src/*.egg-info
  .venv/bin/pip install --quiet --disable-pip-version-check -e clients/python ||
    fail "pip could not install clients/python (see pip's message above)."
fi
if ! out=$(.venv/bin/pip check --disable-pip-version-check 2>&1); then
  printf '%s\n' "$out" >&2
  fail "the installed Python packages conflict (above); fix the pins in the requirements files."
fi
