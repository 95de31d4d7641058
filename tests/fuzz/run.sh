#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a while (cargo-fuzz on the stable toolchain, no
# sanitizer). Crashes are written to tests/fuzz/artifacts/<target>/ and stop the run.
#
#   tests/fuzz/run.sh [seconds-per-target]   (cargo install cargo-fuzz first)
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
cargo fuzz build -s none
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  cargo fuzz run -s none "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
