#!/usr/bin/env bash
# Builds the image if anything changed (cached layers otherwise), then runs it
# as containers: tests/container (the image, a mounted app, SIGTERM, two
# replicas behind nginx). Needs podman, buildah, debootstrap, nginx: make deps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$SECONDS
bash "$ROOT/scripts/image.sh"
echo "image-test: image ready after $((SECONDS - start)) s" >&2
cd "$ROOT"
/usr/bin/python3 -m pytest -q -p no:cacheprovider -rA tests/container "$@"
echo "image-test: done after $((SECONDS - start)) s" >&2
