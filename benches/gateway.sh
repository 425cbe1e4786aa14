#!/usr/bin/env bash
# Forward-auth through NGINX: NGINX -> Sluice's /v1/forward-auth (keep-alive) -> Redis, then the
# application, next to NGINX -> the application with no auth, in the same run; then Sluice's gRPC
# Check at the same concurrency, for its CPU per decision over gRPC against HTTP. The application
# is an NGINX server block answering 200 at once. One tier keyed by [ip] with a limit no run comes
# near, so every request is a counted, admitted decision. wrk (Debian's package) drives HTTP;
# benches/loadgen.rs drives gRPC. Everything listens on 127.0.0.1 on free ports; every process
# started here is stopped on exit.
#
# usage: benches/gateway.sh        env: SECS (8), C (64), RESULTS (target/gateway-results.txt)
set -euo pipefail

cd "$(dirname "$0")/.."
SECS=${SECS:-8}
C=${C:-64}
RESULTS=${RESULTS:-target/gateway-results.txt}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx" >&2; exit 1; }
source benches/lib.sh
mkdir -p "$(dirname "$RESULTS")"
echo "== $(date -u +%FT%TZ) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS" >&2

start_redis
GRPC=$(free_port); HTTP=$(free_port); API=$(free_port); AUTHED=$(free_port); BARE=$(free_port); APP=$(free_port)
cat >"$WORK/sluice.yaml" <<YAML
server:
  grpc_addr: 127.0.0.1:$GRPC
  http_addr: 127.0.0.1:$HTTP
log:
  level: warn
redis:
  url: redis://127.0.0.1:$REDIS_PORT
http_api:
  addr: 127.0.0.1:$API
  trusted_proxies: [127.0.0.1/32]
  deny_status: 403
tiers:
  - name: edge_ip
    key: [ip]
    limit: 100000000
    window: 1s
YAML
"$SLUICE" serve --config "$WORK/sluice.yaml" >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
PIDS+=("$SLUICE_PID")
wait_port "$API"

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path t_body; proxy_temp_path t_proxy; fastcgi_temp_path t_fcgi;
  uwsgi_temp_path t_uwsgi; scgi_temp_path t_scgi;
  upstream sluice { server 127.0.0.1:$API; keepalive 64; }
  upstream app { server 127.0.0.1:$APP; keepalive 64; }
  server { listen 127.0.0.1:$APP; location / { return 200 "upstream"; } }
  server {
    listen 127.0.0.1:$BARE;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$AUTHED;
    location / {
      auth_request /_sluice;
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
    }
    location = /_sluice {
      internal;
      proxy_pass http://sluice/v1/forward-auth;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_set_header X-Forwarded-For \$http_x_client;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Original-URI \$request_uri;
    }
  }
}
CONF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e stderr -g "daemon off; pid $WORK/nginx/nginx.pid;" \
  2>"$WORK/nginx.log" &
PIDS+=("$!")
wait_port "$AUTHED"
NGINX_PIDS=$(pgrep -f "nginx: (master|worker) process" -d ' ' || true)

# 1000 client addresses, spread over the keys as benches/run.sh spreads its 1000 keys (the
# trusted NGINX passes each on as X-Forwarded-For).
cat >"$WORK/keys.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/x", { ["X-Client"] = "10.0." .. (n % 4) .. "." .. (n % 250) })
end
LUA

ticks() { local sum=0 p; for p in "$@"; do sum=$((sum + $(cpu_ticks "$p"))); done; echo "$sum"; }
HZ=$(getconf CLK_TCK)
run() {
  local name=$1 port=$2 before_s before_r before_n out rps p99 n
  wrk -t1 -c"$C" -d1s -s "$WORK/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  before_s=$(ticks "$SLUICE_PID"); before_r=$(ticks "$REDIS_PID"); before_n=$(ticks $NGINX_PIDS)
  out=$(wrk -t1 -c"$C" -d"${SECS}s" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$port/")
  rps=$(awk '/^Requests\/sec/ { print int($2) }' <<<"$out")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
  python3 - "$name" "$rps" "$p99" "$n" "${non2xx:-0}" "$HZ" \
    "$before_s" "$(ticks "$SLUICE_PID")" "$before_r" "$(ticks "$REDIS_PID")" "$before_n" "$(ticks $NGINX_PIDS)" <<'PY' | tee -a "$RESULTS"
import sys
name, rps, p99, n, non2xx = sys.argv[1:6]
hz = int(sys.argv[6]); s0, s1, r0, r1, g0, g1 = map(int, sys.argv[7:13]); n = int(n)
us = lambda a, b: f"{(b - a) * 1e6 / hz / n:.1f}"
print(f"target={name} rps={rps} p99={p99} requests={n} non2xx={non2xx} "
      f"sluice_cpu_us_per_request={us(s0, s1)} redis_cpu_us_per_request={us(r0, r1)} nginx_cpu_us_per_request={us(g0, g1)}")
PY
}
run nginx-bare "$BARE"
run nginx-forward-auth "$AUTHED"
run nginx-bare "$BARE"
run nginx-forward-auth "$AUTHED"
# Sluice's gRPC Check at the same concurrency and keys, for its CPU per decision over gRPC.
"$LOADGEN" load --target sluice-grpc --addr "127.0.0.1:$GRPC" --pid "$SLUICE_PID" --redis-pid "$REDIS_PID" \
  -c "$C" --keys 1000 --secs "$SECS" --warmup-secs 1 | tee -a "$RESULTS"
