#!/usr/bin/env bash
# Builds the gilgamesh image from docker/Dockerfile with podman, no Docker daemon:
#   localhost/gilgamesh:latest in local storage (GILGAMESH_IMAGE to rename it).
# No registry is reachable from here, so the base image (Debian trixie, slim) is
# made locally with debootstrap when it is missing, from the mirror this system's
# apt sources already use. Layers are cached: a rebuild after a source change
# reuses the CPython layer and rebuilds only gilgamesh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/lib/containers.sh"
source "$ROOT/scripts/lib/debian-mirror.sh"

log() { echo "image: $*" >&2; }

# A minbase trixie root file system, trimmed the way Debian's official -slim
# images are (no docs, man pages or translations, now or from later installs).
make_base() {
  if "${PODMAN[@]}" image exists "$GILGAMESH_BASE_IMAGE"; then return; fi
  command -v debootstrap >/dev/null || { log "debootstrap is missing (make deps installs it)"; exit 1; }
  local mirror security
  mirror="$(debian_mirror)"
  security="$(debian_security_mirror)"
  dir="$(mktemp -d /var/tmp/gilgamesh-base.XXXXXX)"
  trap 'rm -rf "$dir" "$dir.log" "$dir.tar"' EXIT
  log "making $GILGAMESH_BASE_IMAGE with debootstrap from $mirror (about 2 minutes)"
  debootstrap --variant=minbase --components=main trixie "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -30 "$dir.log" >&2; exit 1; }
  rm -f "$dir.log"
  cat >"$dir/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
  # As Debian's official images: no fsync per unpacked file (a build's layer is
  # committed as a whole; on vfs in a VM this halves an apt-get install).
  echo force-unsafe-io >"$dir/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$dir"/usr/share/{man,info,lintian}/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
         "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir/debootstrap"
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -f "$dir/etc/apt/sources.list"
  cat >"$dir/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # mktemp made the directory 0700: as the image's / that would lock out every non-root user.
  chmod 0755 "$dir"
  # Through a file: a failed tar must not leave an empty image behind.
  tar --numeric-owner -C "$dir" -cf "$dir.tar" .
  "${PODMAN[@]}" import -q --change 'CMD ["bash"]' "$dir.tar" "$GILGAMESH_BASE_IMAGE" >/dev/null
  rm -rf "$dir" "$dir.tar"
  trap - EXIT
  log "made $GILGAMESH_BASE_IMAGE"
}

# Stage images (build stage, runtime-stage steps) of this Dockerfile carry this
# label: what `cleanup` may remove.
LABEL_FILTER="label=org.opencontainers.image.title=gilgamesh"
BUILD_CACHE_TAG="${GILGAMESH_IMAGE%:*}-build:cache"

# The host's CPython prefixes (the cache `make build` fills, the same sources and
# patches) as docker/cpython/python-3.13.5/: the image's CPython stage finds them
# ready and compiles nothing. Hard links (the cache and the clone are usually on
# one file system), without the test suites. GILGAMESH_IMAGE_CPYTHON=source
# leaves docker/cpython/ empty: the build stage compiles both, as a plain
# `docker build` does.
CPYTHON_ARGS=()
stage_cpython() {
  local cache="${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}"
  local src="$cache/python-3.13.5" dst="$ROOT/docker/cpython/python-3.13.5" b
  rm -rf "$dst"
  if [[ "${GILGAMESH_IMAGE_CPYTHON:-host}" == source ]]; then
    log "CPython: compiled in the build stage (GILGAMESH_IMAGE_CPYTHON=source)"; return
  fi
  for b in default/bin/python3.13 free-threaded/bin/python3.13t; do
    if [[ ! -x "$src/$b" ]]; then
      log "CPython: no $src/$b (make python builds it): compiled in the build stage"; return
    fi
  done
  mkdir -p "$dst"
  for b in default free-threaded; do
    cp -al "$src/$b" "$dst/$b" 2>/dev/null || { rm -rf "$dst/$b"; cp -a "$src/$b" "$dst/$b"; }
    rm -rf "$dst/$b"/lib/python3.13*/{test,idlelib,tkinter,turtledemo} "$dst/$b/share"
  done
  CPYTHON_ARGS=(--build-arg "GILGAMESH_CACHE=$cache")
  log "CPython: the host's prefixes from $src"
}

build_image() {
  stage_cpython
  local args=(build --isolation chroot --network host --format docker --pull=never --layers --force-rm
              --build-arg "BASE_IMAGE=$GILGAMESH_BASE_IMAGE" "${CPYTHON_ARGS[@]}"
              --build-arg "GILGAMESH_PYTHON_PGO=${GILGAMESH_PYTHON_PGO:-short}" -f "$ROOT/docker/Dockerfile")
  if [[ ! -f "$ROOT/web/node_modules/uplot/dist/uPlot.iife.min.js" ]]; then
    log "web/node_modules is missing: run scripts/fetch-web-deps.sh (make web)"; exit 1
  fi
  log "building $GILGAMESH_IMAGE from docker/Dockerfile"
  # The build stage gets a tag of its own: its last layer has no child image, and
  # untagged it would count as dangling and be pruned with the stale ones, so an
  # unchanged tree would compile gilgamesh again. The second command reuses its layers.
  # (--format docker: OCI image configs cannot carry a HEALTHCHECK.)
  "${PODMAN[@]}" "${args[@]}" --target build -t "$BUILD_CACHE_TAG" "$ROOT"
  "${PODMAN[@]}" "${args[@]}" -t "$GILGAMESH_IMAGE" "$ROOT"
  rm -rf "$ROOT/docker/cpython/python-3.13.5"
  cleanup
  log "$GILGAMESH_IMAGE: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$GILGAMESH_IMAGE" \
      | awk '{printf "%.0f MB", $1 / 1e6}')"
}

# With vfs every layer is a full copy of its file system: a build after a source
# change leaves about a GB of stale, untagged stage images (the previous build
# stage and image). Dangling images of this Dockerfile go; the tagged image, the
# tagged build stage and their parents (the cached toolchain) stay.
cleanup() {
  # Disk hygiene only: a failure must not fail the build. (An interrupted `podman build` leaves
  # its stage containers behind, and prune then refuses the images they use.)
  local why
  if ! why="$("${PODMAN[@]}" image prune -f --filter "$LABEL_FILTER" 2>&1 >/dev/null)"; then
    log "stale images not pruned: ${why:-podman image prune failed} (an interrupted build's containers: podman ps --external; podman rm -f ID)"
  fi
  # Working containers of tests/container that a killed run left behind.
  local name
  for name in $("${BUILDAH[@]}" containers --noheading --format '{{.ContainerName}}' 2>/dev/null); do
    if [[ "$name" == gilgamesh-test-* ]]; then "${BUILDAH[@]}" rm "$name" >/dev/null || true; fi
  done
}

# One image build or test at a time per machine: they share the storage and the tag.
if [[ -z "${GILGAMESH_IMAGE_LOCKED:-}" ]]; then
  exec 8>/var/tmp/gilgamesh-image.lock
  flock 8
fi

case "${1:-build}" in
  base) make_base ;;
  build) make_base; build_image ;;
  cleanup) cleanup ;;
  *) echo "usage: $0 [base|build|cleanup]" >&2; exit 2 ;;
esac
