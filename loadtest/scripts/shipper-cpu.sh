#!/usr/bin/env bash
# What shipping to Kafka costs the gateway: the same load (32 connections, 1 KB prompts, about
# 30,000 requests a second on two cores) against a gateway without [kafka] and one shipping to
# a real Apache Kafka broker on this machine, with the gateway's CPU time read from /proc.
# Prints one JSON line per run. Needs Java and the broker's jars (TOLLGATE_KAFKA_LIBS, which
# tests/kafka/fetch.sh prints).
#
#   TOLLGATE_KAFKA_LIBS=... loadtest/scripts/shipper-cpu.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
libs="${TOLLGATE_KAFKA_LIBS:?the Kafka jars (tests/kafka/fetch.sh prints KAFKA_LIBS=...)}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bins -q
bin="$target/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A single-node broker, as the tests start it.
broker=$(port); controller=$(port)
cat > "$work/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$broker,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$broker
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$work/kafka
offsets.topic.replication.factor=1
num.partitions=4
PROPS
uuid=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid | tail -1)
java -cp "$libs/*" kafka.tools.StorageTool format --standalone -t "$uuid" -c "$work/server.properties" > /dev/null
java -Xmx1g -cp "$libs/*" kafka.Kafka "$work/server.properties" > "$work/kafka.log" 2>&1 &
pids+=($!)

mock=$(port)
"$bin/tollgate-loadtest" mock-provider --listen "127.0.0.1:$mock" > "$work/mock.log" &
pids+=($!)
cp gateway/config/rates.example.toml "$work/rates.toml"
for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$broker") 2>/dev/null && break; sleep 0.1; done

measure() {
  local name=$1 extra=$2 gateway
  gateway=$(port)
  mkdir -p "$work/$name"
  cat > "$work/$name/tollgate.toml" <<TOML
rate_card = "../rates.toml"
[server]
listen = "127.0.0.1:$gateway"
[parquet]
enabled = false
$extra
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:$mock/v1"
[[team]]
name = "bench"
[[project]]
name = "bench"
team = "bench"
[[allocation]]
name = "bench"
project = "bench"
TOML
  TOLLGATE_ADMIN_TOKEN=bench-admin "$bin/tollgate" serve --config "$work/$name/tollgate.toml" > "$work/$name/gateway.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$gateway/healthz" > /dev/null && break; sleep 0.05; done
  local key
  key=$(curl -sf -X POST "http://127.0.0.1:$gateway/admin/v1/keys" -H "authorization: Bearer bench-admin" \
    -d '{"allocation":"bench","user":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  local ticks before after figures
  ticks=$(getconf CLK_TCK)
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  figures=$("$bin/tollgate-loadtest" bench --url "http://127.0.0.1:$gateway/v1/chat/completions" --key "$key" \
    --connections 32 --duration-s "$seconds" --warmup-s 0)
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  python3 - "$name" "$figures" "$before" "$after" "$ticks" "$seconds" <<'PY'
import json, sys
name, figures, before, after, ticks, seconds = sys.argv[1], json.loads(sys.argv[2]), *map(float, sys.argv[3:])
cpu = (after - before) / ticks
ok = figures["ok"]
print(json.dumps({"gateway": name, "requests_per_s": figures["requests_per_s"], "p50_us": figures["p50_us"],
                  "p99_us": figures["p99_us"], "gateway_cpu_cores": round(cpu / seconds, 3),
                  "gateway_cpu_us_per_request": round(cpu * 1e6 / ok, 2) if ok else None}))
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
measure plain ""
measure kafka "[kafka]
brokers = \"127.0.0.1:$broker\"
reconcile = false"
measure plain-again ""
measure kafka-again "[kafka]
brokers = \"127.0.0.1:$broker\"
reconcile = false"
