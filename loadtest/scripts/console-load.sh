#!/usr/bin/env bash
# The console's overview load time with a month of events: 1,000 allocations with the
# agent-fleet scenario's mix, 8 calls each an hour for 30 days (5.76 million events, in hour
# partitions as the gateway writes them), a release gateway over them, and Chromium timing the
# overview (the budget table for 1,000 allocations, the month's rollup by team and its
# burn-down by day). Then the admin calls alone with curl, and the report over the whole month.
# Needs Debian's chromium and tests/browser's npm packages (npm ci there).
#
#   loadtest/scripts/console-load.sh [allocations] [days] [per_hour]
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -q -p tollgate-gateway --bin tollgate -p tollgate-benches --bin console-data
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
start=$(date +%s)
"$target/release/console-data" "$work" "${1:-1000}" "${2:-30}" "${3:-8}"
echo "{\"generated_s\": $(( $(date +%s) - start )), \"files\": $(find "$work/data" -name '*.parquet' | wc -l), \"bytes\": $(du -sb "$work/data" | cut -f1)}"
cp gateway/config/rates.example.toml "$work/rates.toml"
token="console-load-admin-token"
TOLLGATE_ADMIN_TOKEN="$token" "$target/release/tollgate" serve --config "$work/tollgate.toml" > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" && break; sleep 0.1; done
url="http://$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$work/serve.log" | head -1)"
(cd tests/browser && node overview-load.js "$url" "$token" 5)
month="$(date -u +%Y-%m-01T00:00:00Z)"
last_month="$(date -u -d "$(date -u +%Y-%m-01) -1 month" +%Y-%m-01T00:00:00Z)"
tomorrow="$(date -u -d tomorrow +%Y-%m-%dT00:00:00Z)"
for path in "/admin/v1/allocations" "/admin/v1/report?by=team&from=$month" \
  "/admin/v1/series?by=team&from=$month&to=$tomorrow&step=day" \
  "/admin/v1/report?by=team&from=$last_month&to=$month" "/admin/v1/report?by=allocation"; do
  for run in 1 2 3; do
    curl -s -o /dev/null -H "authorization: Bearer $token" \
      -w "{\"path\": \"$path\", \"run\": $run, \"status\": %{http_code}, \"bytes\": %{size_download}, \"seconds\": %{time_total}}\n" \
      "$url$path"
  done
done
