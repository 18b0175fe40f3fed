#!/usr/bin/env bash
# The same two static files served four ways, 2 workers each, one after the other on this
# machine: gilgamesh --static-path-mount (the I/O threads, no Python), whitenoise 6 under
# gunicorn's gthread workers (what a Django app without nginx uses), Starlette's StaticFiles
# under uvicorn (what a FastAPI app mounts), and nginx (sendfile; the ceiling). For each, wrk
# -t2 -c16 on a 21 KiB stylesheet and a 1 MiB file, 2 s warm-up, DURATION s measured.
#
#   loadtest/tools/static_files.sh [BINARY]      default build/gilgamesh; DURATION=5
#
# Peers are Debian bookworm's (gunicorn, uvicorn, Starlette, nginx: scripts/install-deps.sh);
# whitenoise is not installed by the project: python3-whitenoise is downloaded and unpacked
# with dpkg-deb into a temporary folder (apt-get download, no system change). Loopback only;
# every server is stopped before the next starts.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BINARY="${1:-$REPO/build/gilgamesh}"
DURATION="${DURATION:-5}"
WORK="$(mktemp -d)"
chmod 755 "$WORK"  # nginx's workers run as another user
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

mkdir -p "$WORK/site/css" "$WORK/wn"
head -c 21310 /dev/urandom | base64 -w 120 | head -c 21310 > "$WORK/site/css/base.css"
head -c 1048576 /dev/urandom > "$WORK/site/1m.bin"
(cd "$WORK/wn" && apt-get download python3-whitenoise >/dev/null 2>&1 && dpkg-deb -x python3-whitenoise_*.deb root) ||
  { echo "static_files: could not download python3-whitenoise" >&2; exit 1; }
WHITENOISE="$WORK/wn/root/usr/lib/python3/dist-packages"
cat > "$WORK/wn_app.py" <<EOF
from whitenoise import WhiteNoise

def app_without_files(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]

app = WhiteNoise(app_without_files, root="$WORK/site", prefix="static/", max_age=86400)
EOF
cat > "$WORK/st_app.py" <<EOF
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

app = Starlette(routes=[Mount("/static", StaticFiles(directory="$WORK/site"))])
EOF
cat > "$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  include /etc/nginx/mime.types;
  sendfile on;
  server {
    listen 127.0.0.1:PORT;
    location /static/ { alias $WORK/site/; expires 1d; }
  }
}
EOF

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

measure() {  # NAME PORT PID
  local name=$1 port=$2 pid=$3
  local served=""
  for _ in $(seq 200); do
    served=$(curl -sf "http://127.0.0.1:$port/static/css/base.css" | cmp - "$WORK/site/css/base.css" 2>&1 && echo yes) && break
    sleep 0.05
  done
  if [[ "$served" != yes ]]; then
    echo "static_files: $name did not serve the stylesheet on port $port" >&2
    exit 1
  fi
  for path in /static/css/base.css /static/1m.bin; do
    wrk -t2 -c16 -d2s "http://127.0.0.1:$port$path" > /dev/null
    wrk -t2 -c16 -d"${DURATION}s" --latency "http://127.0.0.1:$port$path" |
      awk -v name="$name" -v path="$path" '
        /Requests\/sec/ {rate = $2} /Transfer\/sec/ {transfer = $2} /^ +50%/ {p50 = $2} /^ +99%/ {p99 = $2}
        END {printf "%-22s %-22s %12s req/s %10s/s  p50 %-9s p99 %s\n", name, path, rate, transfer, p50, p99}'
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

port=$(free_port)
"$BINARY" --app handlers.demo --workers 2 --port "$port" --static-path-mount "$WORK/site" --no-dashboard \
  --log-level warn > "$WORK/gilgamesh.log" 2>&1 &
measure "gilgamesh" "$port" $!

port=$(free_port)
(cd "$WORK" && PYTHONPATH="$WHITENOISE" exec /usr/bin/python3 -m gunicorn -w 2 -k gthread --threads 4 \
  -b "127.0.0.1:$port" --log-level warning wn_app:app) > "$WORK/gunicorn.log" 2>&1 &
measure "whitenoise, gunicorn" "$port" $!

port=$(free_port)
(cd "$WORK" && exec /usr/bin/python3 -m uvicorn --workers 2 --port "$port" --log-level warning --no-access-log \
  st_app:app) > "$WORK/uvicorn.log" 2>&1 &
measure "Starlette, uvicorn" "$port" $!

port=$(free_port)
sed -i "s/PORT/$port/" "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -g 'daemon off;' > "$WORK/nginx.log" 2>&1 &
measure "nginx" "$port" $!
