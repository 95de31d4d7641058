#!/usr/bin/env bash
# Measures the resource ledger end to end: a generated `sacct --parsable2` file of N finished
# GPU jobs (each with three steps: 4 lines, 2 records) imported into a running release gateway
# with `tollgate import slurm` (whole-file parse, a dry run of every batch, then booking with an
# fsync before each answer), then imported again (every record a duplicate). Prints one JSON
# line per run and the gateway's resident memory holding the record ids.
#
#   loadtest/scripts/import.sh [jobs] [records-per-batch]
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs="${1:-50000}"
batch="${2:-1000}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -q -p tollgate-gateway --bin tollgate
bin="$target/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cp gateway/config/rates.example.toml "$work/rates.toml"
cat > "$work/tollgate.toml" <<TOML
rate_card = "rates.toml"
[server]
listen = "127.0.0.1:$port"
[parquet]
enabled = false
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
for _ in $(seq 100); do grep -q listening "$work/gateway.log" && break; sleep 0.1; done

# Jobs of yesterday (UTC), one second apart from midnight.
day="$(date -u -d yesterday +%F)"
python3 - "$jobs" "$day" > "$work/sacct.txt" <<'PY'
import sys
jobs, day = int(sys.argv[1]), sys.argv[2]
print("JobID|User|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State|Cluster")
for j in range(jobs):
    s = j % 40000
    start = f"{day}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    tres = "billing=16,cpu=16,gres/gpu=8,mem=512G,node=2"
    print(f"{1000000 + j}|u{j % 97}|bench|h100|{tres}|3600|{start}|{start}|COMPLETED|hpc1")
    for step in ("batch", "extern", "0"):
        print(f"{1000000 + j}.{step}||bench||cpu=16,gres/gpu=8,node=2|3600|{start}|{start}|COMPLETED|hpc1")
PY

run() {
  local label="$1" started ended
  started="$(date +%s.%N)"
  TOLLGATE_ADMIN_TOKEN=bench-admin "$bin/tollgate" import slurm "$work/sacct.txt" \
    --url "http://127.0.0.1:$port" --batch-records "$batch" --json > "$work/$label.json"
  ended="$(date +%s.%N)"
  python3 - "$label" "$started" "$ended" "$work/$label.json" <<'PY'
import json, sys
label, started, ended, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
answer = json.load(open(path))
seconds = ended - started
print(json.dumps({"run": label, "records": answer["records"], "booked": answer["booked"],
                  "duplicates": answer["duplicates"], "seconds": round(seconds, 2),
                  "records_per_s": round(answer["records"] / seconds)}))
PY
}
run first
run again
rss_kib="$(awk '/VmRSS/ {print $2}' "/proc/${pids[0]}/status")"
echo "{\"gateway_resident_mib\": $((rss_kib / 1024)), \"record_ids\": $((jobs * 2))}"
