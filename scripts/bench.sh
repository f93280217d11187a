#!/usr/bin/env bash
# Benchmark: each workload through the service (gRPC) against its raw Redis
# equivalent, on this machine, in one run, at the same concurrency.
#
#   scripts/bench.sh                                  # every workload
#   BENCH_SECONDS=5 BENCH_WORKLOADS="check lb-rank" scripts/bench.sh
#
# It starts its own redis-server (no persistence) and the service binary
# (DATALAYER_BIN; default /work/bin/datalayer-release, else
# target/release/datalayer) pointed at it, and for each workload runs:
#   1. service: h2load (nghttp2-client) sending a pre-encoded gRPC body,
#      BENCH_CONNECTIONS connections x BENCH_STREAMS streams, BENCH_SECONDS;
#   2. raw: redis-benchmark with as many connections (-P 1), the Redis
#      equivalent of the call, for about as long (analytics-track and
#      check-analytics compare otherwise: see below);
#   3. service at half the rate measured in (1) (h2load --rps), for the p99
#      at half load (from h2load's per-request log).
# It records the CPU each process spent per call (/proc/<pid>/stat utime +
# stime deltas; the load generator's from its parent's cutime + cstime) and
# checks every workload's answer once with a real gRPC client before and
# after timing it (h2load sees HTTP status only: a gRPC error is a 200 with
# grpc-status != 0), and counts non-OK codes from the service's metrics.
#
# Workloads: check (RateLimitService/Check, inline GCRA admitting
# everything, vs EVALSHA of the same script), cache-get / cache-set (a
# 100-byte value, vs GET / SET PX), lb-submit / lb-rank (Submit / Rank on a
# board of 1,000,000 owners, vs ZADD / ZREVRANK on a 1,000,000-member sorted
# set), and:
#
# analytics-track: AnalyticsService/Track of a batch of 100 events (metric
#   "bench", dimensions exchange (4 values) x side (buy, sell): 8 series;
#   each event a count of 1, no time, its own unique_id from a pool of 100
#   ids), reported in events/s (calls/s x 100) and CPU per event. The
#   service writes them as one EVALSHA: per series and resolution (1m, 1h,
#   1d) HINCRBY count + HINCRBYFLOAT sum + PEXPIREAT, per resolution one
#   PFADD of the 100 ids, plus the combination bookkeeping. "raw" is what a
#   client without the service would send for the same events at a single
#   resolution, with no sums, expiry or combination cap: per event one
#   `HINCRBY <hash> <series field> 1` and one `PFADD <hll> <id>`, pipelined
#   100 events (200 commands) per round trip, at the same concurrency.
#   redis-benchmark repeats one command per pipeline, so it is measured as
#   two runs, HINCRBY (the field drawn from 8, -r 8) and PFADD (the id drawn
#   from the same 100 ids, -r 100), each -P 200 (a 200-command round trip's
#   cost per command), each sending n commands; the two run one after the
#   other on one Redis, so raw events/s = 1 / (1/HINCRBY/s + 1/PFADD/s) and
#   raw CPU per event = both runs' CPU / n. Both sides' counts are checked
#   afterwards (the service's through Query, raw's with HLEN, PFCOUNT and
#   the hash's total).
# check-analytics: RateLimitService/Check on the configured policy
#   bench_analytics (GCRA, a million per second, `analytics = true`: each
#   decision counted in memory, flushed to the metric ratelimit.checks
#   every analytics.flush_interval, 1 s) vs the same Check on bench_plain
#   (the same limit, no analytics): the service against itself, no Redis
#   baseline. Timed as plain, analytics, analytics, plain ($SECS each, so
#   drift cancels out), figures summed per policy; the ratio is
#   analytics / plain (the goal: within 5%). The decisions ratelimit.checks
#   counted during the analytics runs are compared with the calls answered.
# check-flood: RateLimitService/Check of one hot key, "flood-hot", on the
#   configured policy bench_flood (fixed window, 1000 per 1h), with
#   `ratelimit.denial_cache = true` (set for the whole run: the other Check
#   workloads pay its lookup, a miss, per call). Before timing, h2load takes
#   the key to its limit (1000 admitted checks); from then on every check is
#   over it (the flood case: one hot key, 95%+ of checks denied), and after
#   the first denial, which Redis answers, the denial cache answers them in
#   process until the window ends. Raw is EVALSHA of the same fixed-window
#   script, with the SHA and ARGV captured from MONITOR as for check, on
#   another key that the same call first takes to the same limit (1000
#   calls): every timed call is one over-limit EVALSHA, which Redis answers
#   without writing. Reported besides: the denial cache's hits and misses
#   (datalayer_ratelimit_denial_cache_lookups_total) and the EVALSHAs Redis
#   ran (INFO commandstats) during the service run, and the ratio against
#   the issue's target (>= 3x raw). The answer is checked before (Redis's)
#   and after (the cache's): denied, REASON_OVER_LIMIT, retry_after set.
# envoy: Envoy's envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
#   (the body encoded with PyPI's xds-protos) of domain "bench", one
#   descriptor bench=x, configured in Envoy's YAML shape as a fixed window
#   of a million per second (every call OK). Raw is EVALSHA of the same
#   fixed-window script, captured from MONITOR as for check.
#
# Server threads: the service runs with its default runtime (one worker
# thread per core) unless DATALAYER__SERVER__WORKER_THREADS is set, which
# the binary reads as server.worker_threads (here, on 2 cores shared with
# Redis and the load generator, 1 thread measured faster: docs/benchmark.md).
#
# BENCH_PERF=1 samples the service with `perf record -g` during each
# full-speed service run and prints its top symbols by self time
# (BENCH_PERF_TOP, default 25) on stderr; perf must be on PATH. With
# BENCH_PERF=dwarf the call graphs come from DWARF (see them with
# BENCH_KEEP=1 and `perf report -i <kept dir>/<workload>.perf`). The
# sampling costs the service CPU: take the figures from a run without it.
#
# Nothing here fails on a time: it measures and prints.
#
# Needs: redis-server, redis-benchmark, redis-cli, curl on PATH; h2load (installed
# with apt-get when missing); the repository's .venv (scripts/setup.sh) for
# grpcio and the generated Python client, which encode the bodies.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-10}
STREAMS=${BENCH_STREAMS:-5}
CONC=$((CONNS * STREAMS))
WORKLOADS=${BENCH_WORKLOADS:-check check-flood envoy cache-get cache-set lb-submit lb-rank analytics-track check-analytics}
OWNERS=1000000
# analytics-track: events per Track, the pool of unique ids, the series (4
# exchanges x 2 sides); as in grpc_bench.py (TRACK_BATCH, TRACK_IDS).
TRACK_BATCH=100
TRACK_IDS=100
TRACK_SERIES=8
# check-analytics: analytics.flush_interval, in seconds.
FLUSH=1
# check-flood: bench_flood's limit per window; as in grpc_bench.py
# (FLOOD_LIMIT).
FLOOD_LIMIT=1000
FLOOD_WINDOW=1h
if [ -z "${DATALAYER_BIN:-}" ]; then
  if [ -x /work/bin/datalayer-release ]; then
    DATALAYER_BIN=/work/bin/datalayer-release
  else
    DATALAYER_BIN=target/release/datalayer
  fi
fi
BIN=$DATALAYER_BIN
PY=.venv/bin/python
HELPER=scripts/bench/grpc_bench.py

fail() {
  printf 'bench: %s\n' "$@" >&2
  exit 1
}
log() { printf '%s\n' "$*" >&2; }

# --- prerequisites ---------------------------------------------------------
if ! command -v h2load >/dev/null; then
  log "installing h2load (nghttp2-client)"
  apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi
for tool in h2load redis-server redis-benchmark redis-cli curl getconf awk sha1sum; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH"
done
[ -x "$BIN" ] || fail "no service binary at $BIN (set DATALAYER_BIN, or cargo build --release)"
[ -x "$PY" ] || fail "no .venv: run scripts/setup.sh"
"$PY" -c 'import grpc, datalayer.leaderboard.v1.leaderboard_pb2' 2>/dev/null ||
  fail ".venv lacks grpcio or the datalayer client: run scripts/setup.sh"

TICK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/datalayer-bench.XXXXXX")
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
  if [ -n "${BENCH_KEEP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU clock ticks (user + system, all threads) a running process has used.
cpu_ticks() {
  local line
  read -r line <"/proc/$1/stat"
  line=${line##*) } # after "pid (comm) ", field 3 (state) is $1
  # shellcheck disable=SC2086
  set -- $line
  echo $((${12} + ${13}))
}

# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq,
# steal), to tell how much CPU went to anything but the three processes.
machine_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
now() { date +%s.%N; }

# Cores busy with anything else during a run: machine ticks, the three
# processes' ticks, seconds.
other_cores() {
  awk -v m="$1" -v p="$2" -v s="$3" -v hz="$TICK" 'BEGIN { printf "%.2f", (m - p) / hz / s }'
}

# Notes a run during which other work took a quarter of a core or more:
# its calls/s (and, less, its CPU per call) are not this code's alone.
busy_elsewhere() {
  if awk -v o="$2" 'BEGIN { exit !(o >= 0.25) }'; then
    PROBLEMS+=("$1: other processes used $2 cores meanwhile; its figures are disturbed")
  fi
}

# µs of CPU per call: ticks, calls.
per_call() {
  awk -v t="$1" -v n="$2" -v hz="$TICK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }'
}

# Runs "$@" with output to $1 (shifted away); prints the CPU ticks it and its
# children used (the subshell's cutime + cstime, read after it waited).
# Fails when the command does.
run_timed() {
  local out=$1
  shift
  (
    status=0
    "$@" >"$out" 2>&1 || status=$?
    read -r line <"/proc/$BASHPID/stat"
    line=${line##*) }
    # shellcheck disable=SC2086
    set -- $line
    echo $((${14} + ${15}))
    exit "$status"
  )
}

rcli() { redis-cli -p "$RPORT" "$@"; }

# --- redis-server and the service --------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
  [ "$(rcli PING 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(rcli PING 2>/dev/null)" = PONG ] || fail "redis-server did not start ($TMP/redis.log)"

GPORT=$(free_port)
MPORT=$(free_port)
ADDR=127.0.0.1:$GPORT
# check-analytics' policies: the same GCRA limit, one with analytics;
# check-flood's, a fixed window, and the denial cache.
cat >"$TMP/bench.toml" <<EOF
[ratelimit]
denial_cache = true

[ratelimit.policies.bench_flood]
algorithm = "fixed_window"
limit = $FLOOD_LIMIT
window = "$FLOOD_WINDOW"

[ratelimit.policies.bench_plain]
limit = 1000000
period = "1s"

[ratelimit.policies.bench_analytics]
limit = 1000000
period = "1s"
analytics = true

[ratelimit.envoy]
config_files = ["$TMP/envoy.yaml"]

[analytics]
flush_interval = "${FLUSH}s"
EOF
# envoy's domain (grpc_bench.py: ENVOY_DOMAIN, ENVOY_LIMIT).
cat >"$TMP/envoy.yaml" <<EOF
domain: bench
descriptors:
  - key: bench
    value: x
    rate_limit:
      unit: second
      requests_per_unit: 1000000
EOF
spawned=$(now)
env -u DATALAYER_CONFIG \
  DATALAYER__REDIS__URL="redis://127.0.0.1:$RPORT" \
  DATALAYER__SERVER__ADDR="$ADDR" \
  DATALAYER__METRICS__ADDR="127.0.0.1:$MPORT" \
  DATALAYER__TELEMETRY__LOG_LEVEL=warn \
  "$BIN" serve --config "$TMP/bench.toml" >"$TMP/service.log" 2>&1 &
SVC_PID=$!
# Waits until the service's health says SERVING (at most 10 s).
wait_serving() {
  local _
  for _ in $(seq 500); do
    if "$BIN" health --addr "$ADDR" --timeout 1s >/dev/null 2>&1; then return 0; fi
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.02
  done
  cat "$TMP/service.log" >&2
  fail "the service is not SERVING at $ADDR"
}
wait_serving
READY_MS=$(awk -v a="$spawned" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$SVC_PID/status"; }
IDLE_RSS=$(rss_mib)
log "service SERVING $READY_MS ms after spawn (polled with \`datalayer health\`), idle RSS $IDLE_RSS MiB"

# --- data ------------------------------------------------------------------
case " $WORKLOADS " in *" lb-"*) FILL=1 ;; *) FILL= ;; esac
if [ -n "$FILL" ]; then
  log "filling the boards ($OWNERS owners each)"
  "$PY" "$HELPER" create-board "$ADDR" >&2
  GEN=$(rcli HGET 'dl:default:lb:{bench}:d' g)
  [ "$GEN" = 1 ] || fail "board generation is '$GEN', expected 1 for a fresh board"
  P="dl:default:lbr:{bench}:$GEN:0"
  # The service's own helpers build members and records (see fill_board.lua);
  # 25,000 owners per EVAL (a few hundred ms each) keeps Redis answering the
  # service's health probe in between.
  fill_src=$(cat src/store/redis/lua/prelude.lua src/services/leaderboard/lua/prelude.lua \
    scripts/bench/fill_board.lua)
  raw_src=$(cat scripts/bench/fill_raw.lua)
  started=$(date +%s.%N)
  CHUNK=25000
  for ((from = 1; from <= OWNERS; from += CHUNK)); do
    rcli EVAL "$fill_src" 4 "$P:z" "$P:h" "$P:n" "dl:default:lb:{bench}:$GEN:p" \
      "$from" $((from + CHUNK - 1)) "$OWNERS" >/dev/null
    rcli EVAL "$raw_src" 1 rawboard $((from - 1)) $((from + CHUNK - 2)) >/dev/null
  done
  [ "$(rcli ZCARD "$P:z")" = "$OWNERS" ] && [ "$(rcli HLEN "$P:h")" = "$OWNERS" ] &&
    [ "$(rcli ZCARD rawboard)" = "$OWNERS" ] || fail "the boards are not $OWNERS long"
  log "  filled in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"

  wait_serving
  # The service reads the filled board as its own: an owner at its exact rank.
  "$PY" "$HELPER" verify "$ADDR" lb-rank >&2 || fail "the service does not read the filled board right"
else
  log "no lb-* workload: the boards are left empty"
fi

VALUE=$(printf 'x%.0s' $(seq 100))
"$PY" "$HELPER" prepare "$ADDR"
rcli SET bench-raw-get "$VALUE" >/dev/null
"$PY" "$HELPER" bodies "$TMP/bodies"

# check's and check-flood's raw EVALSHA is the very command the service
# sends for the Check (the script's SHA and its ARGV), captured with MONITOR
# during one call (the one checked before the workload) and pointed at
# another key: the same code whatever the script is made of and whichever
# sources the binary was built from.
GCRA_CALL=
FLOOD_CALL=
ENVOY_CALL=
# capture_call WORKLOAD TAG RAWTAG: sets CAPTURED (the EVALSHA, its key's
# hash tag {TAG} made {RAWTAG}) and CAPTURED_KEY (the service's key).
capture_call() {
  local mon
  CAPTURED= CAPTURED_KEY=
  rcli MONITOR >"$TMP/monitor.$1" 2>&1 &
  mon=$!
  sleep 0.2
  "$PY" "$HELPER" verify "$ADDR" "$1" >&2 || fail "$1 answers wrong"
  sleep 0.2
  kill "$mon" 2>/dev/null || true
  wait "$mon" 2>/dev/null || true
  # "EVALSHA" "<sha>" "1" "<key>" "<limit>" "<period us>" "<cost>" ...
  read -r CAPTURED_KEY CAPTURED < <(awk -F'"' -v tag="{$2}" -v raw="{$3}" '
    $2 == "EVALSHA" && (at = index($8, tag)) {
      key = substr($8, 1, at - 1) raw substr($8, at + length(tag))
      printf "%s EVALSHA %s %s %s", $8, $4, $6, key
      for (i = 10; i <= NF; i += 2) printf " %s", $i
      print ""; exit
    }' "$TMP/monitor.$1" | sed 's/[[:space:]]*$//') || true
  [ -n "${CAPTURED:-}" ] || fail "no EVALSHA of {$2} seen during a Check (MONITOR: $TMP/monitor.$1)"
}
capture_gcra() {
  capture_call check bench-check bench-raw
  case $CAPTURED_KEY in *:inline:gcra) ;; *) fail "check's key is $CAPTURED_KEY, not an inline GCRA" ;; esac
  GCRA_CALL=$CAPTURED
}

# check-flood: the window's state {w, c} of a key, "w c".
window_state() { echo "$(rcli HGET "$1" w) $(rcli HGET "$1" c)"; }

# check-flood: takes flood-hot to its limit (FLOOD_LIMIT checks, all
# admitted), captures the first over-limit check (answered by Redis, checked
# with a real client) and takes the raw key to the same limit with the same
# call; both keys then hold the same window, full.
prepare_flood() {
  local sent ok
  h2 check-flood -n "$FLOOD_LIMIT" >"$TMP/check-flood.fill" 2>&1 ||
    { cat "$TMP/check-flood.fill" >&2; fail "h2load could not fill check-flood"; }
  read -r sent ok _ < <(h2_summary "$TMP/check-flood.fill")
  [ "$sent" = "$FLOOD_LIMIT" ] && [ "$ok" = "$FLOOD_LIMIT" ] ||
    fail "check-flood fill: $sent done, $ok HTTP 2xx of $FLOOD_LIMIT"
  capture_call check-flood flood-hot flood-raw
  case $CAPTURED_KEY in *:fixed_window) ;; *) fail "check-flood's key is $CAPTURED_KEY, not a fixed window" ;; esac
  FLOOD_CALL=$CAPTURED
  FLOOD_KEY=$CAPTURED_KEY
  read -ra cmd <<<"$FLOOD_CALL"
  FLOOD_RAW_KEY=${cmd[3]}
  redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n "$FLOOD_LIMIT" --csv "${cmd[@]}" >"$TMP/check-flood.rawfill" 2>&1 ||
    { cat "$TMP/check-flood.rawfill" >&2; fail "redis-benchmark could not fill the raw key"; }
  local svc raw
  svc=$(window_state "$FLOOD_KEY")
  raw=$(window_state "$FLOOD_RAW_KEY")
  log "  window {w c}: service $FLOOD_KEY $svc, raw $FLOOD_RAW_KEY $raw"
  [ "$svc" = "$raw" ] && [ "${svc#* }" = "$FLOOD_LIMIT" ] ||
    fail "check-flood: the two keys are not at the same full window ($svc vs $raw)"
}

# check-flood, during its service run: the denial cache's lookups "hit
# miss", bench_flood's decisions "allowed rejected" (service metrics), and
# the EVALSHAs Redis ran.
flood_counts() {
  curl -fsS "http://127.0.0.1:$MPORT/metrics" | awk '
    /^datalayer_ratelimit_denial_cache_lookups_total\{/ {
      if (index($0, "result=\"hit\"")) hit += $NF; else if (index($0, "result=\"miss\"")) miss += $NF
    }
    /^datalayer_ratelimit_decisions_total\{/ && index($0, "policy=\"bench_flood\"") {
      if (index($0, "result=\"allowed\"")) ok += $NF; else if (index($0, "result=\"rejected\"")) no += $NF
    }
    END { printf "%d %d %d %d", hit, miss, ok, no }'
  rcli INFO commandstats | awk -F'[=,]' '/^cmdstat_evalsha:/ { n = $2 } END { printf " %d\n", n }'
}

raw_cmd() {
  case $1 in
    check) echo "$GCRA_CALL" ;;
    check-flood) echo "$FLOOD_CALL" ;;
    envoy) echo "$ENVOY_CALL" ;;
    cache-get) echo GET bench-raw-get ;;
    cache-set) echo SET bench-raw-set "$VALUE" PX 60000 ;;
    lb-submit) echo ZADD rawboard __rand_int__ member:__rand_int__ ;;
    lb-rank) echo ZREVRANK rawboard member:__rand_int__ ;;
  esac
}
raw_name() {
  case $1 in
    check) echo EVALSHA ;; check-flood) echo "EVALSHA over limit" ;; envoy) echo "EVALSHA (window)" ;; cache-get) echo GET ;; cache-set) echo "SET PX" ;;
    lb-submit) echo ZADD ;; lb-rank) echo ZREVRANK ;;
    analytics-track) echo "HINCRBY+PFADD -P$((2 * TRACK_BATCH))" ;;
    check-analytics) echo "Check bench_plain" ;;
  esac
}

# OK and non-OK calls of a method so far, from the service's metrics.
rpc_counts() {
  local service=${1%/*} method=${1##*/}
  service=${service#/}
  curl -fsS "http://127.0.0.1:$MPORT/metrics" | awk -v s="service=\"$service\"" -v m="method=\"$method\"" '
    /^datalayer_rpc_requests_total\{/ && index($0, s) && index($0, m) {
      if (index($0, "code=\"OK\"")) ok += $NF; else bad += $NF
    }
    END { printf "%d %d\n", ok, bad }'
}

# EVALSHA calls Redis has run so far.
evalsha_calls() {
  rcli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0
}

# h2load sending the pre-encoded body $1 (a workload of grpc_bench.py) to $PATH_.
h2() {
  local body=$1
  shift
  h2load -c "$CONNS" -m "$STREAMS" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$TMP/bodies/$body.bin" "$@" "http://$ADDR$PATH_"
}

# "done succeeded failed errored req/s" from h2load's summary.
h2_summary() {
  awk '/^finished in/ { rate = $4 }
    /^requests:/ { done = $6; ok = $8; failed = $10; errored = $12 }
    END { print done + 0, ok + 0, failed + 0, errored + 0, rate + 0 }' "$1"
}

# Runs "$@" with output to $1 (shifted away) and sets, for its duration: LG
# (its and its children's CPU ticks), SVC and RDS (the service's and
# redis-server's), MACH (the machine's busy ticks), WALL (seconds).
measure() {
  local out=$1 s0 r0 m0 t0 t1
  shift
  s0=$(cpu_ticks "$SVC_PID")
  r0=$(cpu_ticks "$REDIS_PID")
  m0=$(machine_ticks) t0=$(now)
  LG=$(run_timed "$out" "$@") || { cat "$out" >&2; fail "$1 failed ($W)"; }
  MACH=$(($(machine_ticks) - m0)) t1=$(now)
  SVC=$(($(cpu_ticks "$SVC_PID") - s0))
  RDS=$(($(cpu_ticks "$REDIS_PID") - r0))
  WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
}

# "lg svc rds other": µs of CPU per unit (ticks LG SVC RDS over $6 units)
# and the cores busy elsewhere (machine ticks $4 over $5 seconds).
cpu_figs() {
  echo "$(per_call "$1" "$6") $(per_call "$2" "$6") $(per_call "$3" "$6") $(other_cores "$4" $(($1 + $2 + $3)) "$5")"
}

# The service at full speed for $SECS sending body $1 (output $TMP/$2.h2load):
# measure()'s figures, and DONE OKH FAILED ERRORED RATE (h2load's) and GOK
# GBAD (OK and non-OK gRPC codes the service counted meanwhile).
service_run() {
  local ok0 bad0 ok1 bad1 e0 e1
  read -r ok0 bad0 < <(rpc_counts "$PATH_")
  e0=$(evalsha_calls)
  local perf_pid=
  if [ -n "${BENCH_PERF:-}" ]; then
    # Samples the service (call graphs) while h2load runs; reported after.
    # BENCH_PERF=dwarf: call graphs from DWARF (the release binary has no
    # frame pointers, so `-g` stops at the symbol itself), sampled less.
    local graph=(-F 999 -g)
    [ "$BENCH_PERF" = dwarf ] && graph=(-F 199 --call-graph dwarf,16384)
    perf record -q "${graph[@]}" -p "$SVC_PID" -o "$TMP/$2.perf" -- sleep "$SECS" 2>/dev/null &
    perf_pid=$!
  fi
  measure "$TMP/$2.h2load" h2 "$1" -D "$SECS"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    log "  $2: perf profile of the service (self time, top ${BENCH_PERF_TOP:-25} symbols):"
    perf report -q -i "$TMP/$2.perf" --no-children --sort symbol -g none --percent-limit 0.3 --stdio 2>/dev/null |
      grep -E '^ +[0-9.]+%' | sed -E 's/ +(- +)*$//' | cut -c1-160 | head -n "${BENCH_PERF_TOP:-25}" >&2 || true
  fi
  e1=$(evalsha_calls)
  read -r ok1 bad1 < <(rpc_counts "$PATH_")
  read -r DONE OKH FAILED ERRORED RATE < <(h2_summary "$TMP/$2.h2load")
  GOK=$((ok1 - ok0)) GBAD=$((bad1 - bad0))
  log "  $2: $DONE done, $OKH HTTP 2xx, $FAILED failed, $ERRORED errored; gRPC OK $GOK, non-OK $GBAD; $RATE calls/s; other CPU $(other_cores "$MACH" $((LG + SVC + RDS)) "$WALL") cores; Redis ran $((e1 - e0)) EVALSHA"
  if [ "$FAILED" != 0 ] || [ "$ERRORED" != 0 ] || [ "$GBAD" != 0 ] || [ "$DONE" = 0 ]; then
    PROBLEMS+=("$2: h2load $FAILED failed / $ERRORED errored, $GBAD gRPC non-OK of $DONE")
  fi
}

# What analytics counted for workload $1 (grpc_bench.py count).
counted() { "$PY" "$HELPER" count "$ADDR" "$1" || fail "cannot read what analytics counted ($1)"; }

# Compares what analytics counted ($2) with what was answered ($3): at
# least that, and at most $4 more (calls still in flight when h2load
# stopped, which the service may have finished).
check_counted() {
  log "  $1: analytics counted $2 for $3 answered (at most $4 more were in flight at the end)"
  if [ "$2" -lt "$3" ] || [ "$2" -gt $(($3 + $4)) ]; then
    PROBLEMS+=("$1: analytics counted $2, answered $3 (+ at most $4 in flight)")
  fi
}

# --- the workloads ---------------------------------------------------------
# What the service logs from here on (warnings, errors) is reported.
LOG_FROM=$(($(wc -l <"$TMP/service.log") + 1))
ROWS=()
PROBLEMS=()
NOTES=()
for W in $WORKLOADS; do
  PATH_=$("$PY" "$HELPER" path "$W")
  # Units per call: analytics-track counts events.
  UNIT=1 UNIT_NAME=call
  if [ "$W" = analytics-track ]; then UNIT=$TRACK_BATCH UNIT_NAME=event; fi
  log "=== $W: $PATH_ vs $(raw_name "$W")"
  case $W in
    check-flood)
      # Its check before timing is the captured call, the first denial.
      prepare_flood
      log "  raw EVALSHA as the service sends it: $FLOOD_CALL"
      ;;
    *) "$PY" "$HELPER" verify "$ADDR" "$W" >&2 || fail "$W answers wrong before timing" ;;
  esac
  case $W in
    check)
      capture_gcra
      log "  raw EVALSHA as the service sends it: $GCRA_CALL"
      ;;
    envoy)
      capture_call envoy "bench|5:bench=1:x" "bench|raw"
      case $CAPTURED_KEY in *:fixed_window) ;; *) fail "envoy's key is $CAPTURED_KEY, not a fixed window" ;; esac
      ENVOY_CALL=$CAPTURED
      log "  raw EVALSHA as the service sends it: $ENVOY_CALL"
      ;;
    check-analytics)
      "$PY" "$HELPER" verify "$ADDR" check-plain >&2 || fail "check-plain answers wrong before timing"
      ;;
  esac
  # Warm-up (connections, allocator, Redis's caches); not counted.
  h2 "$W" -n $((CONC * 40)) >/dev/null 2>&1 || true
  if [ "$W" = check-analytics ]; then h2 check-plain -n $((CONC * 40)) >/dev/null 2>&1 || true; fi

  if [ "$W" = check-analytics ]; then
    # 1 and 2. The policy with analytics ("service") and without ("raw"),
    # alternated plain, analytics, analytics, plain; figures summed per side.
    declare -A sum=()
    for leg in 1 2 3 4; do
      case $leg in 1 | 4) side=plain ;; *) side=analytics ;; esac
      if [ "$leg" = 2 ]; then
        sleep $((FLUSH + 1)) # the warm-up's decisions are flushed
        c0=$(counted "$W")
      fi
      service_run "check-$side" "$W.$leg.$side"
      for k in LG SVC RDS MACH DONE GOK; do sum[$side.$k]=$((${sum[$side.$k]:-0} + ${!k})); done
      sum[$side.WALL]=$(awk -v a="${sum[$side.WALL]:-0}" -v b="$WALL" 'BEGIN { print a + b }')
      sum[$side.RATE]=$(awk -v a="${sum[$side.RATE]:-0}" -v b="$RATE" 'BEGIN { print a + b / 2 }')
      sum[$side.legs]="${sum[$side.legs]:-}${sum[$side.legs]:+, }$RATE"
      if [ "$leg" = 3 ]; then
        sleep $((FLUSH + 1)) # the last decisions are flushed
        c1=$(counted "$W")
        check_counted "$W" $((c1 - c0)) "${sum[analytics.DONE]}" $((2 * CONC))
      fi
    done
    rate=${sum[analytics.RATE]} raw_rate=${sum[plain.RATE]} calls_rate=$rate
    svc_cpu=$(cpu_figs "${sum[analytics.LG]}" "${sum[analytics.SVC]}" "${sum[analytics.RDS]}" \
      "${sum[analytics.MACH]}" "${sum[analytics.WALL]}" "${sum[analytics.DONE]}")
    raw_cpu=$(cpu_figs "${sum[plain.LG]}" "${sum[plain.SVC]}" "${sum[plain.RDS]}" \
      "${sum[plain.MACH]}" "${sum[plain.WALL]}" "${sum[plain.DONE]}")
    busy_elsewhere "$W (analytics runs)" "${svc_cpu##* }"
    busy_elsewhere "$W (plain runs)" "${raw_cpu##* }"
    "$PY" "$HELPER" verify "$ADDR" check-plain >&2 || PROBLEMS+=("check-plain: wrong answer after the run")
    "$PY" "$HELPER" verify "$ADDR" "$W" >&2 || PROBLEMS+=("$W: wrong answer after the run")
    read -r -a sc <<<"$svc_cpu"
    read -r -a rc <<<"$raw_cpu"
    NOTES+=("check-analytics: Check on bench_analytics (analytics = true) $(printf '%.0f' "$rate") calls/s vs bench_plain $(printf '%.0f' "$raw_rate") calls/s: ratio $(awk -v a="$rate" -v b="$raw_rate" 'BEGIN { r = a / b; printf "%.3f (goal: within 5%%, >= 0.950: %s)", r, r >= 0.95 ? "met" : "missed" }')"
      "  calls/s per run: plain ${sum[plain.legs]%%, *}, analytics ${sum[analytics.legs]}, plain ${sum[plain.legs]##*, }"
      "  CPU µs/call with analytics: lg ${sc[0]}, svc ${sc[1]}, rds ${sc[2]}; without: lg ${rc[0]}, svc ${rc[1]}, rds ${rc[2]} (service CPU per call $(awk -v a="${sc[1]}" -v b="${rc[1]}" 'BEGIN { printf "%+.1f%%", (a / b - 1) * 100 }'))")
  else
    # 1. the service at full speed.
    if [ "$W" = analytics-track ]; then c0=$(counted "$W"); fi
    if [ "$W" = check-flood ]; then read -r fh0 fm0 fa0 fr0 fe0 < <(flood_counts); fi
    service_run "$W" "$W"
    if [ "$W" = check-flood ]; then
      read -r fh1 fm1 fa1 fr1 fe1 < <(flood_counts)
      fh=$((fh1 - fh0)) fm=$((fm1 - fm0)) fa=$((fa1 - fa0)) fr=$((fr1 - fr0)) fe=$((fe1 - fe0))
      hit_rate=$(awk -v h="$fh" -v m="$fm" 'BEGIN { if (h + m > 0) printf "%.4f%%", h / (h + m) * 100; else print "-" }')
      log "  denial cache: $fh hits, $fm misses ($hit_rate); bench_flood: $fa allowed, $fr rejected; Redis ran $fe EVALSHA"
      if [ "$fa" != 0 ] || [ "$fm" != 0 ]; then
        PROBLEMS+=("$W: $fa checks allowed, $fm denial cache misses during the service run (the window ended?)")
      fi
    fi
    if [ "$W" = analytics-track ]; then
      c1=$(counted "$W")
      check_counted "$W" $((c1 - c0)) $((DONE * TRACK_BATCH)) $((CONC * TRACK_BATCH))
    fi
    calls_rate=$RATE
    rate=$(awk -v r="$RATE" -v u="$UNIT" 'BEGIN { printf "%.1f", r * u }')
    svc_cpu=$(cpu_figs "$LG" "$SVC" "$RDS" "$MACH" "$WALL" $((DONE * UNIT)))
    busy_elsewhere "$W (service run)" "${svc_cpu##* }"
    "$PY" "$HELPER" verify "$ADDR" "$W" >&2 || PROBLEMS+=("$W: wrong answer after the run")

    # 2. raw Redis at the same concurrency: a short run to size -n for about
    # $SECS seconds, then the timed one.
    if [ "$W" = analytics-track ]; then
      # Per event HINCRBY + PFADD, 100 events (200 commands) a round trip:
      # two runs of -P 200 of n commands each (see the header).
      pipe=$((2 * TRACK_BATCH))
      hincr=(HINCRBY bench-raw-h series:__rand_int__ 1)
      pfadd=(PFADD bench-raw-u __rand_int__)
      for reply in "$(rcli HINCRBY bench-raw-h series:000000000000 1 2>&1)" \
        "$(rcli PFADD bench-raw-u 000000000000 2>&1)"; do
        case $reply in ERR* | WRONGTYPE*) fail "raw $W: $reply" ;; esac
      done
      rb=(redis-benchmark -p "$RPORT" -c "$CONC" -P "$pipe" --csv)
      cal_n=$((CONC * pipe * 20))
      cal_h=$("${rb[@]}" -n "$cal_n" -r "$TRACK_SERIES" "${hincr[@]}" | awk -F'"' 'NR == 2 { print int($4) }')
      cal_p=$("${rb[@]}" -n "$cal_n" -r "$TRACK_IDS" "${pfadd[@]}" | awk -F'"' 'NR == 2 { print int($4) }')
      # n events (a whole number of pipelines) for about $SECS in all.
      n=$(awk -v a="$cal_h" -v b="$cal_p" -v s="$SECS" -v p="$pipe" \
        'BEGIN { if (a > 0 && b > 0) printf "%d", int(s / (1 / a + 1 / b) / p) * p; else print 0 }')
      [ "$n" -gt 0 ] || fail "redis-benchmark calibration failed ($W)"
      measure "$TMP/$W.rb-hincrby" "${rb[@]}" -n "$n" -r "$TRACK_SERIES" "${hincr[@]}"
      lg=$LG s=$SVC r=$RDS m=$MACH wall=$WALL
      measure "$TMP/$W.rb-pfadd" "${rb[@]}" -n "$n" -r "$TRACK_IDS" "${pfadd[@]}"
      lg=$((lg + LG)) s=$((s + SVC)) r=$((r + RDS)) m=$((m + MACH))
      wall=$(awk -v a="$wall" -v b="$WALL" 'BEGIN { print a + b }')
      for f in "$TMP/$W.rb-hincrby" "$TMP/$W.rb-pfadd"; do
        if grep -qi 'error' "$f"; then PROBLEMS+=("raw $W: $(grep -i -m1 error "$f")"); fi
      done
      r_h=$(awk -F'"' 'NR == 2 { print $4 }' "$TMP/$W.rb-hincrby")
      r_p=$(awk -F'"' 'NR == 2 { print $4 }' "$TMP/$W.rb-pfadd")
      raw_rate=$(awk -v a="$r_h" -v b="$r_p" 'BEGIN { printf "%.1f", 1 / (1 / a + 1 / b) }')
      raw_cpu=$(cpu_figs "$lg" "$s" "$r" "$m" "$wall" "$n")
      # Redis did the work: 8 series holding every HINCRBY sent, 100 ids.
      hsum=$(rcli HVALS bench-raw-h | awk '{ t += $1 } END { print t + 0 }')
      hlen=$(rcli HLEN bench-raw-h)
      pfc=$(rcli PFCOUNT bench-raw-u)
      log "  raw: $n events: HINCRBY $r_h/s, PFADD $r_p/s (-P $pipe) -> $raw_rate events/s; other CPU ${raw_cpu##* } cores"
      log "  raw: bench-raw-h $hlen series, total $hsum (sent $((1 + cal_n + n))); bench-raw-u ~$pfc ids"
      if [ "$hlen" != "$TRACK_SERIES" ] || [ "$hsum" != $((1 + cal_n + n)) ] ||
        [ "$pfc" -lt $((TRACK_IDS * 95 / 100)) ] || [ "$pfc" -gt $((TRACK_IDS * 105 / 100)) ]; then
        PROBLEMS+=("raw $W: $hlen series totalling $hsum (expected $TRACK_SERIES, $((1 + cal_n + n))), ~$pfc ids (expected ~$TRACK_IDS)")
      fi
      busy_elsewhere "$W (raw runs)" "${raw_cpu##* }"
    else
      read -ra cmd <<<"$(raw_cmd "$W")"
      rnd=()
      case $W in lb-*) rnd=(-r "$OWNERS") ;; esac
      one=("${cmd[@]//__rand_int__/000000250000}")
      reply=$(rcli "${one[@]}" 2>&1)
      case $reply in ERR* | NOSCRIPT* | WRONGTYPE*) fail "raw $W: $reply" ;; esac
      if [ "$W" = check-flood ]; then
        # {allowed, remaining, reset_after_us, retry_after_us}: over the limit.
        read -r allowed _ _ retry <<<"$(echo $reply)"
        [ "$allowed" = 0 ] && [ "${retry:--1}" -gt 0 ] ||
          fail "raw $W: the key is not over its limit: $(echo $reply)"
        log "  raw: one call answers {allowed, remaining, reset_after_us, retry_after_us} = {$(echo $reply | tr ' ' ',')}"
      fi
      cal=$(redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n $((CONC * 400)) "${rnd[@]}" --csv "${cmd[@]}" |
        awk -F'"' 'NR == 2 { print int($4) }')
      n=$((cal * SECS))
      [ "$n" -gt 0 ] || fail "redis-benchmark calibration failed ($W)"
      measure "$TMP/$W.rb" redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n "$n" "${rnd[@]}" --csv "${cmd[@]}"
      if grep -qi 'error' "$TMP/$W.rb"; then PROBLEMS+=("raw $W: $(grep -i -m1 error "$TMP/$W.rb")"); fi
      raw_rate=$(awk -F'"' 'NR == 2 { print $4 }' "$TMP/$W.rb")
      raw_p99=$(awk -F'"' 'NR == 2 { print $14 }' "$TMP/$W.rb")
      raw_cpu=$(cpu_figs "$LG" "$SVC" "$RDS" "$MACH" "$WALL" "$n")
      busy_elsewhere "$W (raw run)" "${raw_cpu##* }"
      log "  raw: $n ops, $raw_rate ops/s, p99 $raw_p99 ms; other CPU ${raw_cpu##* } cores"
      if [ "$W" = check-flood ]; then
        svc_w=$(window_state "$FLOOD_KEY") raw_w=$(window_state "$FLOOD_RAW_KEY")
        log "  window {w c} after: service $svc_w, raw $raw_w"
        [ "$svc_w" = "$raw_w" ] && [ "${raw_w#* }" = "$FLOOD_LIMIT" ] ||
          PROBLEMS+=("$W: the windows moved during the runs (service $svc_w, raw $raw_w)")
      fi
    fi
    if [ "$W" = analytics-track ]; then
      read -r -a sc <<<"$svc_cpu"
      read -r -a rc <<<"$raw_cpu"
      NOTES+=("analytics-track: Track of $TRACK_BATCH events $(printf '%.0f' "$rate") events/s ($calls_rate calls/s x $TRACK_BATCH) vs raw $(printf '%.0f' "$raw_rate") events/s (HINCRBY $(printf '%.0f' "$r_h")/s, PFADD $(printf '%.0f' "$r_p")/s, -P $pipe): ratio $(awk -v a="$rate" -v b="$raw_rate" 'BEGIN { printf "%.3f", a / b }')"
        "  CPU µs/event service: lg ${sc[0]}, svc ${sc[1]}, rds ${sc[2]}; raw: lg ${rc[0]}, rds ${rc[2]}")
    fi
    if [ "$W" = check-flood ]; then
      read -r -a sc <<<"$svc_cpu"
      read -r -a rc <<<"$raw_cpu"
      NOTES+=("check-flood: Check of one hot key over bench_flood's limit ($FLOOD_LIMIT per $FLOOD_WINDOW, fixed window, denial cache on) $(printf '%.0f' "$rate") calls/s vs raw EVALSHA over the limit $(printf '%.0f' "$raw_rate") ops/s: ratio $(awk -v a="$rate" -v b="$raw_rate" 'BEGIN { r = a / b; printf "%.2f (target >= 3x raw: %s)", r, r >= 3 ? "met" : "missed" }')"
        "  denial cache during the service run: $fh hits, $fm misses (hit rate $hit_rate); bench_flood decisions: $fa allowed, $fr rejected; EVALSHAs Redis ran: $fe"
        "  CPU µs/call service: lg ${sc[0]}, svc ${sc[1]}, rds ${sc[2]}; raw: lg ${rc[0]}, rds ${rc[2]}")
    fi
  fi

  # 3. the service at half its measured rate (h2load --rps is per client).
  rps=$(awk -v r="$calls_rate" -v c="$CONNS" 'BEGIN { x = int(r / 2 / c); print (x < 1 ? 1 : x) }')
  read -r ok0 bad0 < <(rpc_counts "$PATH_")
  h2 "$W" -D "$SECS" --rps "$rps" --log-file "$TMP/$W.half.log" >"$TMP/$W.half" 2>&1 ||
    { cat "$TMP/$W.half" >&2; fail "h2load --rps failed ($W)"; }
  read -r ok1 bad1 < <(rpc_counts "$PATH_")
  read -r hdone _ hfailed herr hrate < <(h2_summary "$TMP/$W.half")
  if [ "$hfailed" != 0 ] || [ "$herr" != 0 ] || [ $((bad1 - bad0)) != 0 ]; then
    PROBLEMS+=("$W @ half: $hfailed failed / $herr errored, $((bad1 - bad0)) gRPC non-OK of $hdone")
  fi
  read -r p50 p99 < <(cut -f3 "$TMP/$W.half.log" | sort -n | awk '{ v[NR] = $1 }
    END { if (NR == 0) { print "- -"; exit }
      i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
      printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }')
  log "  half rate: $hrate calls/s (asked $((rps * CONNS))), p50 $p50 ms, p99 $p99 ms"

  ROWS+=("$W $(raw_name "$W" | tr ' ' '~') $UNIT_NAME $rate $raw_rate $svc_cpu $raw_cpu $hrate $p50 $p99")
done

# --- the table ---------------------------------------------------------------
{
  echo
  echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Redis $(redis-server --version | awk '{ print $3 }' | tr -d 'v=')"
  echo "load average before the run: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "service: $BIN ($("$BIN" --version)); spawn -> health SERVING $READY_MS ms;"
  echo "  RSS idle $IDLE_RSS MiB, after the runs $(rss_mib) MiB"
  echo "concurrency $CONC: h2load -c $CONNS -m $STREAMS (1 thread) vs redis-benchmark -c $CONC -P 1 (1 thread); $SECS s per run"
  echo "  (analytics-track: $TRACK_BATCH events a call vs -P $((2 * TRACK_BATCH)); check-analytics: the service both sides, 2 x $SECS s each)"
  echo "unit: rates and CPU per call, or per event (analytics-track: calls x $TRACK_BATCH)"
  echo "CPU in µs per unit: lg = load generator, svc = service, rds = redis-server;"
  echo "other = cores busy with anything else meanwhile (other processes, unattributed kernel time)"
  echo "half = the service at half its measured rate: calls/s done, p50 and p99 latency"
  echo
  printf '%-15s %-19s %-5s %8s %8s %6s | %-28s | %-28s | %s\n' "" "" "" service raw "" \
    "CPU µs/unit, service run" "CPU µs/unit, raw run" "service at half rate"
  printf '%-15s %-19s %-5s %8s %8s %6s | %6s %6s %6s %5s | %6s %6s %6s %5s | %7s %6s %6s\n' \
    workload "raw op" unit "/s" "/s" ratio lg svc rds other lg svc rds other "calls/s" "p50 ms" "p99 ms"
  for row in "${ROWS[@]}"; do
    # shellcheck disable=SC2086
    set -- $row
    printf '%-15s %-19s %-5s %8.0f %8.0f %6.2f | %6s %6s %6s %5s | %6s %6s %6s %5s | %7.0f %6s %6s\n' \
      "$1" "${2//\~/ }" "$3" "$4" "$5" "$(awk -v a="$4" -v b="$5" 'BEGIN { print a / b }')" \
      "$6" "$7" "$8" "$9" "${10}" "${11}" "${12}" "${13}" "${14}" "${15}" "${16}"
  done
  echo
  if [ ${#NOTES[@]} -gt 0 ]; then
    printf '%s\n' "${NOTES[@]}"
    echo
  fi
  if tail -n +"$LOG_FROM" "$TMP/service.log" | grep -q .; then
    PROBLEMS+=("the service logged during the runs: $(tail -n +"$LOG_FROM" "$TMP/service.log" | head -3)")
  fi
  codes=$(curl -fsS "http://127.0.0.1:$MPORT/metrics" | awk '
    /^datalayer_rpc_requests_total\{/ && !index($0, "code=\"OK\"") && $NF > 0 {
      m = $0; sub(/.*method="/, "", m); sub(/".*/, "", m)
      c = $0; sub(/.*code="/, "", c); sub(/".*/, "", c)
      printf "%s%s %s x%d", sep, m, c, $NF; sep = ", "
    }')
  if [ -n "$codes" ]; then PROBLEMS+=("non-OK gRPC codes in the whole run (service metrics): $codes"); fi
  if [ ${#PROBLEMS[@]} -eq 0 ]; then
    echo "no failures: every h2load request got HTTP 200, the service counted no non-OK gRPC code,"
    echo "and every workload answered right through a real client before and after its run"
  else
    echo "PROBLEMS:"
    printf '  %s\n' "${PROBLEMS[@]}"
  fi
}
