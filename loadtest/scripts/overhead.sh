#!/usr/bin/env bash
# Measures what the gateway adds, in one run beside two baselines: the mock provider called
# direct, and stock nginx as a bare keep-alive pass-through proxy in front of the same mock.
# Prints one JSON line per measurement. Needs nginx on PATH (Debian: apt-get install nginx-light).
#
#   loadtest/scripts/overhead.sh [seconds-per-run]
#
# With TOLLGATE_BEFORE_BIN naming another build's `tollgate` binary, that gateway runs too, on
# the same config and mock, as the target "tollgate-before": a change measured against the code
# before it, in the same run. It is measured just before this build's gateway, or just after it
# with TOLLGATE_BEFORE_LAST=1 (the slot measured second pays for the first one's background
# work, so compare the mean of both orders).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
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
TOLLGATE_ADMIN_TOKEN=bench-admin "$bin/tollgate" serve --config "$work/tollgate.toml" > "$work/gateway.log" &
pids+=($!)
before="${TOLLGATE_BEFORE_BIN:-}"
if [ -n "$before" ]; then
  mkdir -p "$work/before"
  cp "$work/rates.toml" "$work/before/rates.toml"
  sed "s/127.0.0.1:$gateway_port/127.0.0.1:$before_port/" "$work/tollgate.toml" > "$work/before/tollgate.toml"
  TOLLGATE_ADMIN_TOKEN=bench-admin "$before" serve --config "$work/before/tollgate.toml" > "$work/before.log" &
  pids+=($!)
fi

mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
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
