#!/usr/bin/env bash
# Sluice under hostile load: memory under a flood of distinct keys, a long soak on Redis, and a burst
# past what it can sustain. Release build; everything on 127.0.0.1, free ports; every process
# started here is stopped on exit. Result lines are printed and appended to $RESULTS.
#
# usage: benches/hardening.sh flood|soak|burst|all
#   flood  KEYS distinct keys (10 000 000) through the in-process store (each key asked twice
#          against a limit of 1, so the second is denied and the over-limit cache fills too), then
#          through the fallback (Redis configured but down): RSS before, peak and after, keys held,
#          decisions/s while evicting (local.max_keys 1 000 000, over-limit cache 100 000).
#   soak   SOAK_MINUTES (30) at SOAK_RATE (3000) decisions/s over 100 000 keys on Redis: Sluice's
#          RSS and Redis used_memory at the start and the end, errors, p99 of the first and last
#          minute.
#   burst  the closed-loop throughput S at 64 in flight on Redis, then an open loop at 2 x S for
#          BURST_SECS (10): shed decisions, p99 of the answers, failed calls.
#   env: KEYS, REPEAT (times each key is asked in the in-process flood, 2), SOAK_MINUTES, SOAK_RATE,
#        BURST_SECS, RESULTS (target/hardening-results.txt)
set -euo pipefail

cd "$(dirname "$0")/.."
WHAT=${1:-all}
KEYS=${KEYS:-10000000}
SOAK_MINUTES=${SOAK_MINUTES:-30}
SOAK_RATE=${SOAK_RATE:-3000}
BURST_SECS=${BURST_SECS:-10}
REPEAT=${REPEAT:-2}
RESULTS=${RESULTS:-target/hardening-results.txt}
case $WHAT in flood | soak | burst | all) ;; *) echo "usage: $0 flood|soak|burst|all" >&2; exit 2 ;; esac
source benches/lib.sh
mkdir -p "$(dirname "$RESULTS")"
echo "== $(date -u +%FT%TZ) $WHAT: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS" >&2

kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$2/status"; }
mib() { echo $(($(kib "$1" "$2") / 1024)); }

# metric HTTP_PORT NAME_PREFIX: the sum of the series starting with NAME_PREFIX.
metric() {
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v p="$2" 'index($0, p) == 1 { s += $NF } END { printf "%d\n", s }'
}

# serve NAME YAML_TAIL: starts Sluice with a config of its own; sets PID, GRPC, HTTP.
serve() {
  local name=$1 tail=$2 cfg=$WORK/$1.yaml
  GRPC=$(free_port)
  HTTP=$(free_port)
  cat >"$cfg" <<EOF
server:
  grpc_addr: 127.0.0.1:$GRPC
  http_addr: 127.0.0.1:$HTTP
log:
  level: warn
$tail
EOF
  "$SLUICE" serve --config "$cfg" >"$WORK/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  wait_port "$GRPC"
  wait_port "$HTTP"
}

# loadgen ARGS...: one result line, kept in LINE (and the run's failure is reported, not fatal).
loadgen() {
  if ! LINE=$("$LOADGEN" load --addr "127.0.0.1:$GRPC" --pid "$PID" "$@"); then
    echo "loadgen failed (line: ${LINE:-none})" >&2
  fi
  echo "$LINE" >&2
}

field() { tr ' ' '\n' <<<"$LINE" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

flood() {
  local store=$1 tail=$2 repeat=$3 role=$4 before
  serve "flood-$store" "$tail"
  sleep 4 # the fallback's first connection attempt gives up after 3 s
  before=$(mib VmRSS "$PID")
  loadgen --target "flood-$store" -c 64 --distinct --repeat "$repeat" --max-calls $((KEYS * repeat)) \
    --secs 3600 --warmup-secs 0
  sleep 2 # one more trim by the sweeper
  echo "flood store=$store distinct_keys=$KEYS calls=$(field decisions) rps=$(field rps) p99_us=$(field p99_us)" \
    "errors=$(field errors) denied=$(field denied) rss_before_mib=$before peak_rss_mib=$(mib VmHWM "$PID")" \
    "rss_after_mib=$(mib VmRSS "$PID") keys_held=$(metric "$HTTP" "sluice_local_keys{role=\"$role\"}")" \
    "over_limit_cache_keys=$(metric "$HTTP" sluice_over_limit_cache_keys)" | tee -a "$RESULTS"
  stop "$PID"
}

TIER_ONE="tiers:
  - name: per_ip
    key: [ip]
    limit: 1
    window: 10m"

if [[ $WHAT == flood || $WHAT == all ]]; then
  flood local "$TIER_ONE" "$REPEAT" local
  flood fallback "$TIER_ONE
redis:
  url: redis://127.0.0.1:$(free_port)
  timeout_ms: 50" 1 fallback
fi

TIER_WIDE="tiers:
  - name: per_ip
    key: [ip]
    limit: 100000000
    window: 1m"

if [[ $WHAT == soak || $WHAT == all ]]; then
  start_redis
  serve soak "$TIER_WIDE
redis:
  url: redis://127.0.0.1:$REDIS_PORT"
  errors=0 first_p99= last_p99= rss_start= mem_start=
  for minute in $(seq "$SOAK_MINUTES"); do
    loadgen --target soak --rate "$SOAK_RATE" -c 2000 --keys 100000 --secs 60 --warmup-secs 0
    errors=$((errors + $(field errors)))
    last_p99=$(field p99_us)
    if [[ $minute == 1 ]]; then
      first_p99=$last_p99
      rss_start=$(mib VmRSS "$PID")
      mem_start=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r')
    fi
  done
  mem_end=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r')
  echo "soak minutes=$SOAK_MINUTES rate=$SOAK_RATE errors=$errors p99_first_us=$first_p99 p99_last_us=$last_p99" \
    "rss_start_mib=$rss_start rss_end_mib=$(mib VmRSS "$PID") redis_used_memory_start=$mem_start" \
    "redis_used_memory_end=$mem_end redis_keys_end=$(redis-cli -p "$REDIS_PORT" dbsize)" \
    "fallback_decisions=$(metric "$HTTP" 'sluice_decisions_total{tier="per_ip",decision="allow",source="fallback"}')" |
    tee -a "$RESULTS"
  stop "$PID"
  stop "$REDIS_PID"
fi

if [[ $WHAT == burst || $WHAT == all ]]; then
  start_redis
  serve burst "$TIER_WIDE
redis:
  url: redis://127.0.0.1:$REDIS_PORT"
  loadgen --target sustained -c 64 --keys 100000 --secs "$BURST_SECS" --warmup-secs 2
  sustained=$(field rps)
  shed_before=$(metric "$HTTP" sluice_shed_total)
  rate=$((2 * ${sustained%.*}))
  loadgen --target burst --rate "$rate" -c 512 --connections 8 --deadline-ms 250 --keys 100000 \
    --secs "$BURST_SECS" --warmup-secs 0
  echo "burst sustained_rps=$sustained offered_rps=$rate answered_rps=$(field rps) p99_us=$(field p99_us)" \
    "p999_us=$(field p999_us) errors=$(field errors) unsent=$(field unsent)" \
    "shed=$(($(metric "$HTTP" sluice_shed_total) - shed_before))" | tee -a "$RESULTS"
  stop "$PID"
  stop "$REDIS_PID"
fi
