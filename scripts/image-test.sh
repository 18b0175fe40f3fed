#!/usr/bin/env bash
# Builds the image if anything changed (cached layers otherwise), then runs it
# as containers: tests/container (the image, mounted apps, SIGTERM, two replicas
# behind nginx). Needs podman, buildah, debootstrap, nginx: make deps.
# Exits non-zero when the build or any test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One image build or test at a time per machine (image.sh takes the same lock).
exec 8>/var/tmp/gilgamesh-image.lock
flock 8
export GILGAMESH_IMAGE_LOCKED=1
start=$SECONDS
bash "$ROOT/scripts/image.sh"
echo "image-test: image ready after $((SECONDS - start)) s" >&2
cd "$ROOT"
rc=0
/usr/bin/python3 -m pytest -q -p no:cacheprovider -rA tests/container "$@" || rc=$?
# Working containers a killed test run may have left.
bash "$ROOT/scripts/image.sh" cleanup
echo "image-test: done after $((SECONDS - start)) s (pytest exit $rc)" >&2
exit "$rc"
