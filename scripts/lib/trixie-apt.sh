# Sourced by scripts that fetch from Debian trixie (main): a private apt
# configuration in a folder of our own. The system's apt sources, lists, cache
# and lock are never touched, and nothing needs to be installed.
#
#   trixie_apt_init DIR TYPES    writes DIR/trixie.sources (TYPES: "deb", "deb-src"
#                                or "deb deb-src"), makes DIR/lists and DIR/cache and
#                                fills the array TRIXIE_APT with the options to pass:
#                                  apt-get "${TRIXIE_APT[@]}" download python3-flask
#   trixie_apt_update [MAX_AGE]  apt-get update, unless the last one that succeeded in
#                                DIR is younger than MAX_AGE seconds (default: a day;
#                                0 forces it)
#   trixie_apt_source PKG DIR GLOB
#                                apt-get source --download-only PKG into DIR (after
#                                trixie_apt_update); if no file matching GLOB (the
#                                upstream tarball, which is all our scripts use) came,
#                                updates the index once and retries. Returns 1, with
#                                apt's output on stderr, if it still did not come.
# The caller holds a lock (flock) on DIR for as long as it uses it.
# The mirror is the one this system already uses (scripts/lib/debian-mirror.sh).

source "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"

TRIXIE_APT=()
TRIXIE_APT_DIR=""

trixie_apt_init() {  # $1 folder, $2 types
  TRIXIE_APT_DIR="$1"
  mkdir -p "$1/lists/partial" "$1/cache/archives/partial"
  local sources
  sources="Types: $2
URIs: $(debian_mirror)
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  # Rewritten only when it changes (the mirror or the types): a change drops the update stamp.
  if [[ "$(cat "$1/trixie.sources" 2>/dev/null || true)" != "$sources" ]]; then
    printf '%s\n' "$sources" >"$1/trixie.sources.new"
    mv "$1/trixie.sources.new" "$1/trixie.sources"
    rm -f "$1/updated"
  fi
  # pkgcache.bin named explicitly: images that turn apt's caches off (docker-clean) would
  # otherwise make every apt call parse the whole index again (seconds each).
  TRIXIE_APT=(-o "Dir::Etc::sourcelist=$1/trixie.sources" -o Dir::Etc::sourceparts=/nonexistent
              -o "Dir::State::Lists=$1/lists" -o "Dir::Cache=$1/cache"
              -o "Dir::Cache::pkgcache=$1/cache/pkgcache.bin" -o Dir::Cache::srcpkgcache=
              -o APT::Sandbox::User=root -o Debug::NoLocking=1)
}

trixie_apt_update() {  # $1 most seconds since the last update (default 86400)
  local max_age="${1:-86400}" stamp="$TRIXIE_APT_DIR/updated" last
  last="$(stat -c %Y "$stamp" 2>/dev/null || echo 0)"
  if (( max_age > 0 && $(date +%s) - last < max_age )); then return 0; fi
  echo "trixie-apt: apt-get update (trixie main from $(debian_mirror))" >&2
  apt-get "${TRIXIE_APT[@]}" update -qq >&2
  touch "$stamp"
}

trixie_apt_source() {  # $1 source package, $2 folder, $3 glob of the file wanted in $2
  local pkg="$1" dir="$2" glob="$3" log="$2/apt-source.log" try
  mkdir -p "$dir"
  trixie_apt_update
  for try in 1 2; do
    # apt's complaint about a Debian part the mirror lacks matters only when the wanted
    # file did not come either: its output is shown only then.
    (cd "$dir" && apt-get "${TRIXIE_APT[@]}" source --download-only -qq "$pkg" >"$log" 2>&1) || true
    if compgen -G "$dir/$glob" >/dev/null; then rm -f "$log"; return 0; fi
    if (( try == 1 )); then
      echo "trixie-apt: downloading the source of $pkg failed; updating the index once and retrying" >&2
      trixie_apt_update 0
    fi
  done
  cat "$log" >&2
  echo "trixie-apt: $glob of $pkg was not downloaded into $dir" >&2
  return 1
}
