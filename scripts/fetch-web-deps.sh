#!/usr/bin/env bash
# Fetches the dashboard's npm packages, pinned in web/package-lock.json, into
# web/node_modules (git-ignored): uPlot, which the build inlines into the
# binary's GET /dashboard page, and playwright-core, which drives Debian's
# Chromium in the browser test. Idempotent: asks npm only when node_modules
# does not match the lock file.
set -euo pipefail

WEB="$(cd "$(dirname "${BASH_SOURCE[0]}")/../web" && pwd)"
STAMP="$WEB/node_modules/.gilgamesh-lock-sha256"
want="$(sha256sum "$WEB/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$WEB/node_modules/uplot/dist/uPlot.iife.min.js" ]]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch-web-deps: npm is missing; run scripts/install-deps.sh (Debian's nodejs and npm)" >&2
  exit 1
fi
echo "fetch-web-deps: npm ci in web/ (uplot, playwright-core)"
# --ignore-scripts: nothing from the registry runs at install time.
(cd "$WEB" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "$want" >"$STAMP"
