#!/usr/bin/env bash
# Builds CPython 3.13.5 from Debian trixie's python3.13 source package, twice,
# --enable-shared: a default build and a --disable-gil (free-threaded) build.
# Both land in a cache outside the clone, shared by every clone and run:
#   ${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}/python-3.13.5/{default,free-threaded}
# A prefix is rebuilt only when it is missing, broken (its python cannot run)
# or built with another set of our patches (its stamp file differs). A rebuild
# is installed beside the old prefix and swapped in with a rename, so servers
# already running from the old one keep working.
# The system's apt sources are never edited: a private apt configuration reads
# the mirror from them and fetches only the source package.
#
# Patches: scripts/python-patches/*.patch are applied (patch -p1, in name
# order) to the default build; each says in its header what it fixes and why.
# The free-threaded build gets none: gilgamesh never ends a sub-interpreter in it.
#
# Optimization (GILGAMESH_PYTHON_PGO, `make build PGO=...`), as distributions
# build their Pythons (Debian's 3.11, the peers' Python, is PGO+LTO):
#   short (the default): profile-guided optimization (--enable-optimizations),
#     trained by scripts/pgo_task.py (seconds, not upstream's test suite): about
#     7.5 minutes a build on 2 cores instead of 5; fib 14 % and a dict/JSON/sort
#     mix 12 % faster than plain;
#   full (or 1): --enable-optimizations --with-lto, trained by upstream's task
#     (-m test --pgo): about 25 minutes a build; both 19 % faster than plain;
#   0 (or plain): neither.
# The prefix's stamp records it. A prefix serves a request for the same or a
# lesser optimization (full > short > plain: the same Python, optimized), so it
# is kept until removed; a lesser one is rebuilt (docs/benchmarks.md, "PGO").
#
# --check (first argument): builds nothing; says for each build whether its
# prefix is ready, and exits 1 if one would be built.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/trixie-apt.sh"  # and debian-mirror.sh

VERSION=3.13.5
CACHE="${GILGAMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gilgamesh}"
ROOT="$CACHE/python-$VERSION"
JOBS="$(nproc)"
case "${GILGAMESH_PYTHON_PGO:-short}" in  # PGO_NAME: how the messages say it
  ""|short) PGO=short PGO_NAME=" with PGO" ;;
  1|full)   PGO=full PGO_NAME=" with PGO+LTO" ;;
  0|plain)  PGO="" PGO_NAME="" ;;
  *) echo "build-python: GILGAMESH_PYTHON_PGO must be short, full (or 1) or 0 (plain), not '$GILGAMESH_PYTHON_PGO'" >&2; exit 2 ;;
esac
FULL_LINE="optimizations: --enable-optimizations --with-lto"
SHORT_LINE="optimizations: --enable-optimizations (profile: scripts/pgo_task.py)"
PATCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/python-patches"
CHECK_ONLY=""
if [[ "${1:-}" == --check ]]; then CHECK_ONLY=1; shift; fi
which_builds=("${@:-default free-threaded}")
read -r -a which_builds <<<"${which_builds[*]}"

patches_for() {  # $1 build name: the patch files it gets, one a line
  [[ "$1" == default ]] || return 0
  compgen -G "$PATCH_DIR/*.patch" | LC_ALL=C sort || true
}

patch_stamp() {  # $1 build name: what the prefix's stamp file must hold
  local f
  while read -r f; do
    [[ -n "$f" ]] && echo "$(sha256sum <"$f" | cut -d' ' -f1)  $(basename "$f")"
  done < <(patches_for "$1")
  return 0
}

pgo_line() {  # $1 short, full or "": the stamp's line for that optimization
  case "$1" in
    full)  echo "$FULL_LINE" ;;
    short) echo "$SHORT_LINE" ;;
  esac
  return 0
}

build_stamp() {  # $1 build name: the stamp file a build made now gets
  patch_stamp "$1"
  pgo_line "$PGO"
  return 0
}

stamp_ok() {  # $1 prefix, $2 build name: built with our patches, and optimized at least as asked
  local have patches level
  have="$(cat "$1/gilgamesh-patches" 2>/dev/null || true)"
  patches="$(patch_stamp "$2")"
  # full serves every request, short serves short and plain, plain only plain.
  for level in full short ""; do
    [[ "$have" == "$(if [[ -n "$patches" ]]; then echo "$patches"; fi; pgo_line "$level")" ]] && return 0
    [[ "$level" == "$PGO" ]] && return 1
  done
  return 1
}

prefix_ok() {  # $1 prefix, $2 expected Py_GIL_DISABLED (0/1), $3 build name
  local py="$1/bin/python3.13"
  [[ -x "$py" ]] || return 1
  stamp_ok "$1" "$3" || return 1
  LD_LIBRARY_PATH="$1/lib" "$py" -c "
import sys, sysconfig, ssl, zlib, ctypes, sqlite3, decimal
assert sys.version_info[:3] == (3, 13, 5)
assert int(sysconfig.get_config_var('Py_GIL_DISABLED') or 0) == $2
assert sysconfig.get_config_var('Py_ENABLE_SHARED') == 1
" >/dev/null 2>&1
}

# Ends isolated (own GIL, own obmalloc) sub-interpreters and fails if they leave
# obmalloc blocks behind: unpatched 3.13.5 leaves about 2,750 per interpreter
# and with them all of its arenas (0001-free-subinterpreter-interned-strings).
subinterpreters_free_memory() {  # $1 prefix
  LD_LIBRARY_PATH="$1/lib" "$1/bin/python3.13" -I -c "
import sys, _interpreters
def cycle():
    _interpreters.destroy(_interpreters.create('isolated'))
cycle(); cycle()
before = sys.getallocatedblocks()
for _ in range(5):
    cycle()
left = (sys.getallocatedblocks() - before) / 5
if left > 50:
    sys.exit('an ended sub-interpreter left %.0f blocks allocated' % left)
"
}

# Builds tests/ext/pyinit_*.c against the prefix and imports each first in an
# isolated sub-interpreter, each case in a fresh process: it must be an
# ImportError, never a dead process. Unpatched 3.13.5 runs the init function
# in the main interpreter and hands its exception object to the
# sub-interpreter, which aborts (free(): invalid pointer) or segfaults
# (0002-subinterpreter-extension-init-errors); it re-enters an init function
# that imports its own package, and runs one init function on two threads at
# once (0003-subinterpreter-extension-init-reentry).
#   pyinit_imports: with the main interpreter able to import json (the init
#     function succeeds there) and unable to (sys.modules['json'] = None: it
#     fails there, as markupsafe's does when the main interpreter lacks it);
#   pyinit_raises: its init function raises, as zstandard's does;
#   pyinit_reenters (in pyinit_reenters_pkg/, aborts if re-entered): with the
#     main interpreter able to import the package (nested re-entry), and from
#     four sub-interpreters on four threads at once.
subinterpreter_import_errors_clean() {  # $1 prefix
  local prefix="$1" py="$1/bin/python3.13" ext_dir="$PATCH_DIR/../../tests/ext"
  local dir suffix include case m how out rc ok=0
  dir="$(mktemp -d)"
  suffix="$(LD_LIBRARY_PATH="$prefix/lib" "$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
  include="$(LD_LIBRARY_PATH="$prefix/lib" "$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  mkdir "$dir/pyinit_reenters_pkg"
  echo "from . import pyinit_reenters" >"$dir/pyinit_reenters_pkg/__init__.py"
  for m in pyinit_imports pyinit_raises pyinit_reenters_pkg/pyinit_reenters; do
    cc -shared -fPIC -I"$include" "$ext_dir/${m#*/}.c" -o "$dir/$m$suffix" \
      || { echo "build-python: cannot compile $ext_dir/${m#*/}.c" >&2; rm -rf "$dir"; return 1; }
  done
  for case in pyinit_imports:main-has-json pyinit_imports:main-lacks-json pyinit_raises:plain \
              pyinit_reenters_pkg:main-has-path pyinit_reenters_pkg:four-threads; do
    m="${case%%:*}" how="${case#*:}"
    rc=0
    out="$(LD_LIBRARY_PATH="$prefix/lib" "$py" -I -c "
import sys, threading, _interpreters
ext_dir, mod, how = sys.argv[1:4]
if how == 'main-lacks-json':
    sys.modules['json'] = None
if how == 'main-has-path':
    sys.path.insert(0, ext_dir)
code = f'''
import sys
sys.path.insert(0, {ext_dir!r})
try:
    import {mod}
except ImportError as e:
    print('ImportError:', e, flush=True)
else:
    print('imported, not refused:', {mod}, flush=True)
'''
errors = []
def first_import():
    interp = _interpreters.create('isolated')
    err = _interpreters.run_string(interp, code)
    _interpreters.destroy(interp)
    if err is not None:
        errors.append(err)
threads = [threading.Thread(target=first_import) for _ in range(4 if how == 'four-threads' else 1)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit('uncaught in the sub-interpreter: %s' % (errors[0],))
" "$dir" "$m" "$how" 2>&1)" || rc=$?
    if (( rc == 0 )) && [[ "$out" == ImportError:* ]] && [[ "$out" != *"imported, not refused"* ]]; then
      echo "build-python: $m ($how), first import in an isolated sub-interpreter: ${out%%$'\n'*}"
    else
      (( rc > 128 )) && out="killed by signal $((rc - 128)): $out"
      echo "build-python: $m ($how), first import in an isolated sub-interpreter, exit $rc: $out" >&2
      ok=1
    fi
  done
  rm -rf "$dir"
  return "$ok"
}

fetch_source() {
  local tarball="$ROOT/src/python3.13_${VERSION}.orig.tar.xz"
  if [[ -s "$tarball" ]] && xz -t "$tarball" 2>/dev/null; then echo "$tarball"; return; fi
  mkdir -p "$ROOT/src"
  trixie_apt_init "$ROOT/apt" deb-src
  echo "build-python: fetching python3.13 source from $(debian_mirror) (trixie)" >&2
  trixie_apt_source python3.13 "$ROOT/src" "$(basename "$tarball")" || exit 1
  # Only the upstream tarball is used; apt verified it against the signed Sources index.
  [[ -s "$tarball" ]] || { echo "build-python: $tarball not found after download" >&2; exit 1; }
  echo "$tarball"
}

build_one() {  # $1 name, $2 extra configure flags, $3 expected Py_GIL_DISABLED
  local name="$1" flags="$2" gil_disabled="$3"
  local prefix="$ROOT/$name"
  if prefix_ok "$prefix" "$gil_disabled" "$name"; then echo "build-python: $prefix is ready"; return; fi
  if [[ -n "$CHECK_ONLY" ]]; then
    echo "build-python: $prefix would be built$PGO_NAME"
    CHECK_FAILED=1
    return
  fi
  local tarball; tarball="$(fetch_source)"
  local work; work="$(mktemp -d "$ROOT/build-$name.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  local optimize=() task=()
  case "$PGO" in
    full)
      optimize=(--enable-optimizations --with-lto)
      # Upstream's profile task (its --pgo test subset): it only trains the
      # optimizer, so a test that fails in the instrumented build (test_generators
      # did on this VM) must not stop the build.
      task=("PROFILE_TASK=-m test --pgo --timeout=1200 || echo 'build-python: a profile-task test failed; the profile is still written'")
      echo "build-python: building $name CPython $VERSION$PGO_NAME into $prefix (about 25 minutes on 2 cores)" ;;
    short)
      optimize=(--enable-optimizations)
      # scripts/pgo_task.py, copied into the source tree (make runs the task there).
      task=("PROFILE_TASK=gilgamesh_pgo_task.py 5 || echo 'build-python: the profile task failed; the profile is still written'")
      echo "build-python: building $name CPython $VERSION$PGO_NAME into $prefix (about 7.5 minutes on 2 cores)" ;;
    *)
      echo "build-python: building $name CPython $VERSION into $prefix (a few minutes)" ;;
  esac
  mkdir "$work/src"
  tar -xJf "$tarball" -C "$work/src" --strip-components=1
  cp "$PATCH_DIR/../pgo_task.py" "$work/src/gilgamesh_pgo_task.py"
  local p
  while read -r p; do
    [[ -n "$p" ]] || continue
    echo "build-python: applying $(basename "$p")"
    patch -d "$work/src" -p1 --forward --batch --quiet <"$p" \
      || { echo "build-python: $(basename "$p") does not apply" >&2; exit 1; }
  done < <(patches_for "$name")
  (
    cd "$work/src"
    # rpath so the embedded libpython is found without LD_LIBRARY_PATH.
    ./configure --prefix="$prefix" --enable-shared $flags "${optimize[@]}" \
      LDFLAGS="-Wl,-rpath,$prefix/lib" >"$work/configure.log" 2>&1 \
      || { tail -40 "$work/configure.log"; exit 1; }
    make -j"$JOBS" "${task[@]}" >"$work/make.log" 2>&1 || { tail -60 "$work/make.log"; exit 1; }
    make install DESTDIR="$work/stage" >"$work/install.log" 2>&1 \
      || { tail -40 "$work/install.log"; exit 1; }
  )
  build_stamp "$name" >"$work/stage$prefix/gilgamesh-patches"
  # Swap the new prefix in: a server still running from the old one keeps its
  # mapped libpython, and the old prefix goes only once the new one is there.
  local old=""
  if [[ -e "$prefix" ]]; then old="$work/old"; mv "$prefix" "$old"; fi
  mv "$work/stage$prefix" "$prefix"
  prefix_ok "$prefix" "$gil_disabled" "$name" || { echo "build-python: $prefix failed its check" >&2; exit 1; }
  if [[ -n "$(patches_for "$name")" ]]; then
    subinterpreters_free_memory "$prefix" \
      || { echo "build-python: $prefix still leaks ended sub-interpreters" >&2; exit 1; }
    subinterpreter_import_errors_clean "$prefix" \
      || { echo "build-python: $prefix crashes on a sub-interpreter's first import of a failing extension" >&2; exit 1; }
  fi
  echo "build-python: $name ready at $prefix"
}

CHECK_FAILED=0
if [[ -z "$CHECK_ONLY" ]]; then
  mkdir -p "$ROOT"
  exec 9>"$ROOT/.lock"
  flock 9
fi
for b in "${which_builds[@]}"; do
  case "$b" in
    default)       build_one default "" 0 ;;
    free-threaded) build_one free-threaded "--disable-gil" 1 ;;
    *) echo "build-python: unknown build '$b' (default, free-threaded)" >&2; exit 2 ;;
  esac
done
exit "$CHECK_FAILED"
