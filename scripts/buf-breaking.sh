#!/usr/bin/env bash
# Fails if proto/ breaks compatibility (buf's FILE rules, see buf.yaml) with
# the previous commit: buf breaking proto --against '.git#ref=HEAD~1,subdir=proto'.
# Usage: scripts/buf-breaking.sh [REF]   (default HEAD~1)
# Skips, with a message and exit 0, when REF does not exist (first commit,
# shallow clone) or has no proto/ directory yet.
set -euo pipefail
cd "$(dirname "$0")/.."

ref=${1:-HEAD~1}
BUF=node_modules/.bin/buf
[ -x "$BUF" ] || BUF=$(command -v buf || true)
[ -n "$BUF" ] || { echo "buf-breaking: buf not found; run scripts/setup.sh" >&2; exit 1; }

if ! git rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then
  echo "buf-breaking: skipped: $ref does not exist in this clone (first commit or shallow clone)"
  exit 0
fi
if ! git cat-file -e "$ref:proto" 2>/dev/null; then
  echo "buf-breaking: skipped: $ref has no proto/ directory"
  exit 0
fi
"$BUF" breaking proto --against ".git#ref=$ref,subdir=proto"
echo "buf-breaking: proto/ is compatible with $ref"
