#!/usr/bin/env bash
# Installs the Debian packages gilgamesh needs to build, test and benchmark.
# Idempotent: asks apt only for what is missing. Needs root (or sudo).
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config ninja-build curl ca-certificates xz-utils dpkg-dev patch
  libboost1.81-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  googletest libgtest-dev libgmock-dev
  # CPython build dependencies (optional modules we want: ssl, zlib, bz2, lzma, sqlite3, ctypes, readline, uuid)
  libssl-dev zlib1g-dev libbz2-dev liblzma-dev libsqlite3-dev libffi-dev libreadline-dev
  libncurses-dev libgdbm-dev uuid-dev
  # tests and load runner (run under /usr/bin/python3, Debian's 3.11)
  python3 python3-pytest python3-matplotlib python3-prometheus-client wrk
  # the black-box suite's files run on two pytest workers at once (tests/CMakeLists.txt)
  python3-pytest-xdist
  # ss: the listening socket's backlog (--backlog's test)
  iproute2
  # a real WSGI framework, served unchanged by the suite (pure Python; see scripts/pure_python_site.py)
  python3-flask
  # peers the load runner compares against (loadtest/run --peers gunicorn,uwsgi,nginx);
  # nginx is also the image test's load balancer
  gunicorn uwsgi uwsgi-plugin-python3 nginx
  # ASGI peers (loadtest/run --asgi: uvicorn with uvloop and httptools, Hypercorn) and the
  # bookworm Starlette they serve; python3-websockets is the WebSocket suite's real client
  python3-uvicorn python3-uvloop python3-httptools python3-hypercorn python3-starlette python3-websockets
  # Kubernetes manifests' test (PyYAML)
  python3-yaml
)
if [[ "${GILGAMESH_WITH_BROWSER:-1}" == 1 ]]; then PKGS+=(chromium); fi
# make fuzz: clang and its libFuzzer/sanitizer runtimes.
if [[ "${GILGAMESH_WITH_FUZZ:-0}" == 1 ]]; then PKGS+=(clang libclang-rt-dev); fi
# Node.js and npm fetch the dashboard's packages (scripts/fetch-web-deps.sh).
# Asked for only when missing, so a Node.js installed another way is kept.
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)
# The image and its test (make image, make image-test): podman/buildah build and run
# it without a daemon, debootstrap makes the base image, nginx (above) fronts two
# replicas, and a wheel from python3-wheel-whl is the third-party package a user app installs.
if [[ "${GILGAMESH_WITH_CONTAINER:-1}" == 1 ]]; then
  PKGS+=(podman buildah debootstrap python3-wheel-whl)
fi
if [[ -n "${GILGAMESH_EXTRA_PKGS:-}" ]]; then read -r -a extra <<<"$GILGAMESH_EXTRA_PKGS"; PKGS+=("${extra[@]}"); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then exit 0; fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# nginx is a tool here (the load runner and the container test run their own
# instances): no system service should start on port 80 because we installed it.
if [[ " ${missing[*]} " == *" nginx "* && ! -e /usr/sbin/policy-rc.d ]]; then
  $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
