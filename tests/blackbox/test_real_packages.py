"""Real packages never take the server down: Debian trixie's python3-* packages (built for
Python 3.13, C extensions included; scripts/fetch-trixie-site.sh) imported by an app
(tests/apps/real_packages.py), one package per server, on every strategy; and Flask 3.1
from the same site (tests/apps/flask_app.py), with and without --preload.

Each start ends one of two ways: the server serves GET /use with the package's expected
result, or it exits with status 1 at start-up and its stderr names the package's module.
Never a signal, never a hang. Which of the two is not left open where it is known:
  - pure-Python packages serve on every strategy;
  - under threads and processes a package serves if and only if it loads in a plain
    interpreter of the same libpython with the same site folder (the "interpreter" below,
    found from the binary with ldd): one that cannot load there (an extension linked
    against a newer glibc or libstdc++ than this machine has) is refused naming the missing
    version, e.g. GLIBC_2.38;
  - under free-threaded the same, against the free-threaded interpreter: an extension built
    for cpython-313 (not 313t) is not loaded, and the package is refused naming its module
    unless it falls back to pure Python;
  - under subinterpreters either way, as long as the server neither crashes nor hangs.

The site: GILGAMESH_TRIXIE_SITE, else the folder `scripts/fetch-trixie-site.sh --print-path`
names (fetched by `make trixie-site`, which `make test` runs). The servers of one strategy
start a few at a time (GILGAMESH_REAL_PACKAGES_JOBS, default 4). With
GILGAMESH_REAL_PACKAGES_TABLE=FILE each strategy's outcomes are appended to FILE as a
Markdown table.
"""

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from gilgamesh_harness import APPS_DIR, REPO, GilgameshServer, binary_path, find_trixie_site, scaled

if os.environ.get("GILGAMESH_SANITIZED"):
    # The sanitized pass proves the probe's own code (test_startup_probe.py, test_check.py);
    # here ASan would slow 165 server starts importing uninstrumented third-party code.
    pytest.skip("not in the sanitized pass (see the comment above)", allow_module_level=True)

START_TIMEOUT_S = 60.0  # from launch to ready or exit, before scaling; a start takes about 1 s
JOBS = int(os.environ.get("GILGAMESH_REAL_PACKAGES_JOBS") or "4")

# Per package (the import name tests/apps/real_packages.py knows it by): the Debian package,
# whether it is pure Python (needs no C extension: it serves on every strategy), what else its
# refusal may name (an extension it needs that lives outside it), and GET /use's result.
PACKAGES = {
    "flask": ("python3-flask", True, (), {"n": 7, "html": "&lt;b&gt;"}),
    "requests": ("python3-requests", False, ("charset_normalizer",), "http://x/?a=b+c&n=1"),
    "urllib3": ("python3-urllib3", True, (), ["https", "host.example", 8443, "/p/a?q=1"]),
    "charset_normalizer": ("python3-charset-normalizer", False, (), True),
    "simplejson": ("python3-simplejson", False, (), '{"a": "\\u00e9", "b": [1, 2.5, null]}'),
    "zstandard": ("python3-zstandard", False, (), {"size": 5000, "smaller": True, "same": True}),
    "argon2": ("python3-argon2", False, ("_cffi_backend",), [True, True]),
    "cryptography": ("python3-cryptography", False, ("_cffi_backend",),
                     ["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "token"]),
    "msgspec": ("python3-msgspec", False, (), ['{"a":[1,2],"b":null}', [1, "x"]]),
    "ujson": ("python3-ujson", False, (), '{"a":"x","b":[1,2]}'),
    "orjson": ("python3-orjson", False, (), '{"a":null,"b":[1,2]}'),
    "lxml": ("python3-lxml", False, (), [["1", "2"], "b", '<i n="1">a</i>']),
    "PIL": ("python3-pil", False, (), [[4, 3], [255, 0, 0]]),
    "regex": ("python3-regex", False, (), ["Hello", "\u00c9mile", "Zo\u00eb"]),
    "brotli": ("python3-brotli", False, ("_brotli",), True),
    "bcrypt": ("python3-bcrypt", False, (), [True, True, False]),
    "uvloop": ("python3-uvloop", False, (), ["uvloop", 42]),
    "psutil": ("python3-psutil", False, (), [True, True, True]),
    "xxhash": ("python3-xxhash", False, (), ["32d153ff", "44bc2cf5ad770999"]),
    "lz4": ("python3-lz4", False, (), True),
    "ruamel.yaml": ("python3-ruamel.yaml", False, ("_ruamel_yaml",),
                    [{"a": [1, 2], "b": {"c": "x"}}, "b: [1, 2]\n"]),
    "rpds": ("python3-rpds-py", False, (), [[["a", 1], ["b", 2]], True, 4]),
    "yaml": ("python3-yaml", False, (), {"a": [1, 2], "b": {"c": "x"}}),
    "msgpack": ("python3-msgpack", False, (), ["81a161920102", {"a": [1, 2]}]),
    "sqlalchemy": ("python3-sqlalchemy", False, (), 42),
    "greenlet": ("python3-greenlet", False, (), 42),
    "multidict": ("python3-multidict", False, (), [[1, 3], ["Key"], 2]),
    "yarl": ("python3-yarl", False, ("multidict", "propcache"),
             ["http://example.test/a/b?d=2+3", "/a", "http://example.test/a/b/c"]),
    "frozenlist": ("python3-frozenlist", False, (), [[1, 2, 3], True, True]),
    "websockets": ("python3-websockets", False, (),
                   ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "60606060"]),
    "wrapt": ("python3-wrapt", False, (), 42),
    "cbor2": ("python3-cbor2", True, (), ["a16161820102", {"a": [1, 2]}]),
    "propcache": ("python3-propcache", False, (), [42, 42, 1]),
    "django": ("python3-django", True, (), [[4, 2], "hello-world", "&lt;a&gt;&amp;"]),
    "starlette": ("python3-starlette", True, (), ["http://x/c?b=1", '{"a":1}']),
    "anyio": ("python3-anyio", True, (), 42),
    "markupsafe": ("python3-markupsafe", False, (),
                   ["&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;", "<b>&lt;i&gt;</b>"]),
    "pydantic": ("python3-pydantic", False, ("pydantic_core",), [{"n": 3, "tags": ["a"]}, True]),
    "cffi": ("python3-cffi", False, ("_cffi_backend",), 5),
}
NAMES = sorted(PACKAGES, key=str.lower)

# Which interpreter a strategy's workers run, for the strategies whose verdict it decides.
INTERPRETER_OF = {"threads": "default", "processes": "default", "free-threaded": "free-threaded"}


# --- the site and the interpreters ------------------------------------------------

@pytest.fixture(scope="session")
def trixie_site():
    """The site folder, holding every package of PACKAGES."""
    site = find_trixie_site(sorted({p[0] for p in PACKAGES.values()}))
    missing = [name for name in PACKAGES if not _in_site(site, name.split(".")[0])]
    if missing:
        pytest.fail("%s lacks %s: run `make trixie-site` (or unset GILGAMESH_TRIXIE_SITE)"
                    % (site, ", ".join(missing)), pytrace=False)
    return site


def _in_site(site, top):
    return (site / top).is_dir() or (site / (top + ".py")).is_file() or \
        any(site.glob(top + ".*.so"))


def _interpreter_of(binary):
    """The python executable beside the libpython `binary` is linked against (ldd)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"libpython(3\.\d+t?)\.so\S* => (\S+)", out)
    assert found, "no libpython in `ldd %s`:\n%s" % (binary, out)
    exe = Path(found.group(2)).resolve().parent.parent / "bin" / ("python" + found.group(1))
    assert exe.is_file(), "%s links %s, but %s is not there" % (binary, found.group(2), exe)
    return exe


ORACLE = """
import json, sys, types
sys.path[:0] = [sys.argv[1], sys.argv[2]]
stub = types.ModuleType("gilgamesh")
stub.route = lambda *args, **kwargs: (lambda handler: handler)
sys.modules["gilgamesh"] = stub
import real_packages
print(json.dumps(real_packages.result()))
"""


def _oracle_one(python, site, name):
    """(True, result) when `name` loads and runs in a plain `python`, else (False, why): its
    stderr, and the signal that killed it if one did (an abi3 extension in the free-threaded
    build can)."""
    env = dict(os.environ, GILGAMESH_TEST_PACKAGE=name)
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(python), "-I", "-c", ORACLE, str(APPS_DIR), str(site)],
                            capture_output=True, text=True, env=env, timeout=scaled(60))
    if result.returncode == 0:
        return True, json.loads(result.stdout)
    died = " (killed by signal %d)" % -result.returncode if result.returncode < 0 else ""
    return False, "%s exited with status %d%s\n%s" % (python.name, result.returncode, died,
                                                      result.stderr)


@pytest.fixture(scope="session")
def interpreter_verdicts(gilgamesh_bin, trixie_site):
    """{build: {package: (loads, result or error)}}, computed once per build on first use."""
    verdicts = {}

    def of(build):
        if build not in verdicts:
            binary = gilgamesh_bin if build == "default" else \
                gilgamesh_bin.with_name("gilgamesh-ft")
            python = _interpreter_of(binary)
            with concurrent.futures.ThreadPoolExecutor(JOBS) as pool:
                runs = {n: pool.submit(_oracle_one, python, trixie_site, n) for n in PACKAGES}
                verdicts[build] = {n: f.result() for n, f in runs.items()}
        return verdicts[build]

    return of


# --- one start per package -----------------------------------------------------------

class Outcome:
    """How one server of one package ended: 'served' (with the response to GET /use and the
    exit code of its stop), 'exited' (before it was ready: the exit code) or 'hung'."""

    def __init__(self, kind, returncode, log, seconds, response=None):
        self.kind, self.returncode, self.log, self.seconds = kind, returncode, log, seconds
        self.response = response

    def summary(self):
        if self.kind == "served":
            ok = self.response is not None and self.response.status == 200
            if ok:
                return "serves"
            return "answers %s: %s" % (self.response.status if self.response else "nothing",
                                      _reason(self.log))
        if self.kind == "hung":
            return "HANG (no ready, no exit within %.0f s)" % scaled(START_TIMEOUT_S)
        if self.returncode is not None and self.returncode < 0:
            return "CRASH (signal %d)" % -self.returncode
        return "refused (exit %s): %s" % (self.returncode, _reason(self.log))

    def __repr__(self):
        return "<%s %s after %.1f s>\n--- server output ---\n%s" % (
            self.kind, self.summary(), self.seconds, self.log[-5000:])


def _reason(log):
    """The line of a server's output that says why it stopped or failed, shortened for a table:
    its log prefix, the site's folders and the extensions' ABI tags left out."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    chosen = None
    for pattern in ("[critical]", "[error]", "Error:", "error", "not found", "refus", "cannot"):
        chosen = next((line for line in lines if pattern in line), None)
        if chosen:
            break
    text = chosen or (lines[-1] if lines else "(no output)")
    text = re.sub(r"^\[[^]]*\] \[\w+\] \[pid \d+\] ", "", text)
    text = re.sub(r"/\S*?/dist-packages/", "", text)
    text = re.sub(r"/(usr/)?lib/x86_64-linux-gnu/", "", text)
    text = text.replace(".cpython-313-x86_64-linux-gnu", "")
    return text[:300]


def _wait_ready_or_exit(server):
    deadline = time.monotonic() + scaled(START_TIMEOUT_S)
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return "exited"
        try:
            if server.get("/readyz", timeout=1.0).status == 200:
                return "ready"
        except (OSError, http.client.HTTPException):
            pass  # not listening yet: poll again
        time.sleep(0.05)  # polling interval, not synchronisation
    return "hung"


def start_once(strategy, args, env):
    """Starts a server and returns its Outcome; always leaves it stopped or killed."""
    for attempt in range(3):
        began = time.monotonic()
        server = GilgameshServer(strategy, workers=2, app="real_packages", args=args, env=env)
        server.launch()
        try:
            state = _wait_ready_or_exit(server)
            if state == "exited":
                log = server.log()
                if "in use" in log.lower() and attempt < 2:
                    continue  # another start took the free port first
                return Outcome("exited", server.process.returncode, log, time.monotonic() - began)
            if state == "hung":
                server.kill()
                return Outcome("hung", server.process.returncode, server.log(),
                               time.monotonic() - began)
            try:
                response = server.get("/use", timeout=30)
            except (OSError, http.client.HTTPException):
                response = None
            code = server.stop()
            return Outcome("served", code, server.log(), time.monotonic() - began, response)
        finally:
            server.kill()
    raise AssertionError("unreachable")


def package_args(site):
    return ["--pythonpath", str(APPS_DIR), "--pythonpath", str(site)]


@pytest.fixture(scope="module")
def outcomes(gilgamesh_bin, strategy, trixie_site):
    """{package: Outcome} for this strategy, JOBS servers starting at a time."""
    with concurrent.futures.ThreadPoolExecutor(JOBS) as pool:
        runs = {n: pool.submit(start_once, strategy, package_args(trixie_site),
                               {"GILGAMESH_TEST_PACKAGE": n}) for n in NAMES}
        results = {n: f.result() for n, f in runs.items()}
    table = os.environ.get("GILGAMESH_REAL_PACKAGES_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as f:
            f.write("\n### %s\n\n| package | outcome | start s |\n|---|---|---|\n" % strategy)
            for n in NAMES:
                f.write("| %s | %s | %.1f |\n" % (n, results[n].summary().replace("|", "\\|"),
                                                  results[n].seconds))
    return results


def _names_module(log, name):
    names = [name, name.split(".")[0], *PACKAGES[name][2]]
    return any(re.search(r"(?<![\w.])%s(?![\w])" % re.escape(n), log) for n in names)


def _missing_versions(error):
    """The symbol versions a dynamic loader error says are missing: GLIBC_2.38, CXXABI_1.3.15..."""
    return sorted(set(re.findall(r"version [`'](\S+?)' not found", error)))


@pytest.mark.parametrize("name", NAMES)
def test_serves_or_refuses_cleanly(outcomes, strategy, interpreter_verdicts, name):
    debian, pure, _, expected = PACKAGES[name]
    outcome = outcomes[name]
    assert outcome.kind != "hung", "%s (%s) hung at start-up under %s: %r" % (
        name, debian, strategy, outcome)
    assert outcome.returncode is not None and outcome.returncode >= 0, \
        "%s (%s) killed the server under %s: %r" % (name, debian, strategy, outcome)
    if outcome.kind == "served":
        assert outcome.response is not None and outcome.response.status == 200, outcome
        assert outcome.response.json() == {"package": name, "result": expected}, outcome
        assert outcome.returncode == 0, "stopping it: %r" % outcome
    else:
        assert outcome.returncode == 1, "%s refused with exit code %s: %r" % (
            name, outcome.returncode, outcome)
        assert _names_module(outcome.log, name), \
            "the refusal of %s does not name its module: %r" % (name, outcome)
    if pure:
        assert outcome.kind == "served", "%s is pure Python, yet not served under %s: %r" % (
            name, strategy, outcome)
    build = INTERPRETER_OF.get(strategy)
    if build is None:
        return  # subinterpreters: either way, cleanly
    loads, found = interpreter_verdicts(build)[name]
    if loads:
        assert found == expected, "the %s interpreter gets %r from %s, the table says %r" % (
            build, found, name, expected)
        assert outcome.kind == "served", "%s loads in the %s interpreter, but not under %s: %r" % (
            name, build, strategy, outcome)
    else:
        assert outcome.kind == "exited", "%s does not load in the %s interpreter, yet is served " \
            "under %s\n--- interpreter ---\n%s" % (name, build, strategy, found[-3000:])
        for version in _missing_versions(found):
            shown = version.split("_", 1)[-1] if version.startswith("GLIBC_") else version
            assert shown in outcome.log, "the refusal of %s does not name %s (missing on this " \
                "machine): %r" % (name, version, outcome)


def test_the_site_needs_glibc_238_somewhere(interpreter_verdicts):
    """Keeps the refusals above honest on a machine older than trixie: there, some packages
    must be refused for GLIBC_2.38 (and the test above checks the server says so)."""
    glibc = tuple(int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
    needs = sorted(n for n, (loads, error) in interpreter_verdicts("default").items()
                   if not loads and "GLIBC_2.38" in error)
    if glibc >= (2, 38):
        assert not needs, needs
    else:
        assert {"pydantic", "cffi"} <= set(needs), (glibc, needs)


# --- Flask 3.1 as shipped (MarkupSafe's speedups included) ---------------------------------

@pytest.mark.parametrize("preload", [False, True], ids=["plain", "preload"])
def test_flask_from_trixie(gilgamesh_bin, strategy, trixie_site, preload):
    args = ["--pythonpath", str(APPS_DIR), "--pythonpath", str(trixie_site)]
    server = GilgameshServer(strategy, workers=2, wsgi="flask_app:app",
                             args=args + (["--preload"] if preload else [])).start()
    try:
        r = server.get("/")
        assert r.status == 200 and r.body == b"hello from flask", r
        r = server.get("/fib/20")
        assert r.status == 200 and r.json() == {"n": 20, "value": 6765}, r
        r = server.request("POST", "/echo?a=1", body={"k": "<b>"})
        assert r.status == 200 and r.json()["json"] == {"k": "<b>"}, r
    finally:
        code = server.stop()
    assert code == 0, "server exited with %r\n%s" % (code, server.log()[-4000:])


@pytest.mark.parametrize("name, expected", [("lxml", "processes"), ("flask", "subinterpreters")])
def test_strategy_auto_with_real_packages(gilgamesh_bin, trixie_site, probe_cache, name, expected):
    # lxml.etree refuses own-GIL sub-interpreters (a Cython build: multi-phase init without
    # per-interpreter GIL support): auto serves it with processes,
    # and says why; Flask (MarkupSafe falls back to pure Python there) stays on sub-interpreters.
    server = GilgameshServer("auto", workers=2, app="real_packages", args=package_args(trixie_site),
                             env=dict(probe_cache, GILGAMESH_TEST_PACKAGE=name)).start()
    try:
        line = next((l for l in server.log().splitlines() if "strategy auto -> " in l), "")
        assert "strategy auto -> %s:" % expected in line, server.log()
        if name == "lxml":
            assert "lxml.etree (no per-interpreter GIL)" in line, line
        r = server.get("/use")
        assert r.status == 200 and r.json()["result"] == PACKAGES[name][3], r
        assert server.get("/stats").json()["strategy"] == expected
    finally:
        code = server.stop()
    assert code == 0, "server exited with %r\n%s" % (code, server.log()[-4000:])
