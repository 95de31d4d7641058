#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a while (cargo-fuzz on the stable toolchain, no
# sanitizer), starting from the committed seeds (seeds/<target>) and the working corpus
# (corpus/<target>, kept between runs, not committed). Prints one table row per target:
# executions, coverage (edges and features), corpus size and findings. A crash is written
# to artifacts/<target>/, the other targets still run, and the script exits 1.
#
#   tests/fuzz/run.sh [seconds-per-target] [target...]   (cargo install cargo-fuzz first)
#
# FUZZ_BUILD=--dev builds without optimisation: quicker to build, slower to run (what a
# brief run in the test suite wants). FUZZ_TARGET_DIR puts the build outside the tree.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
build=(-s none ${FUZZ_BUILD:-})
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  build+=(--target-dir "$FUZZ_TARGET_DIR")
fi
cargo fuzz build "${build[@]}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=0
printf '| target | seconds | executions | edges | features | corpus | findings |\n'
printf '|---|---|---|---|---|---|---|\n'
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "seeds/$target"
  status=0
  cargo fuzz run "${build[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    >"$logs/$target" 2>&1 || status=$?
  last="$(grep -E '^#[0-9]+' "$logs/$target" | tail -1 || true)"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target")"
  edges="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  features="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  corpus="$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")"
  findings=0
  if [ "$status" -ne 0 ]; then
    findings=1
    failed=1
    tail -40 "$logs/$target" >&2
  fi
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' \
    "$target" "$seconds" "${runs:-?}" "${edges:-?}" "${features:-?}" "${corpus:-?}" "$findings"
done
exit "$failed"
