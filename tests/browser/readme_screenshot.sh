#!/usr/bin/env bash
# Makes docs/img/dashboard.png, the README's screenshot: the real server
# (4 workers), a minute of wrk load in three phases (fib(25) on 2
# connections, the mixed profile on 8, fib(25) on 12), and the browser test's
# driver reading the page for 45 snapshots, then saving it.
#   bash tests/browser/readme_screenshot.sh [OUTPUT.png] [extra gilgamesh args...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$REPO/docs/img/dashboard.png}"
shift || true
BIN="${GILGAMESH_BIN:-$REPO/build/gilgamesh}"
PORT="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"

cd "$REPO"
"$BIN" --port "$PORT" --workers 4 "$@" >/tmp/gilgamesh-screenshot.log 2>&1 &
SERVER=$!
LOAD=""
cleanup() {
  [[ -n "$LOAD" ]] && kill "$LOAD" 2>/dev/null || true
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 300); do  # up to 30 s for the workers
  curl -sf "$URL/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "$URL/readyz" >/dev/null

# wrk's -d paces each phase; the last phase outlasts the driver and is killed.
(exec >/dev/null 2>&1
 curl -s "$URL/fib?n=99"; curl -s "$URL/hello"
 wrk -t1 -c2 -d15s "$URL/fib?n=25"
 wrk -t1 -c8 -d15s -s loadtest/profiles/mixed.lua "$URL"
 exec wrk -t1 -c12 -d120s "$URL/fib?n=25") &
LOAD=$!
node tests/browser/dashboard_driver.js --url "$URL/dashboard" --snapshots 45 --timeout-ms 120000 \
  --screenshot "$OUT" >/dev/null
echo "saved $OUT"
