#!/usr/bin/env bash
# Sluice under load, next to a no-op RateLimiter server that does nothing but answer "allowed":
#   noop                  benches/loadgen.rs's no-op server
#   sluice-local          `sluice serve`, in-process store, asked with Check
#   sluice-local-envoy    the same, asked with Envoy's ShouldRateLimit
#   sluice-redis          `sluice serve` on Redis (one multiplexed connection)
#   sluice-redis-adaptive the same with the tier's adaptive threat score on
#   sluice-redis-envoy    on Redis, asked with ShouldRateLimit
# each at 1, 16 and 64 calls in flight over 1000 keys, with Redis's own time inside the decision
# function (INFO commandstats) and the requests a call carried, for each target on Redis; the
# server's CPU, write system calls and context switches per decision for every run. The summary
# holds the figures to the throughput and CPU targets (docs/performance.md, "Where the targets
# stand"). One tier keyed by [ip] with a limit no run comes near, so every call is a counted,
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
  start_noop sink
  SINK_PORT=$NOOP_PORT SINK_PID=$NOOP_PID
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
    redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
    load "$target" "$grpc" "$pid" --redis-pid "$REDIS_PID" "${api[@]}"
    # Redis's own time inside the decision function (INFO commandstats), over all of this
    # target's runs: per call, and per decision with the calls' average size.
    redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[=,:]' -v t="$target" '
      /^cmdstat_fcall:/ { printf "== %s in the decision function: %d calls, %.1f µs per call\n", t, $3, $7 }' |
      tee -a "$RESULTS" "$WORK/sources.txt" >&2
  else
    load "$target" "$grpc" "$pid" "${api[@]}"
  fi
  # Decisions by source (redis, fallback, local) and Redis errors over all of this target's runs.
  curl -fsS "http://127.0.0.1:$http/metrics" | awk -v t="$target" '
    /^sluice_(envoy_)?decisions_total\{/ { match($0, /source="[a-z]+"/); s[substr($0, RSTART + 8, RLENGTH - 9)] += $NF }
    /^sluice_redis_errors_total\{/ { e += $NF }
    /^sluice_redis_batch_requests_sum / { rq = $NF }
    /^sluice_redis_batch_requests_count / { calls = $NF }
    END { printf "== %s decisions by source:", t; for (k in s) printf " %s=%d", k, s[k]; printf " redis_errors=%d", e
          if (calls > 0) printf ", %.1f requests a call", rq / calls; printf "\n" }' |
    tee -a "$RESULTS" "$WORK/sources.txt" >&2
  stop "$pid"
}

# --- the no-op server
start_noop noop
load noop "$NOOP_PORT" "$NOOP_PID"
stop "$NOOP_PID"

# --- Sluice, in process
serve_sluice sluice-local
serve_sluice sluice-local-envoy

# --- Redis: our own server, never 6379
start_redis

serve_sluice sluice-redis "redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}"
# The same tier with the adaptive threat score on (requests carry no user agent: score 20).
serve_sluice sluice-redis-adaptive "redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}" "    adaptive: true"
serve_sluice sluice-redis-envoy "redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}"

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
python3 - "$RUN_LINES" <<'EOF'
import sys
def rows(path):
    with open(path) as f:
        return [dict(kv.split("=", 1) for kv in line.split()) for line in f if line.strip()]
runs = rows(sys.argv[1])
cols = [("target", "target"), ("c", "c"), ("rps", "decisions/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"),
        ("p999_us", "p99.9 µs"), ("cpu_us_per_decision", "server CPU µs/dec"),
        ("redis_cpu_us_per_decision", "redis CPU µs/dec"), ("client_cpu_us_per_decision", "client CPU µs/dec"),
        ("writes_per_decision", "server writes/dec"), ("switches_per_decision", "server switches/dec"),
        ("errors", "errors"), ("denied", "denied")]
table = [[h for _, h in cols]] + [[r.get(k, "-") for k, _ in cols] for r in runs]
widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
for row in table:
    print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
print()
# The targets: throughput against the same run's no-op at each concurrency, and CPU per decision
# on Redis at c=64.
by = {(r["target"], int(r["c"])): r for r in runs}
def ratio(target, c):
    if (target, c) in by and ("noop", c) in by:
        return float(by[(target, c)]["rps"]) / float(by[("noop", c)]["rps"])
goals = [(t, c, 0.95) for t in ("sluice-local", "sluice-local-envoy") for c in (8, 64)]
goals += [(t, 64, 0.80) for t in ("sluice-redis", "sluice-redis-envoy")]
goals += [(t, 8, 0.50) for t in ("sluice-redis", "sluice-redis-envoy")]
for target, c, goal in goals:
    r = ratio(target, c)
    if r is not None:
        print(f"{target} / noop at c={c}: {r:.2f} (target {goal:.2f}: {'met' if r >= goal else 'MISSED'})")
for target in ("sluice-redis", "sluice-redis-envoy"):
    run = by.get((target, 64))
    for key, name, goal in (("cpu_us_per_decision", "Sluice", 15), ("redis_cpu_us_per_decision", "Redis", 5)):
        if run and run.get(key, "-") != "-":
            us = float(run[key])
            print(f"{target} {name} CPU at c=64: {us} µs/decision (target <= {goal}: {'met' if us <= goal else 'MISSED'})")
EOF
cat "$WORK/sources.txt"
if [[ -n ${TRACING:-} ]]; then
  stop "$SINK_PID"
  echo "== $(grep -o '[0-9]* spans received' "$WORK/sink.log" || echo 'no count from the span sink')" | tee -a "$RESULTS"
fi
echo "result lines appended to $RESULTS"
