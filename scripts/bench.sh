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
#      equivalent of the call, for about as long;
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
# set). Nothing here fails on a time: it measures and prints.
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
WORKLOADS=${BENCH_WORKLOADS:-check cache-get cache-set lb-submit lb-rank}
OWNERS=1000000
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
spawned=$(now)
env -u DATALAYER_CONFIG \
  DATALAYER__REDIS__URL="redis://127.0.0.1:$RPORT" \
  DATALAYER__SERVER__ADDR="$ADDR" \
  DATALAYER__METRICS__ADDR="127.0.0.1:$MPORT" \
  DATALAYER__TELEMETRY__LOG_LEVEL=warn \
  "$BIN" serve >"$TMP/service.log" 2>&1 &
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

VALUE=$(printf 'x%.0s' $(seq 100))
"$PY" "$HELPER" prepare "$ADDR"
rcli SET bench-raw-get "$VALUE" >/dev/null
"$PY" "$HELPER" bodies "$TMP/bodies"

# The GCRA script as the service sends it to Redis 7 (NamedScript: the
# shebang, the shared prelude, the body), so raw EVALSHA runs the same code.
GCRA_SHA=$({ printf '#!lua\n'; cat src/store/redis/lua/prelude.lua src/services/ratelimit/lua/gcra.lua; } |
  sha1sum | cut -d' ' -f1)

raw_cmd() {
  case $1 in
    check) echo EVALSHA "$GCRA_SHA" 1 'dl:default:rl:{bench-raw}:inline:gcra' 1000000 1000000 1 ;;
    cache-get) echo GET bench-raw-get ;;
    cache-set) echo SET bench-raw-set "$VALUE" PX 60000 ;;
    lb-submit) echo ZADD rawboard __rand_int__ member:__rand_int__ ;;
    lb-rank) echo ZREVRANK rawboard member:__rand_int__ ;;
  esac
}
raw_name() {
  case $1 in
    check) echo EVALSHA ;; cache-get) echo GET ;; cache-set) echo "SET PX" ;;
    lb-submit) echo ZADD ;; lb-rank) echo ZREVRANK ;;
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

h2() {
  h2load -c "$CONNS" -m "$STREAMS" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$TMP/bodies/$W.bin" "$@" "http://$ADDR$PATH_"
}

# "done succeeded failed errored req/s" from h2load's summary.
h2_summary() {
  awk '/^finished in/ { rate = $4 }
    /^requests:/ { done = $6; ok = $8; failed = $10; errored = $12 }
    END { print done + 0, ok + 0, failed + 0, errored + 0, rate + 0 }' "$1"
}

# --- the workloads ---------------------------------------------------------
# What the service logs from here on (warnings, errors) is reported.
LOG_FROM=$(($(wc -l <"$TMP/service.log") + 1))
ROWS=()
PROBLEMS=()
for W in $WORKLOADS; do
  PATH_=$("$PY" "$HELPER" path "$W")
  log "=== $W: $PATH_ vs $(raw_name "$W")"
  "$PY" "$HELPER" verify "$ADDR" "$W" >&2 || fail "$W answers wrong before timing"
  if [ "$W" = check ]; then
    [ "$(rcli SCRIPT EXISTS "$GCRA_SHA")" = 1 ] ||
      fail "the service did not load the GCRA script as $GCRA_SHA: the raw EVALSHA would differ"
  fi
  # Warm-up (connections, allocator, Redis's caches); not counted.
  h2 -n $((CONC * 40)) >/dev/null 2>&1 || true

  # 1. the service at full speed.
  read -r ok0 bad0 < <(rpc_counts "$PATH_")
  s0=$(cpu_ticks "$SVC_PID")
  r0=$(cpu_ticks "$REDIS_PID")
  m0=$(machine_ticks) t0=$(now)
  lg=$(run_timed "$TMP/$W.h2load" h2 -D "$SECS") || { cat "$TMP/$W.h2load" >&2; fail "h2load failed ($W)"; }
  m1=$(machine_ticks) t1=$(now)
  s1=$(cpu_ticks "$SVC_PID")
  r1=$(cpu_ticks "$REDIS_PID")
  other=$(other_cores $((m1 - m0)) $((lg + s1 - s0 + r1 - r0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  read -r ok1 bad1 < <(rpc_counts "$PATH_")
  read -r done okh failed errored rate < <(h2_summary "$TMP/$W.h2load")
  grpc_bad=$((bad1 - bad0))
  grpc_ok=$((ok1 - ok0))
  svc_cpu="$(per_call "$lg" "$done") $(per_call $((s1 - s0)) "$done") $(per_call $((r1 - r0)) "$done") $other"
  busy_elsewhere "$W (service run)" "$other"
  log "  service: $done done, $okh HTTP 2xx, $failed failed, $errored errored; gRPC OK $grpc_ok, non-OK $grpc_bad; $rate calls/s; other CPU $other cores"
  if [ "$failed" != 0 ] || [ "$errored" != 0 ] || [ "$grpc_bad" != 0 ] || [ "$done" = 0 ]; then
    PROBLEMS+=("$W: h2load $failed failed / $errored errored, $grpc_bad gRPC non-OK of $done")
  fi
  "$PY" "$HELPER" verify "$ADDR" "$W" >&2 || PROBLEMS+=("$W: wrong answer after the run")

  # 2. raw Redis at the same concurrency: a short run to size -n for about
  # $SECS seconds, then the timed one.
  read -ra cmd <<<"$(raw_cmd "$W")"
  rnd=()
  case $W in lb-*) rnd=(-r "$OWNERS") ;; esac
  one=("${cmd[@]//__rand_int__/000000250000}")
  reply=$(rcli "${one[@]}" 2>&1)
  case $reply in ERR* | NOSCRIPT* | WRONGTYPE*) fail "raw $W: $reply" ;; esac
  cal=$(redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n $((CONC * 400)) "${rnd[@]}" --csv "${cmd[@]}" |
    awk -F'"' 'NR == 2 { print int($4) }')
  n=$((cal * SECS))
  [ "$n" -gt 0 ] || fail "redis-benchmark calibration failed ($W)"
  s0=$(cpu_ticks "$SVC_PID")
  r0=$(cpu_ticks "$REDIS_PID")
  m0=$(machine_ticks) t0=$(now)
  lg=$(run_timed "$TMP/$W.rb" redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n "$n" "${rnd[@]}" --csv "${cmd[@]}") ||
    { cat "$TMP/$W.rb" >&2; fail "redis-benchmark failed ($W)"; }
  m1=$(machine_ticks) t1=$(now)
  s1=$(cpu_ticks "$SVC_PID")
  r1=$(cpu_ticks "$REDIS_PID")
  other=$(other_cores $((m1 - m0)) $((lg + s1 - s0 + r1 - r0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  if grep -qi 'error' "$TMP/$W.rb"; then PROBLEMS+=("raw $W: $(grep -i -m1 error "$TMP/$W.rb")"); fi
  raw_rate=$(awk -F'"' 'NR == 2 { print $4 }' "$TMP/$W.rb")
  raw_p99=$(awk -F'"' 'NR == 2 { print $14 }' "$TMP/$W.rb")
  raw_cpu="$(per_call "$lg" "$n") $(per_call $((s1 - s0)) "$n") $(per_call $((r1 - r0)) "$n") $other"
  busy_elsewhere "$W (raw run)" "$other"
  log "  raw: $n ops, $raw_rate ops/s, p99 $raw_p99 ms; other CPU $other cores"

  # 3. the service at half its measured rate (h2load --rps is per client).
  rps=$(awk -v r="$rate" -v c="$CONNS" 'BEGIN { x = int(r / 2 / c); print (x < 1 ? 1 : x) }')
  read -r ok0 bad0 < <(rpc_counts "$PATH_")
  h2 -D "$SECS" --rps "$rps" --log-file "$TMP/$W.half.log" >"$TMP/$W.half" 2>&1 ||
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

  ROWS+=("$W $(raw_name "$W" | tr ' ' _) $rate $raw_rate $svc_cpu $raw_cpu $hrate $p50 $p99")
done

# --- the table ---------------------------------------------------------------
{
  echo
  echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Redis $(redis-server --version | awk '{ print $3 }' | tr -d 'v=')"
  echo "load average before the run: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "service: $BIN ($("$BIN" --version)); spawn -> health SERVING $READY_MS ms;"
  echo "  RSS idle $IDLE_RSS MiB, after the runs $(rss_mib) MiB"
  echo "concurrency $CONC: h2load -c $CONNS -m $STREAMS (1 thread) vs redis-benchmark -c $CONC -P 1 (1 thread); $SECS s per run"
  echo "CPU in µs per call: lg = load generator, svc = service, rds = redis-server;"
  echo "other = cores busy with anything else meanwhile (other processes, unattributed kernel time)"
  echo "half = the service at half its measured rate: calls/s done, p50 and p99 latency"
  echo
  printf '%-10s %-9s %8s %8s %6s | %-28s | %-28s | %s\n' "" "" service raw "" \
    "CPU µs/call, service run" "CPU µs/call, raw run" "service at half rate"
  printf '%-10s %-9s %8s %8s %6s | %6s %6s %6s %5s | %6s %6s %6s %5s | %7s %6s %6s\n' \
    workload "raw op" "calls/s" "ops/s" ratio lg svc rds other lg svc rds other "calls/s" "p50 ms" "p99 ms"
  for row in "${ROWS[@]}"; do
    # shellcheck disable=SC2086
    set -- $row
    printf '%-10s %-9s %8.0f %8.0f %6.2f | %6s %6s %6s %5s | %6s %6s %6s %5s | %7.0f %6s %6s\n' \
      "$1" "${2//_/ }" "$3" "$4" "$(awk -v a="$3" -v b="$4" 'BEGIN { print a / b }')" \
      "$5" "$6" "$7" "$8" "$9" "${10}" "${11}" "${12}" "${13}" "${14}" "${15}"
  done
  echo
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
