# Shared by the benchmark scripts (sourced from the repository root): a work directory and the
# processes started here, both cleaned up on exit; free ports; waiting; CPU ticks; the release build.
# Sets WORK, PIDS, LOADGEN and SLUICE.

WORK=$(mktemp -d -t sluice-bench.XXXXXX)
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops one process started here and forgets it, so that cleanup never signals a reused PID.
stop() {
  local pid=$1 kept=() p
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits (at most 10 s) until something accepts connections on 127.0.0.1:$1. With a process id
# ($2) and its log ($3), gives up as soon as that process has ended, and shows the log's end.
wait_port() {
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then
      echo "the process meant to listen on 127.0.0.1:$1 has ended" >&2
      [[ -n ${3:-} ]] && tail -n 20 "$3" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
  [[ -n ${3:-} ]] && tail -n 20 "$3" >&2
  return 1
}

# utime + stime of a process, in clock ticks (its name holds no spaces: redis-server).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

echo "== building (release): cargo build --release --benches --bin sluice" >&2
LOADGEN=$(cargo build --release --benches --bin sluice --message-format=json-render-diagnostics |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadgen" and m.get("executable"):
        print(m["executable"])')
SLUICE=target/release/sluice
[[ -x $LOADGEN && -x $SLUICE ]] || { echo "build gave no loadgen or sluice binary" >&2; exit 1; }

# Starts benches/loadgen.rs's no-op server on a free port, its log in $WORK/$1.log; sets NOOP_PORT
# and NOOP_PID.
start_noop() {
  NOOP_PORT=$(free_port)
  "$LOADGEN" noop --listen "127.0.0.1:$NOOP_PORT" >"$WORK/$1.log" 2>&1 &
  NOOP_PID=$!
  PIDS+=("$NOOP_PID")
  wait_port "$NOOP_PORT" "$NOOP_PID" "$WORK/$1.log"
}

# Starts a throwaway redis-server on a free port; sets REDIS_PORT and REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  local _
  for _ in $(seq 200); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  redis-cli -p "$REDIS_PORT" ping | grep -q PONG
}

# Starts a Redis Cluster of three masters on free ports; sets CLUSTER_PORTS and CLUSTER_PIDS.
start_cluster() {
  local port dir i _
  CLUSTER_PORTS=()
  CLUSTER_PIDS=()
  for i in 1 2 3; do
    port=$(free_port)
    dir=$WORK/cluster-$port
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
      --logfile "$dir/redis.log" --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" &
    CLUSTER_PIDS+=("$!")
    PIDS+=("$!")
    CLUSTER_PORTS+=("$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 200); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  done
  redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 200); do
    redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q 'cluster_state:ok' && return 0
    sleep 0.05
  done
  echo "the cluster did not settle" >&2
  return 1
}
