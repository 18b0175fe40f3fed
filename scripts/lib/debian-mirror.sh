# Sourced by scripts that fetch from Debian: the mirror this system already uses,
# read from its apt sources (never edited). Prints nothing on its own.
#   debian_mirror           -> e.g. http://deb.debian.org/debian
#   debian_security_mirror  -> e.g. http://deb.debian.org/debian-security

_debian_uris() {  # every URI named in the system's apt sources, deb822 and one-line style
  grep -hoE '^URIs:[[:space:]]*.*' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -E 's/^URIs:[[:space:]]*//' | tr ' ' '\n' || true
  grep -hE '^deb(-src)?[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {print $i; break}}' || true
}

debian_mirror() {
  local uri
  uri="$(_debian_uris | grep -E '^[a-z+]+://' | grep -v security | head -1)"
  echo "${uri:-http://deb.debian.org/debian}"
}

debian_security_mirror() {
  local uri
  uri="$(_debian_uris | grep -E '^[a-z+]+://' | grep security | head -1)"
  echo "${uri:-http://deb.debian.org/debian-security}"
}
