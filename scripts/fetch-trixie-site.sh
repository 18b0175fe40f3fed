#!/usr/bin/env bash
# Fetches Debian trixie's python3-* packages, built for Python 3.13 (the Python
# gilgamesh embeds), C extensions included, and unpacks them into a site folder
# in the cache, to pass with --pythonpath. No PyPI, no system change: a private
# apt configuration (scripts/lib/trixie-apt.sh) downloads the .deb files and
# `dpkg-deb -x` unpacks them; nothing is installed.
#
#   bash scripts/fetch-trixie-site.sh [python3-flask python3-requests ...]
#   bash scripts/fetch-trixie-site.sh --print-path [PACKAGE ...]
#
# With no package named, the black-box suite's list (DEFAULT_PACKAGES below).
# The named packages come with every python3-* package they depend on (Python,
# libpython and C libraries are the system's: an extension that needs a library
# this system lacks fails to import, naming it). Prints the folder to pass with
# --pythonpath:
#   ${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}/trixie-site/root/usr/lib/python3/dist-packages
# The site only grows: packages fetched before stay (remove the trixie-site folder
# to start afresh, e.g. after a trixie point release). A run whose packages are all
# there already does nothing else (no network); the package index is updated at
# most once a day. Concurrent runs wait for each other (flock).
# --print-path prints the folder and exits 0 if the packages named (or the
# default list) are there, 1 if not, without fetching anything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/trixie-apt.sh"

DEFAULT_PACKAGES=(
  python3-flask python3-requests python3-urllib3 python3-charset-normalizer
  python3-simplejson python3-zstandard python3-argon2 python3-cryptography
  python3-msgspec python3-ujson python3-orjson python3-lxml python3-pil python3-regex
  python3-brotli python3-bcrypt python3-uvloop python3-psutil python3-xxhash python3-lz4
  python3-ruamel.yaml python3-rpds-py python3-yaml python3-msgpack python3-sqlalchemy
  python3-greenlet python3-multidict python3-yarl python3-frozenlist python3-websockets
  python3-wrapt python3-cbor2 python3-propcache python3-django python3-starlette
  python3-anyio python3-markupsafe python3-pydantic python3-pydantic-core python3-cffi
  python3-fastapi python3-quart python3-falcon python3-bottle python3-pyramid
)

CACHE="${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}"
TOP="$CACHE/trixie-site"
ROOT="$TOP/root"
SITE="$ROOT/usr/lib/python3/dist-packages"
STAMP="$TOP/packages"  # one requested package a line, sorted: what the site holds

print_only=0
if [[ "${1:-}" == --print-path ]]; then print_only=1; shift; fi
case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
  -*) echo "fetch-trixie-site: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
wanted=("$@")
(( ${#wanted[@]} )) || wanted=("${DEFAULT_PACKAGES[@]}")
for p in "${wanted[@]}"; do
  [[ "$p" =~ ^python3-[a-z0-9][a-z0-9.+-]*$ ]] \
    || { echo "fetch-trixie-site: '$p' is not a python3-* package name" >&2; exit 2; }
done

wanted_not_in() {  # the wanted packages the list on stdin lacks, one a line (all in the C locale)
  LC_ALL=C comm -23 <(printf '%s\n' "${wanted[@]}" | LC_ALL=C sort -u) <(LC_ALL=C sort -u)
}

missing() {  # the wanted packages the stamp does not list
  { cat "$STAMP" 2>/dev/null || true; } | wanted_not_in
}

have_all() { [[ -d "$SITE" && -z "$(missing)" ]]; }

if (( print_only )); then
  echo "$SITE"
  if have_all; then exit 0; fi
  echo "fetch-trixie-site: not fetched yet: $(missing | tr '\n' ' ')(run make trixie-site)" >&2
  exit 1
fi
if have_all; then echo "$SITE"; exit 0; fi

mkdir -p "$TOP"
exec 9>"$TOP/.lock"
flock 9
if have_all; then echo "$SITE"; exit 0; fi  # another run fetched them meanwhile

trixie_apt_init "$TOP/apt" deb
trixie_apt_update

# Not Python module packages: the interpreter itself, its headers and tools, wheels.
NOT_MODULES='^(python3|python3-(minimal|dev|all.*|venv|doc|dbg|tk|examples|full|.*-whl)'
NOT_MODULES+='|python3\.[0-9]+.*|libpython.*)$'

resolve() {  # the wanted packages and their python3-* dependencies, one a line
  apt-cache "${TRIXIE_APT[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances "${wanted[@]}" \
    | grep -E '^python3-' | grep -Ev "$NOT_MODULES" | LC_ALL=C sort -u
}

unresolved() {  # the wanted packages that resolve() did not list
  printf '%s\n' "${packages[@]}" | wanted_not_in
}

started=$SECONDS
mapfile -t packages < <(resolve)
if [[ -n "$(unresolved)" ]]; then
  # Seen once on a fresh machine (2026-12-06): python3-argon2 was missing from the first
  # index and there in the next, a minute later (most likely a mirror caught mid-sync).
  # A package that is really gone stays missing, and the run fails naming it.
  echo "fetch-trixie-site: not in the index: $(unresolved | tr '\n' ' ')(updating it once and retrying)" >&2
  trixie_apt_update 0
  mapfile -t packages < <(resolve)
fi
missing_now="$(unresolved | tr '\n' ' ')"
[[ -z "$missing_now" ]] || { echo "fetch-trixie-site: not in trixie main: $missing_now" >&2; exit 1; }
echo "fetch-trixie-site: ${#wanted[@]} named, ${#packages[@]} with their python3-* dependencies" >&2

debs="$TOP/debs"
mkdir -p "$debs"
# The exact files of the current candidates ('URI' FILE SIZE HASH a line); apt checks each
# download against the signed index. They go once unpacked.
mapfile -t uris < <(apt-get "${TRIXIE_APT[@]}" download --print-uris -qq "${packages[@]}")
(( ${#uris[@]} == ${#packages[@]} )) \
  || { echo "fetch-trixie-site: apt names ${#uris[@]} files for ${#packages[@]} packages" >&2; exit 1; }
download() { (cd "$debs" && apt-get "${TRIXIE_APT[@]}" download -qq "${packages[@]}" >&2); }
if ! download; then
  echo "fetch-trixie-site: download failed; updating the index once and retrying" >&2
  trixie_apt_update 0
  mapfile -t uris < <(apt-get "${TRIXIE_APT[@]}" download --print-uris -qq "${packages[@]}")
  download
fi

mkdir -p "$ROOT"
bytes=0
for line in "${uris[@]}"; do
  read -r _ f size _ <<<"$line"
  [[ -s "$debs/$f" ]] || { echo "fetch-trixie-site: $debs/$f missing after download" >&2; exit 1; }
  dpkg-deb -x "$debs/$f" "$ROOT"
  bytes=$((bytes + size))
done
[[ -d "$SITE" ]] || { echo "fetch-trixie-site: $SITE missing after unpacking" >&2; exit 1; }
for line in "${uris[@]}"; do read -r _ f _ <<<"$line"; rm -f "$debs/$f"; done

{ cat "$STAMP" 2>/dev/null || true; printf '%s\n' "${wanted[@]}"; } | LC_ALL=C sort -u >"$STAMP.new"
mv "$STAMP.new" "$STAMP"
echo "fetch-trixie-site: ${#packages[@]} packages, $((bytes / 1024)) KiB of .deb files," \
     "fetched and unpacked in $((SECONDS - started)) s" >&2
echo "$SITE"
