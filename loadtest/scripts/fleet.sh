#!/usr/bin/env bash
# Runs a scenario against a release gateway on this machine: starts the mock provider and the
# gateway (the demo's teams and projects, the example rate card, Parquet every second), runs
# `tollgate-loadtest run` with the mock as the direct baseline and the gateway's Parquet folder
# for the books, prints the report and stops everything.
#
#   loadtest/scripts/fleet.sh SCENARIO [extra tollgate-loadtest run arguments...]
#   loadtest/scripts/fleet.sh agent-fleet
#   loadtest/scripts/fleet.sh overhead --seconds 10
set -euo pipefail
cd "$(dirname "$0")/../.."
scenario="${1:?scenario name or file}"
shift
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bins -q
bin="$target/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# Thousands of agents hold thousands of connections, each costing the gateway two descriptors.
ulimit -n "$(ulimit -Hn)"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port); gateway_port=$(port)
export TOLLGATE_ADMIN_TOKEN="fleet-$(date +%s%N)"

"$bin/tollgate-loadtest" mock-provider --listen "127.0.0.1:$mock_port" > "$work/mock.log" &
pids+=($!)
cp gateway/config/rates.example.toml "$work/rates.toml"
cat > "$work/tollgate.toml" <<TOML
rate_card = "rates.toml"
[server]
listen = "127.0.0.1:$gateway_port"
[parquet]
dir = "data"
roll_interval_ms = 1000
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:$mock_port"
[[team]]
name = "research"
org = "acme"
[[team]]
name = "platform"
org = "acme"
[[team]]
name = "support"
org = "acme"
[[project]]
name = "research-agents"
team = "research"
[[project]]
name = "platform-ci"
team = "platform"
[[project]]
name = "support-bot"
team = "support"
TOML
"$bin/tollgate" serve --config "$work/tollgate.toml" > "$work/gateway.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q "listening on" "$work/gateway.log" 2>/dev/null && grep -q "listening on" "$work/mock.log" && break
  sleep 0.1
done

"$bin/tollgate-loadtest" run --scenario "$scenario" \
  --gateway "http://127.0.0.1:$gateway_port" --direct "http://127.0.0.1:$mock_port" \
  --parquet "$work/data" --out "${REPORT_DIR:-loadtest-report}" "$@"
