#!/usr/bin/env bash
# Runs the reliability suite's fault tests one at a time and prints RELIABILITY.md's table
# from the figures each reports (tollgate_tests::fault::Figures). The small file systems need
# root; Kafka's jars are fetched once (tests/kafka/fetch.sh).
#
#   tests/reliability.sh > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
figures="$(mktemp)"
trap 'rm -f "$figures"' EXIT
kafka_out="$(tests/kafka/fetch.sh "${XDG_CACHE_HOME:-$HOME/.cache}/tollgate")"
TOLLGATE_KAFKA_LIBS="$(sed -n 's/^KAFKA_LIBS=//p' <<<"$kafka_out")"
export TOLLGATE_KAFKA_LIBS
llama_out="$(tests/llama/build.sh "${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/llama")"
TOLLGATE_LLAMA_SERVER="$(sed -n 's/^LLAMA_SERVER=//p' <<<"$llama_out")"
TOLLGATE_LLAMA_MODEL="$(sed -n 's/^LLAMA_MODEL=//p' <<<"$llama_out")"
export TOLLGATE_LLAMA_SERVER TOLLGATE_LLAMA_MODEL
export TOLLGATE_RELIABILITY_OUT="$figures"
cargo test --locked -p tollgate-tests \
  --test faults --test robustness --test kafka --test kafka_sink --test routing --test llama \
  --no-fail-fast -- --test-threads 1 >&2
python3 - "$figures" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| fault | calls answered | events lost | events doubled | over the limit (nanos) | recovered in | what else was seen |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    recover = f"{r['recover_ms']} ms" if r["recover_ms"] is not None else "n/a"
    print(f"| {r['fault']} | {r['answered']} | {r['lost']} | {r['doubled']} | {r['over_limit_nanos']} | {recover} | {r['note']} |")
PY
