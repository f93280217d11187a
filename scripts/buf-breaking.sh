#!/usr/bin/env bash
# Fails if proto/ breaks compatibility (buf's FILE rules, see buf.yaml) with
# the previous commit: buf breaking proto --against '.git#ref=HEAD~1,subdir=proto'.
# Usage: scripts/buf-breaking.sh [REF]   (default HEAD~1)
# Skips, with a message and exit 0, when REF does not exist (first commit,
# shallow clone) or has no proto/ directory yet.
#
# Intended breaks: when the commits from REF to HEAD change proto/BREAKING.md
# (an append-only log, one `## YYYY-MM-DD: title` entry per break), the break
# is deliberate and recorded: the check is skipped, naming the last entry.
# The change must append a new entry and leave the old ones as they were;
# anything else fails. Only committed changes count (REF..HEAD, as CI sees
# them): an uncommitted BREAKING.md does not skip the check.
set -euo pipefail
cd "$(dirname "$0")/.."

ref=${1:-HEAD~1}
log=proto/BREAKING.md
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

# Entry titles (the text after "## ") of the log as stored in a commit; empty
# when the commit has no log.
titles() {
  { git show "$1:$log" 2>/dev/null || true; } | sed -n 's/^## \(.*[^[:space:]]\)[[:space:]]*$/\1/p'
}

if ! git diff --quiet "$ref" HEAD -- "$log"; then
  if ! git cat-file -e "HEAD:$log" 2>/dev/null; then
    echo "buf-breaking: $log was removed since $ref; it is an append-only log" >&2
    exit 1
  fi
  # Append-only: the log at REF must be a prefix of the log at HEAD.
  old_bytes=$( { git show "$ref:$log" 2>/dev/null || true; } | wc -c)
  if [ "$old_bytes" -gt 0 ] &&
     ! cmp -s <(git show "$ref:$log") <(git show "HEAD:$log" | head -c "$old_bytes"); then
    echo "buf-breaking: $log changed text that $ref already had; it is append-only:" >&2
    echo "buf-breaking: add a new entry at the end instead of editing an old one" >&2
    exit 1
  fi
  last=$(titles HEAD | tail -n 1)
  before=$(titles "$ref")
  if [ -z "$last" ] || grep -qxF -- "$last" <<<"$before"; then
    echo "buf-breaking: $log changed since $ref without a new '## YYYY-MM-DD: title' entry at its end" >&2
    exit 1
  fi
  echo "buf-breaking: skipped: intended break recorded in $log: $last"
  exit 0
fi

"$BUF" breaking proto --against ".git#ref=$ref,subdir=proto"
echo "buf-breaking: proto/ is compatible with $ref"
