#!/usr/bin/env bash
# Fetches gunicorn's HTTP request-parser vectors (tests/requests/{valid,invalid}/*.http with
# the .py file that says what each must parse to) from Debian trixie's gunicorn source
# package, for tests/blackbox/test_parser_vectors.py. No PyPI, no system change: a private
# apt configuration (scripts/lib/trixie-apt.sh) downloads the upstream tarball, which apt
# verifies against the signed Sources index; only tests/requests is unpacked.
#
#   bash scripts/fetch-parser-vectors.sh                 fetches (once), prints the folder
#   bash scripts/fetch-parser-vectors.sh --print-path    prints the folder; exits 1 if not fetched
#
# The folder: ${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}/parser-vectors/requests
# Concurrent runs wait for each other (flock).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/trixie-apt.sh"

CACHE="${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}"
TOP="$CACHE/parser-vectors"
VECTORS="$TOP/requests"

case "${1:-}" in
  --print-path) [[ -f "$VECTORS/fetched" ]] || exit 1; echo "$VECTORS"; exit 0 ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
  "") ;;
  *) echo "fetch-parser-vectors: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
[[ -f "$VECTORS/fetched" ]] && { echo "$VECTORS"; exit 0; }

mkdir -p "$TOP"
exec 9>"$TOP/lock"
flock 9
[[ -f "$VECTORS/fetched" ]] && { echo "$VECTORS"; exit 0; }  # another run fetched them meanwhile

trixie_apt_init "$TOP/apt" deb-src
src="$(mktemp -d "$TOP/src.XXXXXX")"
trap 'rm -rf "$src"' EXIT
echo "fetch-parser-vectors: fetching gunicorn's source package from $(debian_mirror) (trixie)" >&2
trixie_apt_source gunicorn "$src" 'gunicorn_*.orig.tar.gz'
tarball="$(compgen -G "$src/gunicorn_*.orig.tar.gz" | head -n1)"
rm -rf "$VECTORS" "$TOP/unpack"
mkdir -p "$TOP/unpack"
tar -xzf "$tarball" -C "$TOP/unpack" --wildcards '*/tests/requests/*'
mv "$TOP"/unpack/*/tests/requests "$VECTORS"
rm -rf "$TOP/unpack"
basename "$tarball" >"$VECTORS/fetched"
echo "fetch-parser-vectors: $(find "$VECTORS" -name '*.http' | wc -l) vectors from $(basename "$tarball")" >&2
echo "$VECTORS"
