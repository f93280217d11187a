#!/usr/bin/env bash
# Topics benchmark: TopicService against raw Redis Streams, on this machine,
# in one run.
#
#   scripts/bench/topics/run.sh
#   TBENCH_SECONDS=5 TBENCH_PLAN="200:h2-same,raw" TBENCH_SUBSCRIBERS=50 scripts/bench/topics/run.sh
#
# It starts its own redis-server (no persistence) on a free port and three
# replicas of the service binary (DATALAYER_BIN; default
# /work/bin/datalayer-release, else target/release/datalayer) against it: A
# and B with every setting at its default (topic.max_length 100,000,
# topic.poll_interval 20 ms), C with topic.max_length TBENCH_SMALL_LENGTH
# (1,000). It measures:
#
#   1. Publish throughput: h2load -c 10 -m 5 sending a pre-encoded
#      TopicService/Publish (100-byte payload, one topic) for TBENCH_SECONDS
#      through A, against redis-benchmark -c 50 -P 1 of XADD key MAXLEN
#      100000 * p <100 bytes> for about as long; then the same through C and
#      with MAXLEN 1000, for TBENCH_SMALL_SECONDS (5). Each stream is first
#      filled to its length, so every timed append also trims one. CPU per
#      call of the load generator, the service and redis-server, as
#      scripts/bench.sh measures it (/proc/<pid>/stat utime + stime; the load
#      generator's from its parent's cutime + cstime), the service's non-OK
#      answers (its metrics), and Redis's own time (SLOWLOG) for the commands
#      of publish.lua's retention step.
#   2. Publish -> deliver latency with TBENCH_SUBSCRIBERS (100) subscribers
#      on one topic, 10 s (TBENCH_SECONDS) at each rate of TBENCH_PLAN
#      (default "100:ts-same,h2-same,h2-other,raw 500:h2-same,raw": rate in
#      messages/s, then the modes), after 1 s of warm-up: see fanout.mjs
#      (node; the TypeScript client or a lean node:http2 client for the
#      service, ioredis XREAD BLOCK 0 loops for raw; the subscribers in
#      TBENCH_WORKERS (2) processes, the publisher in another). Every
#      subscriber must get every message exactly once, in order.
#
# Other settings (environment): TBENCH_KEEP (set: keep the temporary folder
# with every tool's output and the replicas' logs).
#
# Needs: redis-server, redis-benchmark, redis-cli, curl, node 20+ and npm on
# PATH; h2load (installed with apt-get when missing); network access to the
# npm registry (ioredis and Connect go into the temporary folder, never into
# the repository); the repository's .venv and clients/typescript/node_modules
# (scripts/setup.sh). Nothing here fails on a time: it measures and prints.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=scripts/bench/topics

SECS=${TBENCH_SECONDS:-10}
SUBS=${TBENCH_SUBSCRIBERS:-100}
PLAN=${TBENCH_PLAN:-100:ts-same,h2-same,h2-other,raw 500:h2-same,raw}
SMALL_SECS=${TBENCH_SMALL_SECONDS:-5}
CONNS=10
STREAMS=5
CONC=$((CONNS * STREAMS))
MAXLEN=100000
SMALL_LEN=${TBENCH_SMALL_LENGTH:-1000}
if [ -z "${DATALAYER_BIN:-}" ]; then
  if [ -x /work/bin/datalayer-release ]; then
    DATALAYER_BIN=/work/bin/datalayer-release
  else
    DATALAYER_BIN=target/release/datalayer
  fi
fi
BIN=$DATALAYER_BIN
PY=.venv/bin/python
HELPER=$HERE/bodies.py

fail() {
  printf 'topics bench: %s\n' "$@" >&2
  exit 1
}
log() { printf '%s\n' "$*" >&2; }

# --- prerequisites ---------------------------------------------------------
if ! command -v h2load >/dev/null; then
  log "installing h2load (nghttp2-client)"
  apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi
for tool in h2load redis-server redis-benchmark redis-cli curl node npm getconf awk; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH"
done
[ -x "$BIN" ] || fail "no service binary at $BIN (set DATALAYER_BIN, or cargo build --release)"
[ -x "$PY" ] || fail "no .venv: run scripts/setup.sh"
"$PY" -c 'import grpc, datalayer.topic.v1.topic_pb2' 2>/dev/null ||
  fail ".venv lacks grpcio or the datalayer client: run scripts/setup.sh"
[ -x clients/typescript/node_modules/.bin/tsc ] ||
  fail "clients/typescript/node_modules is missing: run scripts/setup.sh"

TICK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/datalayer-topics-bench.XXXXXX")
REDIS_PID=
SVC_PID=
SVC_B_PID=
SVC_C_PID=
cleanup() {
  local pid
  for pid in $SVC_PID $SVC_B_PID $SVC_C_PID $REDIS_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $SVC_PID $SVC_B_PID $SVC_C_PID $REDIS_PID; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${TBENCH_KEEP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
STARTED=$(date +%s)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU clock ticks (user + system, all threads) a running process has used.
cpu_ticks() {
  local line
  read -r line <"/proc/$1/stat"
  line=${line##*) }
  # shellcheck disable=SC2086
  set -- $line
  echo $((${12} + ${13}))
}
machine_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
now() { date +%s.%N; }
other_cores() {
  awk -v m="$1" -v p="$2" -v s="$3" -v hz="$TICK" 'BEGIN { printf "%.2f", (m - p) / hz / s }'
}
per_call() {
  awk -v t="$1" -v n="$2" -v hz="$TICK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }'
}
# Runs "$@" with output to $1; prints the CPU ticks it and its children used.
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
PROBLEMS=()
busy_elsewhere() {
  if awk -v o="$2" 'BEGIN { exit !(o >= 0.25) }'; then
    PROBLEMS+=("$1: other processes used $2 cores meanwhile; its figures are disturbed")
  fi
}

# --- the node side: ioredis, Connect, the compiled client ---------------------
pinned() {
  node -p "require('./clients/typescript/package-lock.json').packages['node_modules/$1'].version"
}
PKGS=(
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
cp "$HERE/fanout.mjs" "$TMP/fanout.mjs"
IOREDIS_V=$(node -p "require('$TMP/node_modules/ioredis/package.json').version")

# --- redis-server and two replicas ---------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
  [ "$(rcli PING 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(rcli PING 2>/dev/null)" = PONG ] || fail "redis-server did not start ($TMP/redis.log)"

# start_replica NAME [VAR=VALUE...]: starts the service (with those extra
# settings); sets ADDR_<NAME>, MPORT_<NAME>, PID_<NAME>.
start_replica() {
  local name=$1 gport mport
  shift
  gport=$(free_port)
  mport=$(free_port)
  env -u DATALAYER_CONFIG "$@" \
    DATALAYER__REDIS__URL="redis://127.0.0.1:$RPORT" \
    DATALAYER__SERVER__ADDR="127.0.0.1:$gport" \
    DATALAYER__METRICS__ADDR="127.0.0.1:$mport" \
    DATALAYER__TELEMETRY__LOG_LEVEL=warn \
    "$BIN" serve >"$TMP/service-$name.log" 2>&1 &
  printf -v "PID_$name" %s $!
  printf -v "ADDR_$name" %s "127.0.0.1:$gport"
  printf -v "MPORT_$name" %s "$mport"
}
# wait_serving NAME: until the replica's health says SERVING (at most 10 s).
wait_serving() {
  local addr_var="ADDR_$1" pid_var="PID_$1" _
  for _ in $(seq 500); do
    if "$BIN" health --addr "${!addr_var}" --timeout 1s >/dev/null 2>&1; then return 0; fi
    kill -0 "${!pid_var}" 2>/dev/null || break
    sleep 0.02
  done
  cat "$TMP/service-$1.log" >&2
  fail "replica $1 is not SERVING at ${!addr_var}"
}
start_replica A
SVC_PID=$PID_A
start_replica B
SVC_B_PID=$PID_B
start_replica C DATALAYER__TOPIC__MAX_LENGTH="$SMALL_LEN"
SVC_C_PID=$PID_C
wait_serving A
wait_serving B
wait_serving C
log "replicas SERVING at $ADDR_A (A), $ADDR_B (B), and $ADDR_C (C, topic.max_length $SMALL_LEN)"
# What the replicas log from here on (warnings, errors) is reported.
for r in A B C; do
  printf -v "LOG_FROM_$r" %s $(($(wc -l <"$TMP/service-$r.log") + 1))
done

# Non-OK calls of a method so far, over both replicas' metrics: "ok bad".
rpc_counts() {
  local service=${1%/*} method=${1##*/} port
  service=${service#/}
  for port in "$MPORT_A" "$MPORT_B" "$MPORT_C"; do
    curl -fsS "http://127.0.0.1:$port/metrics"
  done | awk -v s="service=\"$service\"" -v m="method=\"$method\"" '
    /^datalayer_rpc_requests_total\{/ && index($0, s) && index($0, m) {
      if (index($0, "code=\"OK\"")) ok += $NF; else bad += $NF
    }
    END { printf "%d %d\n", ok, bad }'
}
h2_summary() {
  awk '/^finished in/ { rate = $4 }
    /^requests:/ { done = $6; ok = $8; failed = $10; errored = $12 }
    END { print done + 0, ok + 0, failed + 0, errored + 0, rate + 0 }' "$1"
}

# --- 1. Publish throughput -------------------------------------------------------
VALUE=$(printf 'x%.0s' $(seq 100))
PATH_=$("$PY" "$HELPER" path)
fill='for i = 1, tonumber(ARGV[1]) do redis.call("XADD", KEYS[1], "*", "p", ARGV[2]) end return redis.call("XLEN", KEYS[1])'
PUB_ROWS=()

# publish_bench REPLICA LENGTH SECONDS: Publish through the replica (whose
# topic.max_length is LENGTH) to a topic kept at LENGTH entries, then raw
# XADD MAXLEN LENGTH to a stream of LENGTH entries; appends a row.
publish_bench() {
  local r=$1 want=$2 secs=$3 addr_var="ADDR_$1" pid_var="PID_$1" addr pid topic tkey rkey
  addr=${!addr_var}
  pid=${!pid_var}
  topic=bench.publish.$want
  tkey="dl:default:tp:{$topic}"
  rkey=raw:publish:$want
  log "=== publish: $PATH_ (replica $r, topic.max_length $want) vs XADD MAXLEN $want"
  "$PY" "$HELPER" body "$TMP/publish.$want.bin" "$topic"
  # The topic exists from a real Publish; then both streams are filled to
  # exactly $want entries (field p, as publish.lua writes a message without
  # headers), so every timed append trims one, as in a topic at steady state.
  "$PY" "$HELPER" verify "$addr" "$topic" >/dev/null || fail "Publish does not answer"
  rcli EVAL "$fill" 1 "$tkey" $((want - 1)) "$VALUE" >/dev/null
  rcli EVAL "$fill" 1 "$rkey" "$want" "$VALUE" >/dev/null
  [ "$("$PY" "$HELPER" length "$addr" "$topic")" = "$want" ] || fail "the topic is not $want long after the fill"
  "$PY" "$HELPER" verify "$addr" "$topic" >/dev/null || fail "Publish fails after the fill"
  [ "$(rcli XLEN "$tkey")" = "$want" ] || fail "a Publish on a full topic did not trim it to $want (XLEN $(rcli XLEN "$tkey"))"

  h2() {
    h2load -c "$CONNS" -m "$STREAMS" -H 'content-type: application/grpc' -H 'te: trailers' \
      -d "$TMP/publish.$want.bin" "$@" "http://$addr$PATH_"
  }
  h2 -D 1 >/dev/null 2>&1 || true # warm-up
  local ok0 bad0 ok1 bad1 s0 s1 r0 r1 m0 m1 t0 t1 lg other done okh failed errored rate svc_cpu
  read -r ok0 bad0 < <(rpc_counts "$PATH_")
  s0=$(cpu_ticks "$pid")
  r0=$(cpu_ticks "$REDIS_PID")
  m0=$(machine_ticks) t0=$(now)
  lg=$(run_timed "$TMP/publish.$want.h2load" h2 -D "$secs") || { cat "$TMP/publish.$want.h2load" >&2; fail "h2load failed"; }
  m1=$(machine_ticks) t1=$(now)
  s1=$(cpu_ticks "$pid")
  r1=$(cpu_ticks "$REDIS_PID")
  other=$(other_cores $((m1 - m0)) $((lg + s1 - s0 + r1 - r0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  read -r ok1 bad1 < <(rpc_counts "$PATH_")
  read -r done okh failed errored rate < <(h2_summary "$TMP/publish.$want.h2load")
  local okd=$((ok1 - ok0)) badd=$((bad1 - bad0))
  # h2load counts a gRPC error as a success (HTTP 200): the OK rate is the
  # service's own count of OK answers over the run.
  local ok_rate
  ok_rate=$(awk -v d="$done" -v b="$badd" -v r="$rate" 'BEGIN { x = d - b; if (x < 0) x = 0; print (d > 0 ? r * x / d : 0) }')
  svc_cpu="$(per_call "$lg" "$done") $(per_call $((s1 - s0)) "$done") $(per_call $((r1 - r0)) "$done") $other"
  busy_elsewhere "publish $want (service run)" "$other"
  log "  service: $done done, $okh HTTP 2xx, $failed failed, $errored errored; gRPC OK $okd, non-OK $badd; $rate calls/s; other CPU $other cores"
  if [ "$failed" != 0 ] || [ "$errored" != 0 ] || [ "$badd" != 0 ] || [ "$done" = 0 ]; then
    PROBLEMS+=("publish $want: h2load $failed failed / $errored errored; the service answered $badd of its $((okd + badd)) Publish calls with a non-OK code")
  fi
  local len rlen
  len=$(rcli XLEN "$tkey")
  [ "$len" = "$want" ] || PROBLEMS+=("publish $want: the topic holds $len entries after the run, not topic.max_length $want")

  local raw=(XADD "$rkey" MAXLEN "$want" '*' p "$VALUE") reply cal n raw_rate raw_cpu
  reply=$(rcli "${raw[@]}" 2>&1)
  case $reply in ERR* | WRONGTYPE*) fail "raw XADD: $reply" ;; esac
  cal=$(redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n $((CONC * 400)) --csv "${raw[@]}" |
    awk -F'"' 'NR == 2 { print int($4) }')
  n=$((cal * secs))
  [ "$n" -gt 0 ] || fail "redis-benchmark calibration failed"
  s0=$(cpu_ticks "$pid")
  r0=$(cpu_ticks "$REDIS_PID")
  m0=$(machine_ticks) t0=$(now)
  lg=$(run_timed "$TMP/publish.$want.rb" redis-benchmark -p "$RPORT" -c "$CONC" -P 1 -n "$n" --csv "${raw[@]}") ||
    { cat "$TMP/publish.$want.rb" >&2; fail "redis-benchmark failed"; }
  m1=$(machine_ticks) t1=$(now)
  s1=$(cpu_ticks "$pid")
  r1=$(cpu_ticks "$REDIS_PID")
  other=$(other_cores $((m1 - m0)) $((lg + s1 - s0 + r1 - r0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  if grep -qi 'error' "$TMP/publish.$want.rb"; then PROBLEMS+=("raw XADD $want: $(grep -i -m1 error "$TMP/publish.$want.rb")"); fi
  raw_rate=$(awk -F'"' 'NR == 2 { print $4 }' "$TMP/publish.$want.rb")
  raw_cpu="$(per_call "$lg" "$n") $(per_call $((s1 - s0)) "$n") $(per_call $((r1 - r0)) "$n") $other"
  busy_elsewhere "publish $want (raw run)" "$other"
  rlen=$(rcli XLEN "$rkey")
  [ "$rlen" = "$want" ] || PROBLEMS+=("raw $want: the stream holds $rlen entries after the run, not $want")
  log "  raw: $n ops, $raw_rate ops/s; other CPU $other cores"
  PUB_ROWS+=("$want $secs $rate $ok_rate $badd $raw_rate $svc_cpu $raw_cpu $len $rlen")
}

# How long Redis itself takes (SLOWLOG, µs) for the commands of
# publish.lua's retention step on a topic of LENGTH entries, all younger than
# topic.max_age: XRANGE - + COUNT 1, XTRIM MAXLEN, and the age check
# XREVRANGE key (<now - max_age>-0 - COUNT 1. Prints "xrange xtrim xrevrange".
retention_probe() {
  local tkey="dl:default:tp:{bench.publish.$1}" old t
  old=$(rcli CONFIG GET slowlog-log-slower-than | tail -1)
  t=$(rcli TIME | head -1)
  rcli CONFIG SET slowlog-log-slower-than 0 >/dev/null
  rcli SLOWLOG RESET >/dev/null
  rcli XRANGE "$tkey" - + COUNT 1 >/dev/null
  rcli XTRIM "$tkey" MAXLEN "$1" >/dev/null
  rcli XREVRANGE "$tkey" "($(((t - 86400) * 1000))-0" - COUNT 1 >/dev/null
  rcli CONFIG SET slowlog-log-slower-than "$old" >/dev/null
  # SLOWLOG GET: newest first; each entry: id, time, µs, then the command.
  rcli SLOWLOG GET 10 | awk '
    prev2 ~ /^[0-9]+$/ && prev1 ~ /^[0-9]+$/ && $0 ~ /^[0-9]+$/ { us = $0 }
    /^(XRANGE|XTRIM|XREVRANGE)$/ && us != "" { v[$0] = us; us = "" }
    { prev2 = prev1; prev1 = $0 }
    END { print v["XRANGE"], v["XTRIM"], v["XREVRANGE"] }'
}

publish_bench A "$MAXLEN" "$SECS"
PROBE_BIG=$(retention_probe "$MAXLEN")
publish_bench C "$SMALL_LEN" "$SMALL_SECS"
PROBE_SMALL=$(retention_probe "$SMALL_LEN")

# --- 2. fan-out latency ------------------------------------------------------------
log "=== fan-out: $SUBS subscribers, $SECS s per run; plan (rate:modes): $PLAN"
fan_status=0
(cd "$TMP" && env \
  TB_ADDR_A="$ADDR_A" TB_ADDR_B="$ADDR_B" \
  TB_REDIS_URL="redis://127.0.0.1:$RPORT" \
  TB_REDIS_PID="$REDIS_PID" TB_DATALAYER_PID="$PID_A" TB_DATALAYER_B_PID="$PID_B" \
  TB_SUBSCRIBERS="$SUBS" TB_PLAN="$PLAN" TB_SECONDS="$SECS" TB_WORKERS="${TBENCH_WORKERS:-2}" \
  TB_CLK_TCK="$TICK" \
  node fanout.mjs >"$TMP/fanout.out") || fan_status=$?
[ $fan_status = 0 ] || [ -s "$TMP/fanout.out" ] || fail "fanout.mjs failed (status $fan_status)"

# --- the tables ----------------------------------------------------------------------
{
  echo
  echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Redis $(redis-server --version | awk '{ print $3 }' | tr -d 'v='), node $(node --version), ioredis $IOREDIS_V"
  echo "load average before the run: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg); the run took $(($(date +%s) - STARTED)) s"
  echo "service: $BIN ($("$BIN" --version)); replicas A and B at the default settings (topic.max_length $MAXLEN,"
  echo "  topic.poll_interval 20ms), C with topic.max_length $SMALL_LEN"
  echo
  echo "publish: 100-byte payload, one topic / one stream, filled first to its length (every append trims one, as at steady state);"
  echo "  h2load -c $CONNS -m $STREAMS vs redis-benchmark -c $CONC -P 1. The service trims to topic.max_length exactly"
  echo "  (publish.lua: XADD, XLEN, XRANGE COUNT 1 + XTRIM MAXLEN, the age check XREVRANGE, PEXPIRE); raw is XADD MAXLEN <length>"
  echo "  (exact, no ~): one command. calls/s: what h2load finished; OK/s: those the service answered OK (h2load counts a gRPC"
  echo "  error as a success); non-OK: Publish calls the service answered with an error during the run"
  echo "CPU in µs per call (per call h2load finished): lg = load generator, svc = service, rds = redis-server;"
  echo "other = cores busy with anything else"
  echo
  printf '%-20s %8s %8s %7s %8s %6s | %-23s | %-23s\n' "" service service "" raw "" "CPU µs/call, service" "CPU µs/call, raw"
  printf '%-20s %8s %8s %7s %8s %6s | %5s %5s %6s %4s | %5s %5s %6s %4s\n' \
    "topic length" "calls/s" "OK/s" non-OK "ops/s" ratio lg svc rds oth lg svc rds oth
  for row in "${PUB_ROWS[@]}"; do
    # shellcheck disable=SC2086
    set -- $row
    secs=$2
    set -- "$1" "${@:3}"
    printf '%-20s %8.0f %8.0f %7s %8.0f %6.3f | %5s %5s %6s %4s | %5s %5s %6s %4s\n' \
      "$1" "$2" "$3" "$4" "$5" "$(awk -v a="$3" -v b="$5" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
      "$6" "$7" "$8" "$9" "${10}" "${11}" "${12}" "${13}"
    echo "  ($secs s each; after the runs: topic length ${14}, raw stream length ${15})"
  done
  echo "Redis's own time (SLOWLOG, µs) of publish.lua's retention commands on the full topic:"
  # shellcheck disable=SC2086
  set -- $PROBE_BIG
  echo "  $MAXLEN entries: XRANGE - + COUNT 1 ${1:-?}, XTRIM MAXLEN ${2:-?}, XREVRANGE (<now - max_age>-0 - COUNT 1 ${3:-?}"
  # shellcheck disable=SC2086
  set -- $PROBE_SMALL
  echo "  $SMALL_LEN entries: XRANGE - + COUNT 1 ${1:-?}, XTRIM MAXLEN ${2:-?}, XREVRANGE (<now - max_age>-0 - COUNT 1 ${3:-?}"
  cat "$TMP/fanout.out"
  for r in A B C; do
    f="$TMP/service-$r.log"
    from_var="LOG_FROM_$r"
    logged=$(tail -n +"${!from_var}" "$f" | grep -c . || true)
    if [ "$logged" != 0 ]; then
      PROBLEMS+=("replica $r logged $logged lines during the runs, first: $(tail -n +"${!from_var}" "$f" | head -2 | cut -c1-300 | tr '\n' ' ')")
    fi
  done
  # Subscribe streams the subscribers cancel at the end of each run count
  # as CANCELLED: expected, listed apart.
  codes=$(for port in "$MPORT_A" "$MPORT_B" "$MPORT_C"; do curl -fsS "http://127.0.0.1:$port/metrics"; done | awk '
    /^datalayer_rpc_requests_total\{/ && !index($0, "code=\"OK\"") && $NF > 0 {
      m = $0; sub(/.*method="/, "", m); sub(/".*/, "", m)
      c = $0; sub(/.*code="/, "", c); sub(/".*/, "", c)
      printf "%s%s %s x%d", sep, m, c, $NF; sep = ", "
    }')
  cancelled=$(printf '%s\n' "$codes" | tr ',' '\n' | awk '/Subscribe Cancelled/ { sub(/.*x/, ""); n += $0 } END { print n + 0 }')
  codes=$(printf '%s\n' "$codes" | tr ',' '\n' | sed 's/^ //' | grep -v '^Subscribe Cancelled' | paste -sd, - | sed 's/,/, /g')
  echo "Subscribe streams ended by their subscribers (CANCELLED, expected): $cancelled"
  if [ -n "$codes" ]; then PROBLEMS+=("non-OK gRPC codes in the whole run (service metrics, all replicas): $codes"); fi
  echo
  if [ ${#PROBLEMS[@]} -eq 0 ]; then
    echo "publish: no failures (every h2load request HTTP 200, no non-OK gRPC code, nothing logged, lengths exact)"
  else
    echo "PROBLEMS (publish and services):"
    printf '  %s\n' "${PROBLEMS[@]}"
  fi
}
[ $fan_status = 0 ] && [ ${#PROBLEMS[@]} -eq 0 ]
