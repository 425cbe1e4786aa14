#!/usr/bin/env bash
# What sharing the cores costs a server that does nothing: benches/loadgen.rs's no-op server under
# the closed-loop load, alone and beside a process that keeps part of one core busy, as Redis does
# beside Sluice on a small machine. Each line gives decisions/s, the ratio to the no-op alone in the
# same round, and the share of a core the busy process took (measured from /proc).
#
# usage: benches/share.sh
#   env: SHARES (duty cycles of the busy process, "0.25 0.5"), ROUNDS (2), C (calls in flight, 64),
#        SECS (6), KEYS (1000)
set -euo pipefail

cd "$(dirname "$0")/.."
SHARES=${SHARES:-"0.25 0.5"}
ROUNDS=${ROUNDS:-2}
C=${C:-64}
SECS=${SECS:-6}
KEYS=${KEYS:-1000}
for share in $SHARES; do
  awk -v s="$share" 'BEGIN { exit !(s + 0 > 0 && s + 0 < 1) }' ||
    { echo "SHARES: $share is not between 0 and 1" >&2; exit 2; }
done
source benches/lib.sh
TICKS=$(getconf CLK_TCK)

start_noop noop

# Decisions/s of one run; fails unless the load generator printed a number above 0.
rps() {
  local line n
  line=$("$LOADGEN" load --target "$1" --addr "127.0.0.1:$NOOP_PORT" --pid "$NOOP_PID" -c "$C" \
    --keys "$KEYS" --secs "$SECS" --warmup-secs 1)
  n=$(sed -nE 's/.* rps=([0-9]+) .*/\1/p' <<<"$line")
  [[ ${n:-0} -gt 0 ]] || { echo "no decisions/s in: $line" >&2; return 1; }
  echo "$n"
}

for round in $(seq "$ROUNDS"); do
  alone=$(rps noop)
  echo "round $round: no-op alone $alone decisions/s"
  for share in $SHARES; do
    # Busy for `share` of every 2 ms, asleep for the rest.
    python3 -c "
import time
busy, period = $share * 0.002, 0.002
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < busy: pass
    time.sleep(period - busy)" &
    busy=$!
    PIDS+=("$busy")
    before=$(cpu_ticks "$busy")
    start=$(date +%s.%N)
    beside=$(rps "noop-beside-$share")
    took=$(echo "$(cpu_ticks "$busy") $before $(date +%s.%N) $start $TICKS" |
      awk '{ printf "%.2f", ($1 - $2) / $5 / ($3 - $4) }')
    stop "$busy"
    echo "round $round: beside a process busy $share of each 2 ms (took $took of a core):" \
      "$beside decisions/s, $(awk -v a="$beside" -v b="$alone" 'BEGIN { printf "%.2f", a / b }') of alone"
  done
done
