#!/usr/bin/env bash
# An ASGI app's file answer two ways, on each strategy: the app reads the file itself and
# sends it as 64 KiB `http.response.body` messages (what a framework without the extension
# does), or it sends `http.response.pathsend` and the server sends the file (docs/asgi.md).
# The same raw ASGI app, 2 workers, a file of SIZE bytes (default 1 MiB, the app's own
# Content-Length); wrk -t2 -c8, 1 s warm-up, DURATION s measured (default 5); the server's
# CPU time over its process tree (worker processes included) per response.
#
#   loadtest/tools/pathsend.sh [BINARY]    default build/gilgamesh;
#                                          STRATEGIES="subinterpreters processes", ROUNDS=2
#
# Loopback only; each server is stopped before the next starts.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BINARY="${1:-$REPO/build/gilgamesh}"
DURATION="${DURATION:-5}"
SIZE="${SIZE:-1048576}"
ROUNDS="${ROUNDS:-2}"
STRATEGIES="${STRATEGIES:-subinterpreters processes}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

head -c "$SIZE" /dev/urandom > "$WORK/blob.bin"
cat > "$WORK/pathsend_app.py" <<EOF
import os

PATH = "$WORK/blob.bin"
SIZE = os.path.getsize(PATH)
HEAD = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % SIZE)]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEAD})
    if scope["path"] == "/pathsend":
        await send({"type": "http.response.pathsend", "path": PATH})
        return
    with open(PATH, "rb") as f:  # /blocks: as a framework that reads the file itself
        left = SIZE
        while True:
            block = f.read(min(65536, left))
            left -= len(block)
            await send({"type": "http.response.body", "body": block, "more_body": left > 0 and bool(block)})
            if left <= 0 or not block:
                break
EOF

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
tree_cpu() {  # PID: clock ticks of it, its children and theirs
  local total=0 p
  for p in "$1" $(pgrep -P "$1") $(for c in $(pgrep -P "$1"); do pgrep -P "$c"; done); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

printf "%-16s %-10s %12s %16s\n" strategy path req/s "CPU us/response"
for _ in $(seq "$ROUNDS"); do
  for strategy in $STRATEGIES; do
    for path in /blocks /pathsend; do
      port=$(free_port)
      (cd "$WORK" && exec "$BINARY" --asgi pathsend_app:app --strategy "$strategy" --workers 2 \
        --port "$port" --no-dashboard > "$WORK/server.log" 2>&1) &
      pid=$!
      served=""
      for _ in $(seq 200); do
        served=$(curl -sf "http://127.0.0.1:$port$path" | cmp - "$WORK/blob.bin" 2>&1 && echo yes) && break
        sleep 0.05
      done
      if [[ "$served" != yes ]]; then
        echo "pathsend: $strategy did not serve the file at $path on port $port" >&2
        tail -20 "$WORK/server.log" >&2
        exit 1
      fi
      wrk -t2 -c8 -d1s "http://127.0.0.1:$port$path" > /dev/null
      before=$(tree_cpu "$pid")
      wrk -t2 -c8 -d"${DURATION}s" "http://127.0.0.1:$port$path" > "$WORK/wrk.out"
      after=$(tree_cpu "$pid")
      ticks=$(getconf CLK_TCK)
      awk -v s="$strategy" -v p="$path" -v d="$DURATION" -v t=$((after - before)) -v hz="$ticks" '
        /requests in/ {n = $1}
        END {printf "%-16s %-10s %12.0f %16.0f\n", s, p, n / d, n ? t * 1e6 / hz / n : 0}' "$WORK/wrk.out"
      kill "$pid"
      wait "$pid" 2>/dev/null || true
    done
  done
done
