#!/usr/bin/env bash
# Fetches the Apache Kafka broker's jars from Maven Central into a cached folder (once per
# version) and prints `KAFKA_LIBS=<folder>`.
#
#   tests/kafka/fetch.sh [CACHE_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
version="$(sed -n 's:.*<version>\(4[^<]*\)</version>.*:\1:p' "$here/pom.xml" | head -1)"
libs="$cache/kafka-$version/libs"
if [ ! -f "$libs/.complete" ]; then
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  touch "$libs/.complete"
fi
echo "KAFKA_LIBS=$libs"
