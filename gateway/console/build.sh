#!/usr/bin/env bash
# Builds the console into dist/ (or the folder given) from src/ and the npm packages pinned
# by package-lock.json: one script, one style sheet, the page, and the licences of what is
# bundled. dist/ is committed, so the gateway builds with cargo alone; tests/run-all builds it
# again and fails if the committed files differ.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-dist}"
npm ci --no-audit --no-fund --silent
mkdir -p "$out"
node_modules/.bin/esbuild src/main.js --bundle --minify --format=iife --target=es2020 \
  --legal-comments=none --charset=utf8 --log-level=warning --outfile="$out/app.js"
# The style sheets the script imports (uPlot's, then the console's) become app.css beside it.
cp src/index.html "$out/index.html"
{
  printf 'The tollgate console bundles this software.\n\n'
  printf '== uPlot %s (https://github.com/leeoniya/uPlot) ==\n\n' "$(node -p 'require("./node_modules/uplot/package.json").version')"
  cat node_modules/uplot/LICENSE
} > "$out/licenses.txt"
