#!/usr/bin/env bash
# Sluice's decision function alone in Redis, as Redis itself times it (INFO commandstats: the time
# inside FCALL, without the network): CALLS calls of REQUESTS sliding-window requests each, on
# distinct keys out of KEYS, one request a check. The libraries of several revisions can be loaded
# side by side in one redis-server and alternated, ROUNDS times.
#
# usage: benches/function.sh [REV...]     (no REV: the working tree; a REV is a git revision from
#                                          5817827 on, when one call began to carry many requests;
#                                          "." the working tree)
#   env: REQUESTS (20), CALLS (2000), KEYS (1000), ROUNDS (3), ADAPTIVE (0; 1: each check is also
#        adaptive, with its attempts and failures counters), BASELINE (0; 1: each check keeps a
#        behavioural baseline); both for revisions with packed numbers only
# prints, per round and library: µs per call and µs per decision.
set -euo pipefail

cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20}
CALLS=${CALLS:-2000}
KEYS=${KEYS:-1000}
ROUNDS=${ROUNDS:-3}
ADAPTIVE=${ADAPTIVE:-0}
BASELINE=${BASELINE:-0}
[[ $# -gt 0 ]] || set -- .

WORK=$(mktemp -d -t sluice-function.XXXXXX)
REDIS_PID=
cleanup() {
  if [[ -n $REDIS_PID ]]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A file of revision $1 ("." for the working tree).
show() { if [[ $1 == . ]]; then cat "$2"; else git show "$1:$2"; fi; }

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 200); do redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done

# Each revision's library as src/store/script.rs builds it (the files its BODY lists, joined by
# newlines), named after the revision; whether it takes packed numbers (lua/protocol.lua has
# CHECK_FORMAT) or one decimal argument per number.
LABELS=()
for rev in "$@"; do
  label=$([[ $rev == . ]] && echo tree || git rev-parse --short=8 "$rev")
  mapfile -t files < <(show "$rev" src/store/script.rs | sed -n '/^pub const BODY/,/^);/p' | grep -o 'lua/[a-z_]*\.lua')
  {
    printf '#!lua name=bench_%s\nlocal VERSION = '"'"'%s'"'"'\n' "$label" "$label"
    for f in "${files[@]}"; do show "$rev" "$f"; printf '\n'; done
  } >"$WORK/$label.lua"
  redis-cli -p "$PORT" -x FUNCTION LOAD <"$WORK/$label.lua" >/dev/null
  form=$(show "$rev" lua/protocol.lua | grep -q CHECK_FORMAT && echo packed || echo decimal)
  LABELS+=("$label:$form")
done

for round in $(seq "$ROUNDS"); do
  for entry in "${LABELS[@]}"; do
    label=${entry%%:*}
    form=${entry#*:}
    redis-cli -p "$PORT" CONFIG RESETSTAT >/dev/null
    python3 - "$PORT" "sluice_decide_$label" "$form" "$REQUESTS" "$CALLS" "$KEYS" "$ADAPTIVE" "$BASELINE" <<'EOF'
import socket, struct, sys
port, function, form = int(sys.argv[1]), sys.argv[2], sys.argv[3]
requests, calls, keys, adaptive, baseline = (int(v) for v in sys.argv[4:9])
# One request: commit, 1 check, 0 reputation keys; the check: sliding window, a limit no run
# reaches, 1 s window, cost 1, not shadow, no quota mode, counts admitted requests, no options
# (or, with ADAPTIVE, adaptive: no client factors, weights 30/30/40, burst at 3 times the limit,
# failed logins from 5, a score of 100 halving the limit; with BASELINE, a baseline of sensitivity
# 150% and cap 300%).
numbers = [1, 1, 0, 1, 100_000_000, 1000, 1, 0, 0, 1, adaptive, 0, baseline]
suffixes = ["sw"]
if (adaptive or baseline) and form != "packed":
    raise SystemExit(f"{function}: ADAPTIVE and BASELINE need a revision with packed numbers")
if adaptive:
    numbers += [0, 0, 30, 30, 40, 3, 5, 50]
    suffixes += ["att", "fail"]
if baseline:
    numbers += [150, 300]
    suffixes += ["base"]
packed = struct.pack("<%dQ" % len(numbers), *numbers)
def bulk(value):
    value = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)
conn = socket.create_connection(("127.0.0.1", port))
replies = conn.makefile("rb")
def skip_reply():
    line = replies.readline()
    kind = line[:1]
    if kind == b"-":
        raise SystemExit(f"{function}: {line.decode().strip()}")
    if kind == b"*":
        for _ in range(int(line[1:])):
            skip_reply()
    elif kind == b"$" and int(line[1:]) >= 0:
        replies.read(int(line[1:]) + 2)
for call in range(calls):
    names = [f"bench:{{edge_ip:{(call * requests + i) % keys}}}:{s}" for i in range(requests) for s in suffixes]
    args = [packed] * requests if form == "packed" else numbers * requests
    parts = ["FCALL", function, len(names), *names, 0, requests, *args]
    conn.sendall(b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts))
    skip_reply()
EOF
    redis-cli -p "$PORT" INFO commandstats | tr -d '\r' | awk -F'[=,:]' -v l="$label" -v r="$round" -v n="$REQUESTS" '
      /^cmdstat_fcall:/ { printf "round %d %-10s %8.1f µs per call, %6.2f µs per decision\n", r, l, $7, $7 / n }'
  done
done
