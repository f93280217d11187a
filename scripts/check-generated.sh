#!/usr/bin/env bash
# Regenerates both clients (scripts/gen-clients.sh) and fails if any
# generated file differs from what was there before, i.e. if someone changed
# proto/ (or the generators) without regenerating and committing the clients.
# The tree is left regenerated, so a failing run also fixes it.
set -euo pipefail
cd "$(dirname "$0")/.."

generated=(
  clients/python/src/datalayer/v1
  clients/python/src/datalayer/_services.py
  clients/typescript/src/gen
)
before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
for p in "${generated[@]}"; do
  if [ -e "$p" ]; then
    mkdir -p "$before/$(dirname "$p")"
    cp -R "$p" "$before/$p"
  fi
done

bash scripts/gen-clients.sh >/dev/null

status=0
for p in "${generated[@]}"; do
  if ! diff -ru --exclude=__pycache__ "$before/$p" "$p" >"$before/diff.txt" 2>&1; then
    status=1
    echo "check-generated: $p is out of date:" >&2
    head -n 60 "$before/diff.txt" >&2
  fi
done
if [ $status -ne 0 ]; then
  echo "check-generated: FAILED: run scripts/gen-clients.sh and commit the result" >&2
  exit 1
fi
echo "check-generated: generated clients are up to date"
