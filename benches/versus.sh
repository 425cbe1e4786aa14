#!/usr/bin/env bash
# Two Sluices side by side, alternated round after round, so that a machine whose speed wanders
# treats both alike: A and B, each in process and on one shared Redis, after the no-op server, under
# benches/loadgen.rs's closed loop. For two builds (an allocator, a change of code) or two settings
# of one build (a thread count). Prints one loadgen result line per run; a ratio to the no-op of the
# same round is rps over the noop line's rps.
#
# usage: benches/versus.sh [BIN_A [BIN_B]]   (each defaults to this tree's release build)
#   env: A_ENV, B_ENV (space-separated NAME=value for that Sluice, e.g.
#        B_ENV=SLUICE__SERVER__WORKER_THREADS=1), ROUNDS (3), C (calls in flight, 64), SECS (6),
#        KEYS (1000), ADAPTIVE (1: the tier's adaptive threat score on)
set -euo pipefail

# Binaries named relative to where the script was started, before it moves to the repository.
BIN_A=${1:+$(realpath "$1")}
BIN_B=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
C=${C:-64}
SECS=${SECS:-6}
KEYS=${KEYS:-1000}
source benches/lib.sh
BIN_A=${BIN_A:-$SLUICE}
BIN_B=${BIN_B:-$SLUICE}
start_redis

# serve NAME BIN ENV [redis yaml]: starts a Sluice; sets PORT_<NAME> and PID_<NAME>.
serve() {
  local name=$1 bin=$2 env=$3 redis_yaml=${4:-} grpc http assignment assignments=()
  grpc=$(free_port)
  http=$(free_port)
  read -ra assignments <<<"$env"
  for assignment in "${assignments[@]}"; do
    [[ $assignment == [A-Za-z_]*=* ]] || { echo "not NAME=value: $assignment" >&2; exit 2; }
  done
  printf '%s\n' "server: {grpc_addr: \"127.0.0.1:$grpc\", http_addr: \"127.0.0.1:$http\", drain_secs: 0}" \
    "log: {level: warn}" "tiers: [{name: edge_ip, key: [ip], limit: 100000000, window: 1s$TIER_OPTIONS}]" \
    "$redis_yaml" >"$WORK/$name.yaml"
  env "${assignments[@]}" "$bin" serve --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  printf -v "PORT_$name" '%s' "$grpc"
  printf -v "PID_$name" '%s' "$!"
  wait_port "$grpc" "$!" "$WORK/$name.log"
}
REDIS_YAML="redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}"
TIER_OPTIONS=$([[ ${ADAPTIVE:-0} == 1 ]] && echo ", adaptive: true" || true)
serve a_local "$BIN_A" "${A_ENV:-}"
serve b_local "$BIN_B" "${B_ENV:-}"
serve a_redis "$BIN_A" "${A_ENV:-}" "$REDIS_YAML"
serve b_redis "$BIN_B" "${B_ENV:-}" "$REDIS_YAML"
start_noop noop

run() {
  "$LOADGEN" load --target "$1" --addr "127.0.0.1:$2" --pid "$3" -c "$C" --keys "$KEYS" --secs "$SECS" \
    --warmup-secs 1 "${@:4}"
}
echo "== A: $BIN_A ${A_ENV:-}; B: $BIN_B ${B_ENV:-}" >&2
for _ in $(seq "$ROUNDS"); do
  run noop "$NOOP_PORT" "$NOOP_PID"
  for name in a_local b_local; do
    port=PORT_$name pid=PID_$name
    run "${name/_/-}" "${!port}" "${!pid}"
  done
  for name in a_redis b_redis; do
    port=PORT_$name pid=PID_$name
    run "${name/_/-}" "${!port}" "${!pid}" --redis-pid "$REDIS_PID"
  done
done
