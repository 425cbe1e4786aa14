#!/usr/bin/env bash
# Sluice under load, next to a no-op RateLimiter server that does nothing but answer "allowed":
#   noop                  benches/loadgen.rs's no-op server
#   sluice-local          `sluice serve`, in-process store
#   sluice-redis          `sluice serve` on Redis (one multiplexed connection)
#   sluice-redis-adaptive the same with the tier's adaptive threat score on
# each at 1, 16 and 64 calls in flight over 1000 keys, then Sluice's decision function alone with
# redis-benchmark. One tier keyed by [ip] with a limit no run comes near, so every call is a counted,
# admitted decision. Everything listens on 127.0.0.1 on free ports; every process started here is
# stopped on exit.
#
# usage: benches/run.sh
#   env: SECS (measured seconds per run, 8), WARMUP_SECS (2), KEYS (1000), CONCURRENCY ("1 16 64"),
#        RESULTS (file the result lines are appended to, target/loadgen-results.txt), CLUSTER (1:
#        also Sluice on a Redis Cluster of three masters, as sluice-cluster), TRACING (a sample_ratio,
#        e.g. 1 or 0: every Sluice runs with `tracing` on, exporting to a no-op server that drops the
#        spans; the calls carry no traceparent, so the ratio decides; compare with a run without it)
set -euo pipefail

cd "$(dirname "$0")/.."
SECS=${SECS:-8}
WARMUP_SECS=${WARMUP_SECS:-2}
KEYS=${KEYS:-1000}
CONCURRENCY=${CONCURRENCY:-"1 16 64"}
RESULTS=${RESULTS:-target/loadgen-results.txt}
source benches/lib.sh
mkdir -p "$(dirname "$RESULTS")"
RUN_LINES=$WORK/lines.txt
: >"$RUN_LINES"
echo "== $(date -u +%FT%TZ) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS" >&2

# load TARGET PORT SERVER_PID [loadgen options...]: one run per concurrency level.
load() {
  local target=$1 port=$2 pid=$3 c line
  shift 3
  for c in $CONCURRENCY; do
    if ! line=$("$LOADGEN" load --target "$target" --addr "127.0.0.1:$port" --pid "$pid" -c "$c" \
      --keys "$KEYS" --secs "$SECS" --warmup-secs "$WARMUP_SECS" "$@"); then
      echo "run failed: $target c=$c (line: ${line:-none})" >&2
    fi
    if [[ -n $line ]]; then echo "$line" | tee -a "$RESULTS" "$RUN_LINES"; fi
  done
}

# TRACING=ratio: a span sink for every Sluice below (the no-op server, which counts what it drops).
TRACING_YAML=
if [[ -n ${TRACING:-} ]]; then
  SINK_PORT=$(free_port)
  "$LOADGEN" noop --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$SINK_PORT"
  TRACING_YAML="tracing: {otlp_endpoint: \"http://127.0.0.1:$SINK_PORT\", sample_ratio: $TRACING}"
  echo "== traces on: sample_ratio $TRACING, exported to a no-op sink on 127.0.0.1" | tee -a "$RESULTS" >&2
fi

# serve_sluice TARGET [yaml lines of a redis section]: serves, loads, and prints where decisions came from.
serve_sluice() {
  local target=$1 redis_yaml=${2:-} tier_yaml=${3:-} grpc http cfg pid
  grpc=$(free_port)
  http=$(free_port)
  cfg=$WORK/$target.yaml
  cat >"$cfg" <<EOF
server:
  grpc_addr: 127.0.0.1:$grpc
  http_addr: 127.0.0.1:$http
log:
  level: warn
tiers:
  - name: edge_ip
    key: [ip]
    limit: 100000000
    window: 1s
$tier_yaml
$redis_yaml
$TRACING_YAML
EOF
  # Targets named *-envoy call ShouldRateLimit on an envoyproxy/ratelimit file with the same limit.
  local api=()
  if [[ $target == *-envoy ]]; then
    mkdir -p "$WORK/envoy"
    printf '%s\n' "domain: bench" "descriptors:" "  - key: remote_address" \
      "    rate_limit: {unit: second, requests_per_unit: 100000000}" >"$WORK/envoy/bench.yaml"
    printf '%s\n' "envoy:" "  paths: [\"$WORK/envoy\"]" >>"$cfg"
    api=(--envoy-domain bench)
  fi
  "$SLUICE" serve --config "$cfg" >"$WORK/$target.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$grpc"
  if [[ -n $redis_yaml ]]; then
    load "$target" "$grpc" "$pid" --redis-pid "$REDIS_PID" "${api[@]}"
  else
    load "$target" "$grpc" "$pid" "${api[@]}"
  fi
  # Decisions by source (redis, fallback, local) and Redis errors over all of this target's runs.
  curl -fsS "http://127.0.0.1:$http/metrics" | awk -v t="$target" '
    /^sluice_(envoy_)?decisions_total\{/ { match($0, /source="[a-z]+"/); s[substr($0, RSTART + 8, RLENGTH - 9)] += $NF }
    /^sluice_redis_errors_total\{/ { e += $NF }
    END { printf "== %s decisions by source:", t; for (k in s) printf " %s=%d", k, s[k]; printf " redis_errors=%d\n", e }' |
    tee -a "$RESULTS" "$WORK/sources.txt" >&2
  stop "$pid"
}

# --- the no-op server
NOOP_PORT=$(free_port)
"$LOADGEN" noop --listen "127.0.0.1:$NOOP_PORT" >"$WORK/noop.log" 2>&1 &
NOOP_PID=$!
PIDS+=("$NOOP_PID")
wait_port "$NOOP_PORT"
load noop "$NOOP_PORT" "$NOOP_PID"
stop "$NOOP_PID"

# --- Sluice, in process
serve_sluice sluice-local
serve_sluice sluice-local-envoy

# --- Redis: our own server, never 6379
start_redis

# Sluice's function library exactly as src/store/script.rs builds it: the files its BODY lists, in
# order, joined by newlines, named after the first 16 hex digits of their SHA1 (the check after
# Sluice's run proves it is the same text).
mapfile -t LUA_FILES < <(sed -n '/^pub const BODY/,/^);/p' src/store/script.rs | grep -o 'lua/[a-z_]*\.lua')
for f in "${LUA_FILES[@]}"; do cat "$f"; printf '\n'; done | head -c -1 >"$WORK/body.lua"
VERSION=$(sha1sum "$WORK/body.lua" | cut -c 1-16)
{ printf '#!lua name=sluice_%s\nlocal VERSION = '"'"'%s'"'"'\n' "$VERSION" "$VERSION"; cat "$WORK/body.lua"; } >"$WORK/library.lua"
redis-cli -p "$REDIS_PORT" -x FUNCTION LOAD <"$WORK/library.lua" >/dev/null
echo "== function library sluice_$VERSION" >&2
BENCH_LINES=$WORK/redis-benchmark.txt
: >"$BENCH_LINES"
for c in $CONCURRENCY; do
  n=$((c == 1 ? 30000 : 200000))
  before=$(cpu_ticks "$REDIS_PID")
  # ARGV (see lua/protocol.lua): now (0 = Redis TIME), 1 request; its commit, 1 tier, 0 reputation
  # keys; the tier: sliding_window, limit, window_ms, cost, shadow, quota_mode, counts, adaptive,
  # penalty, baseline.
  csv=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$c" -n "$n" -r "$KEYS" --csv \
    FCALL "sluice_decide_$VERSION" 1 'sluice:{edge_ip:__rand_int__}:sw' 0 1 1 1 0 1 100000000 1000 1 0 0 1 0 0 0 | tail -n 1)
  after=$(cpu_ticks "$REDIS_PID")
  python3 - "$c" "$n" "$before" "$after" "$(getconf CLK_TCK)" "$csv" <<'EOF' | tee -a "$RESULTS" "$BENCH_LINES"
import csv, sys
c, n, before, after, hz = (int(v) for v in sys.argv[1:6])
row = next(csv.reader([sys.argv[6]]))
rps, p50, p99 = float(row[1]), float(row[4]), float(row[6])
print(f"target=redis-benchmark-fcall c={c} rps={rps:.0f} p50_us={p50 * 1000:.0f} p99_us={p99 * 1000:.0f} "
      f"redis_cpu_us_per_call={(after - before) * 1e6 / hz / n:.1f}")
EOF
done
redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
# Sluice must load the very same text: after a flush only its own load can bring this name back.
redis-cli -p "$REDIS_PORT" FUNCTION FLUSH >/dev/null

serve_sluice sluice-redis "redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}"
# The same tier with the adaptive threat score on (requests carry no user agent: score 20).
serve_sluice sluice-redis-adaptive "redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}" "    adaptive: true"
serve_sluice sluice-redis-envoy "redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}"
SAME_LIBRARY=$(redis-cli -p "$REDIS_PORT" FUNCTION LIST LIBRARYNAME "sluice_$VERSION" | grep -c "^sluice_$VERSION\$" || true)

# --- Redis Cluster of three masters (CLUSTER=1): Sluice's CPU per decision from loadgen, the three
# masters' CPU summed over all of this target's runs.
if [[ ${CLUSTER:-0} == 1 ]]; then
  start_cluster
  nodes=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
  before=0
  for pid in "${CLUSTER_PIDS[@]}"; do before=$((before + $(cpu_ticks "$pid"))); done
  serve_sluice sluice-cluster "redis: {cluster: \"${nodes%,}\"}"
  after=0
  for pid in "${CLUSTER_PIDS[@]}"; do after=$((after + $(cpu_ticks "$pid"))); done
  echo "== sluice-cluster: the three masters used $(((after - before) * 1000 / $(getconf CLK_TCK))) ms of CPU" |
    tee -a "$RESULTS" >&2
fi

# --- summary
echo
echo "Sluice vs no-op: $KEYS keys, ${SECS} s measured after ${WARMUP_SECS} s warm-up, $(nproc) cores shared by client and server"
python3 - "$RUN_LINES" "$BENCH_LINES" <<'EOF'
import sys
def rows(path):
    with open(path) as f:
        return [dict(kv.split("=", 1) for kv in line.split()) for line in f if line.strip()]
runs, bench = rows(sys.argv[1]), rows(sys.argv[2])
cols = [("target", "target"), ("c", "c"), ("rps", "decisions/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"),
        ("p999_us", "p99.9 µs"), ("cpu_us_per_decision", "server CPU µs/dec"),
        ("redis_cpu_us_per_decision", "redis CPU µs/dec"), ("client_cpu_us_per_decision", "client CPU µs/dec"),
        ("errors", "errors"), ("denied", "denied")]
table = [[h for _, h in cols]] + [[r.get(k, "-") for k, _ in cols] for r in runs]
widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
for row in table:
    print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
print()
for b in bench:
    print(f"redis-benchmark FCALL decide c={b['c']}: {b['rps']} calls/s, p50 {b['p50_us']} µs, "
          f"p99 {b['p99_us']} µs, redis CPU {b['redis_cpu_us_per_call']} µs/call")
top = max((int(r["c"]) for r in runs), default=0)
at = {r["target"]: r for r in runs if int(r["c"]) == top}
if "noop" in at:
    noop = float(at["noop"]["rps"])
    print()
    for target, goal in (("sluice-local", 0.95), ("sluice-redis", 0.80)):
        if target in at:
            ratio = float(at[target]["rps"]) / noop
            print(f"{target} / noop at c={top}: {ratio:.2f} (target {goal:.2f}: {'met' if ratio >= goal else 'MISSED'})")
for target in ("sluice-redis",):
    if target in at and at[target].get("cpu_us_per_decision", "-") != "-":
        cpu = float(at[target]["cpu_us_per_decision"])
        print(f"{target} server CPU at c={top}: {cpu} µs/decision (target < 40: {'met' if cpu < 40 else 'MISSED'})")
EOF
cat "$WORK/sources.txt"
if [[ -n ${TRACING:-} ]]; then
  stop "$SINK_PID"
  echo "== $(grep -o '[0-9]* spans received' "$WORK/sink.log" || echo 'no count from the span sink')" | tee -a "$RESULTS"
fi
echo "function library loaded by Sluice is the text of lua/ (sluice_$VERSION listed after a flush: $SAME_LIBRARY)"
echo "result lines appended to $RESULTS"
