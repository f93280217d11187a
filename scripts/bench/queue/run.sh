#!/usr/bin/env bash
# Queue benchmark: datalayer's QueueService against BullMQ, on the same
# Redis, in the same run, at the same concurrency.
#
#   scripts/bench/queue/run.sh
#   QBENCH_JOBS=50000 QBENCH_CONCURRENCY=100 QBENCH_BATCH=10 scripts/bench/queue/run.sh
#
# It starts its own redis-server (no persistence) on a free port and the
# service binary (DATALAYER_BIN; default /work/bin/datalayer-release, else
# target/release/datalayer) against it, installs bullmq, ioredis and Connect
# into a scratch directory (never into the repository's package.json or
# lock), compiles the TypeScript client (clients/typescript/src) into that
# directory, and runs bench.mjs there (see its header for the phases and
# what is measured). Both systems run in one node process, one after the
# other, phase by phase; the table is printed on stdout, progress on stderr.
#
# Settings (environment): QBENCH_JOBS (N, default 20000), QBENCH_CONCURRENCY
# (C, default 50: the consumer's jobs in flight, Consume credits / Worker
# concurrency), QBENCH_PRODUCERS (enqueue calls in flight, default C),
# QBENCH_BATCH (jobs per enqueue call at full load: EnqueueBatch / addBulk
# when > 1; default 1), QBENCH_WARMUP (default 2000), QBENCH_HALF_SECONDS
# (longest offered load of the half and same-load phases, default 10),
# QBENCH_DL_CONSUMER (consume, the default: the client's worker helper, one
# Consume stream with C credits, acks on the stream; consume-unary: the raw
# stream, a unary Ack + a credit per job; lease: C loops of Lease + Ack),
# QBENCH_DL_ENQUEUE (one job per call: add, the default, the client's
# `dl.queue.add`, batched per event-loop turn; unary: one Enqueue per job),
# BULLMQ_VERSION (default: the latest).
#
# Needs: redis-server, redis-cli, node 20+ and npm on PATH, network access
# to the npm registry, and clients/typescript/node_modules (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=scripts/bench/queue

if [ -z "${DATALAYER_BIN:-}" ]; then
  if [ -x /work/bin/datalayer-release ]; then
    DATALAYER_BIN=/work/bin/datalayer-release
  else
    DATALAYER_BIN=target/release/datalayer
  fi
fi
BIN=$DATALAYER_BIN

fail() {
  printf 'queue bench: %s\n' "$@" >&2
  exit 1
}
log() { printf '%s\n' "$*" >&2; }

for tool in redis-server redis-cli node npm getconf; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH"
done
[ -x "$BIN" ] || fail "no service binary at $BIN (set DATALAYER_BIN, or cargo build --release)"
[ -x clients/typescript/node_modules/.bin/tsc ] ||
  fail "clients/typescript/node_modules is missing: run scripts/setup.sh"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/datalayer-queue-bench.XXXXXX")
REDIS_PID=
SVC_PID=
cleanup() {
  local pid
  for pid in $SVC_PID $REDIS_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $SVC_PID $REDIS_PID; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# --- the node side: bullmq, ioredis, Connect, the compiled client ------------
# Connect and protobuf-es at the versions clients/typescript's lock pins.
pinned() {
  node -p "require('./clients/typescript/package-lock.json').packages['node_modules/$1'].version"
}
PKGS=(
  "bullmq@${BULLMQ_VERSION:-latest}"
  ioredis
  "@connectrpc/connect@$(pinned @connectrpc/connect)"
  "@connectrpc/connect-node@$(pinned @connectrpc/connect-node)"
  "@bufbuild/protobuf@$(pinned @bufbuild/protobuf)"
)
log "installing ${PKGS[*]} into $TMP"
npm install --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
  --prefix "$TMP" "${PKGS[@]}" >"$TMP/npm.log" 2>&1 || {
  cat "$TMP/npm.log" >&2
  fail "npm install failed"
}
log "compiling clients/typescript/src into $TMP/dl"
(cd clients/typescript && ./node_modules/.bin/tsc -p tsconfig.build.json \
  --outDir "$TMP/dl" --declaration false --sourceMap false) ||
  fail "the TypeScript client does not compile"
cp "$HERE/bench.mjs" "$TMP/bench.mjs"
BULLMQ_V=$(node -p "require('$TMP/node_modules/bullmq/package.json').version")
IOREDIS_V=$(node -p "require('$TMP/node_modules/ioredis/package.json').version")

# --- redis-server and the service --------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
  [ "$(redis-cli -p "$RPORT" PING 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(redis-cli -p "$RPORT" PING 2>/dev/null)" = PONG ] || fail "redis-server did not start ($TMP/redis.log)"

GPORT=$(free_port)
MPORT=$(free_port)
ADDR=127.0.0.1:$GPORT
env -u DATALAYER_CONFIG \
  DATALAYER__REDIS__URL="redis://127.0.0.1:$RPORT" \
  DATALAYER__SERVER__ADDR="$ADDR" \
  DATALAYER__METRICS__ADDR="127.0.0.1:$MPORT" \
  DATALAYER__TELEMETRY__LOG_LEVEL=warn \
  "$BIN" serve >"$TMP/service.log" 2>&1 &
SVC_PID=$!
ready=
for _ in $(seq 100); do
  if "$BIN" health --addr "$ADDR" --timeout 1s >/dev/null 2>&1; then
    ready=1
    break
  fi
  kill -0 "$SVC_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  cat "$TMP/service.log" >&2
  fail "the service is not SERVING at $ADDR"
fi

# --- the run ------------------------------------------------------------------
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(redis-server --version | cut -d' ' -f1-3); node $(node --version); bullmq $BULLMQ_V (ioredis $IOREDIS_V); $("$BIN" --version) ($BIN)"
started=$(date +%s)
status=0
(cd "$TMP" && env \
  QBENCH_ADDR="$ADDR" \
  QBENCH_REDIS_URL="redis://127.0.0.1:$RPORT" \
  QBENCH_METRICS_URL="http://127.0.0.1:$MPORT/metrics" \
  QBENCH_REDIS_PID="$REDIS_PID" \
  QBENCH_DATALAYER_PID="$SVC_PID" \
  QBENCH_CLK_TCK="$(getconf CLK_TCK)" \
  node bench.mjs) || status=$?
echo "run took $(($(date +%s) - started)) s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
kill -0 "$SVC_PID" 2>/dev/null || log "the service exited during the run"
if grep -Eq 'WARN|ERROR' "$TMP/service.log"; then
  echo "service log warnings/errors:"
  grep -E 'WARN|ERROR' "$TMP/service.log" | head -20
fi
exit "$status"
