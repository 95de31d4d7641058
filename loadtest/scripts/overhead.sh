#!/usr/bin/env bash
# Measures what the gateway adds, in one run beside two baselines: the mock provider called
# direct, and stock nginx as a bare keep-alive pass-through proxy in front of the same mock.
# Prints one JSON line per measurement. Needs nginx on PATH (Debian: apt-get install nginx-light);
# with wrk on PATH too (Debian: apt-get install wrk) every target is also measured by wrk, a
# client that is not ours, on the same requests (lines with "client":"wrk").
#
#   loadtest/scripts/overhead.sh [seconds-per-run]
#
# OVERHEAD_WORKERS (default 1) is both nginx's worker_processes and tollgate's
# server.worker_threads: the proxies get the same number of cores' worth of threads, and the
# load generator and the mock provider, which share the machine, the rest. With
# OVERHEAD_ROLL_INTERVAL_MS the gateways write Parquet that often (parquet.roll_interval_ms),
# to see what background work does to the tail.
#
# With TOLLGATE_BEFORE_BIN naming another build's `tollgate` binary, that gateway runs too, on
# the same config and mock, as the target "tollgate-before": a change measured against the code
# before it, in the same run. It is measured just before this build's gateway, or just after it
# with TOLLGATE_BEFORE_LAST=1 (the slot measured second pays for the first one's background
# work, so compare the mean of both orders).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
workers="${OVERHEAD_WORKERS:-1}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bins -q
bin="$target/release"
work="$(mktemp -d)"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  # The gateways write their last events as they stop: wait before removing their folders.
  wait "${pids[@]}" 2>/dev/null || true
  nginx -p "$work/nginx" -c nginx.conf -s stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port); gateway_port=$(port); nginx_port=$(port); before_port=$(port)

"$bin/tollgate-loadtest" mock-provider --listen "127.0.0.1:$mock_port" > "$work/mock.log" &
pids+=($!)

cp gateway/config/rates.example.toml "$work/rates.toml"
cat > "$work/tollgate.toml" <<TOML
rate_card = "rates.toml"
[server]
listen = "127.0.0.1:$gateway_port"
worker_threads = $workers
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
[[team]]
name = "bench"
[[project]]
name = "bench"
team = "bench"
[[allocation]]
name = "bench"
project = "bench"
TOML
if [ -n "${OVERHEAD_ROLL_INTERVAL_MS:-}" ]; then
  printf '[parquet]\nroll_interval_ms = %s\n' "$OVERHEAD_ROLL_INTERVAL_MS" >> "$work/tollgate.toml"
fi
TOLLGATE_ADMIN_TOKEN=bench-admin "$bin/tollgate" serve --config "$work/tollgate.toml" > "$work/gateway.log" &
pids+=($!)
before="${TOLLGATE_BEFORE_BIN:-}"
if [ -n "$before" ]; then
  mkdir -p "$work/before"
  cp "$work/rates.toml" "$work/before/rates.toml"
  # A build from before server.worker_threads takes its thread count from tokio's variable.
  sed -e "s/127.0.0.1:$gateway_port/127.0.0.1:$before_port/" -e '/^worker_threads/d' \
    "$work/tollgate.toml" > "$work/before/tollgate.toml"
  TOKIO_WORKER_THREADS="$workers" TOLLGATE_ADMIN_TOKEN=bench-admin "$before" serve --config "$work/before/tollgate.toml" > "$work/before.log" &
  pids+=($!)
fi

mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes $workers;
error_log logs/error.log warn;
pid nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_buffer_size 1m;
  client_max_body_size 64m;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  keepalive_requests 10000000;
  upstream mock { server 127.0.0.1:$mock_port; keepalive 256; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -p "$work/nginx" -c nginx.conf

new_key() {
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/healthz" > /dev/null && break
    sleep 0.05
  done
  curl -sf -X POST "http://127.0.0.1:$1/admin/v1/keys" \
    -H "authorization: Bearer bench-admin" -d '{"allocation":"bench","user":"bench"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
key=$(new_key "$gateway_port")
before_key=""
if [ -n "$before" ]; then before_key=$(new_key "$before_port"); fi

run() {
  local name=$1 url=$2 key=$3; shift 3
  printf '{"target":"%s",' "$name"
  "$bin/tollgate-loadtest" bench --url "$url" --key "$key" --duration-s "$seconds" --warmup-s 1 "$@" | cut -c2-
}
for args in "--connections 1" "--connections 32" "--connections 1 --prompt-bytes 400000" "--connections 32 --stream"; do
  # shellcheck disable=SC2086
  run direct "http://127.0.0.1:$mock_port/v1/chat/completions" "$key" $args
  # shellcheck disable=SC2086
  run nginx "http://127.0.0.1:$nginx_port/v1/chat/completions" "$key" $args
  if [ -n "$before" ] && [ -z "${TOLLGATE_BEFORE_LAST:-}" ]; then
    # shellcheck disable=SC2086
    run tollgate-before "http://127.0.0.1:$before_port/v1/chat/completions" "$before_key" $args
  fi
  # shellcheck disable=SC2086
  run tollgate "http://127.0.0.1:$gateway_port/v1/chat/completions" "$key" $args
  if [ -n "$before" ] && [ -n "${TOLLGATE_BEFORE_LAST:-}" ]; then
    # shellcheck disable=SC2086
    run tollgate-before "http://127.0.0.1:$before_port/v1/chat/completions" "$before_key" $args
  fi
done

command -v wrk > /dev/null || { echo "wrk not on PATH: its rows are skipped" >&2; exit 0; }
# The harness's request, as it sends it (compact JSON, the same prompt), for wrk to send.
python3 - "$work" <<'PY'
import json, sys
text = "The quick brown fox jumps over the lazy dog near the riverbank. "
for name, stream in (("plain", False), ("stream", True)):
    request = {"model": "openai/gpt-4o-mini", "max_tokens": 16, "messages": [
        {"role": "system", "content": "You are a load test."},
        {"role": "user", "content": text * -(-1000 // len(text))}]}
    if stream:
        request["stream"] = True
    with open(f"{sys.argv[1]}/{name}.json", "w") as out:
        out.write(json.dumps(request, separators=(",", ":")))
PY
cat > "$work/post.lua" <<'LUA'
local file = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_KEY")
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '"requests_per_s":%.0f,"p50_us":%d,"p99_us":%d,"requests":%d,"errors":%d,"non_2xx":%d}\n',
    summary.requests / (summary.duration / 1e6), latency:percentile(50),
    latency:percentile(99), summary.requests, e.connect + e.read + e.write + e.timeout, e.status))
end
LUA
# CPU time (user and system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_s=$(getconf CLK_TCK)
# Prints a wrk measurement, with the CPU the target's process (the mock direct, nginx's
# worker, the gateway) spent per request: steadier than throughput on a shared machine.
wrk_run() {
  local name=$1 url=$2 key=$3 connections=$4 body=$5 pid=$6
  local start out requests
  printf '{"target":"%s","client":"wrk","connections":%s,"stream":%s,' "$name" "$connections" \
    "$([ "$body" = stream ] && echo true || echo false)"
  start=$(cpu_ticks "$pid")
  out=$(WRK_KEY="$key" WRK_BODY="$work/$body.json" wrk -t1 -c"$connections" -d"${seconds}s" \
    -s "$work/post.lua" "$url" | sed -n '/^"requests_per_s"/p')
  requests=$(sed 's/.*"requests":\([0-9]*\).*/\1/' <<< "$out")
  printf '"cpu_us_per_request":%s,%s\n' \
    "$(( ($(cpu_ticks "$pid") - start) * 1000000 / ticks_per_s / (requests > 0 ? requests : 1) ))" \
    "$out"
}
nginx_worker=$(pgrep -P "$(cat "$work/nginx/nginx.pid")" | head -1)
for load in "1 plain" "32 plain" "32 stream"; do
  # shellcheck disable=SC2086
  set -- $load
  wrk_run direct "http://127.0.0.1:$mock_port/v1/chat/completions" "$key" "$1" "$2" "${pids[0]}"
  wrk_run nginx "http://127.0.0.1:$nginx_port/v1/chat/completions" "$key" "$1" "$2" "$nginx_worker"
  if [ -n "$before" ] && [ -z "${TOLLGATE_BEFORE_LAST:-}" ]; then
    wrk_run tollgate-before "http://127.0.0.1:$before_port/v1/chat/completions" "$before_key" \
      "$1" "$2" "${pids[2]}"
  fi
  wrk_run tollgate "http://127.0.0.1:$gateway_port/v1/chat/completions" "$key" "$1" "$2" "${pids[1]}"
  if [ -n "$before" ] && [ -n "${TOLLGATE_BEFORE_LAST:-}" ]; then
    wrk_run tollgate-before "http://127.0.0.1:$before_port/v1/chat/completions" "$before_key" \
      "$1" "$2" "${pids[2]}"
  fi
done
