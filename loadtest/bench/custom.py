"""Benchmarking the user's own app: --wsgi MODULE:CALLABLE, --asgi MODULE:APP or
--app MODULE, --pythonpath DIR, and --request 'METHOD /path?query [@body-file] [weight]'.

The requests become one workload, "app", run by profiles/requests.lua from a
file this module writes into the run's folder; the single-thread ideal is the
same requests timed in-process by handler_rate.py; the peers serve the same
app through wsgi_demo.py (gunicorn, uWSGI) or asgi_demo.py (uvicorn, Hypercorn).

The built-in ASGI workloads (asgi-hello, starlette-hello, asgi-fib, asgi-sleep)
make the run's app loadtest/asgi_bench.py, served with --asgi on every server:
gilgamesh's 3.13 gets bookworm's pure-Python Starlette copied into the run's
folder (scripts/pure_python_site.py), the peers' 3.11 has it installed.
"""

import mimetypes
import os
import re
import subprocess
from dataclasses import dataclass

from .peers import HYPERCORN, PYTHON as PEER_PYTHON, UVICORN
from .workloads import ASGI_APP, ASGI_WORKLOADS, WORKLOADS, Workload

NAME = "app"  # the workload's name in cells, tables and charts
LOADTEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(LOADTEST)

_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")


@dataclass(frozen=True)
class RequestSpec:
    method: str
    target: str             # /path?query, as sent
    body_file: str = ""     # absolute path, or "" for no body
    content_type: str = ""
    weight: int = 1

    @property
    def label(self):
        text = "%s %s" % (self.method, self.target)
        return text + (" @" + os.path.basename(self.body_file) if self.body_file else "")


def parse_request(text):
    """'METHOD /path?query [@body-file] [weight]' -> RequestSpec; ValueError says why not."""
    words = text.split()
    if len(words) < 2:
        raise ValueError("%r: give at least METHOD and /path, e.g. 'GET /items?id=3'" % text)
    method, target, rest = words[0].upper(), words[1], words[2:]
    if not _METHOD.match(method):
        raise ValueError("%r: %r is not an HTTP method" % (text, words[0]))
    if not target.startswith("/"):
        raise ValueError("%r: the target must start with '/'" % text)
    body_file, content_type, weight = "", "", 1
    if rest and rest[0].startswith("@"):
        body_file = os.path.abspath(rest.pop(0)[1:])
        if not os.path.isfile(body_file):
            raise ValueError("%r: no body file %s" % (text, body_file))
        content_type = mimetypes.guess_type(body_file)[0] or "application/octet-stream"
    if rest:
        if not rest[0].isdigit() or int(rest[0]) < 1:
            raise ValueError("%r: the weight must be a whole number >= 1, got %r" % (text, rest[0]))
        weight = int(rest.pop(0))
    if rest:
        raise ValueError("%r: unexpected %r (format: 'METHOD /path?query [@body-file] [weight]')"
                         % (text, " ".join(rest)))
    return RequestSpec(method, target, body_file, content_type, weight)


def check_args(args, error):
    """Validates and normalises the app options of parse_args (error: parser.error)."""
    args.requests = []
    for text in args.request:
        try:
            args.requests.append(parse_request(text))
        except ValueError as e:
            error("--request %s" % e)
    labels = [r.label for r in args.requests]
    if len(set(labels)) != len(labels):
        error("--request: the same request is given twice; use its weight instead")
    given = [flag for flag, value in (("--app", args.app_given), ("--wsgi", args.wsgi),
                                      ("--asgi", args.asgi)) if value]
    if len(given) > 1:
        error("%s are exclusive: --app names a module of @gilgamesh.route handlers, --wsgi a WSGI "
              "callable, --asgi an ASGI app" % " and ".join(given))
    if args.app_given and ":" in args.app:
        error("--app takes a module of @gilgamesh.route handlers; for the WSGI callable %r use "
              "--wsgi %s (or --asgi %s for an ASGI app)" % (args.app, args.app, args.app))
    for flag, value in (("--wsgi", args.wsgi), ("--asgi", args.asgi)):
        if value and not args.requests:
            error("%s needs at least one --request: the demo's workloads are not your app's routes"
                  % flag)
    args.pythonpath = [os.path.abspath(p) for p in args.pythonpath]
    for path in args.pythonpath:
        if not os.path.isdir(path):
            error("--pythonpath %s is not a directory" % path)
    # --root-path given through --server-arg reaches the rate measurement and the peers too.
    args.root_path = ""
    for i, arg in enumerate(args.server_arg):
        if arg == "--root-path" and i + 1 < len(args.server_arg):
            args.root_path = args.server_arg[i + 1]
        elif arg.startswith("--root-path="):
            args.root_path = arg.split("=", 1)[1]


def check_workloads(args, error):
    """The app the workloads need: the ASGI workloads serve loadtest/asgi_bench.py, so they
    take no app of the user's and do not mix with the route workloads (another app)."""
    asgi = [w for w in args.workloads if w in ASGI_WORKLOADS]
    args.builtin_asgi = bool(asgi)
    if not asgi:
        return
    others = [w for w in args.workloads if w not in ASGI_WORKLOADS]
    if others:
        error("--workloads: %s run loadtest/asgi_bench.py, %s the route handlers of --app: run them "
              "separately" % (",".join(asgi), ",".join(others)))
    if args.app_given or args.wsgi or args.asgi:
        error("--workloads %s serve their own app (loadtest/asgi_bench.py); for your app use "
              "--request instead" % ",".join(asgi))
    args.asgi = ASGI_APP
    args.pythonpath = [LOADTEST] + args.pythonpath


def starlette_site(out_dir):
    """Bookworm's pure-Python Starlette (and what it imports), copied for the Python 3.13
    that gilgamesh embeds: the same version the peers run on 3.11. Returns the folder."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "pure_python_site", os.path.join(REPO, "scripts", "pure_python_site.py"))
    site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site)
    try:
        return site.copy_pure_python(site.STARLETTE, os.path.join(out_dir, "site-starlette"))
    except Exception as e:  # not installed: say what to install
        raise SystemExit("loadtest/run: the ASGI workloads need Debian's python3-starlette for %s "
                         "(`make deps`, or `sudo apt-get install python3-starlette`): %s"
                         % (PEER_PYTHON, e))


def trixie_uvloop():
    """Debian trixie's uvloop, built for the 3.13 gilgamesh embeds, where `make trixie-site`
    fetched it: (its package folder, its version), else None."""
    try:
        found = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch-trixie-site.sh"), "--print-path",
                                "python3-uvloop"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    package = os.path.join(found.stdout.strip(), "uvloop")
    if found.returncode != 0 or not os.path.isdir(package):
        return None
    try:
        with open(os.path.join(package, "_version.py")) as f:
            version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read()).group(1)
    except (OSError, AttributeError):
        version = "?"
    return package, version


def prepare(args, out_dir):
    """Copies Starlette for the built-in ASGI workloads (and links trixie's uvloop beside it,
    where fetched: gilgamesh's worker processes then run uvloop, as the peers do), writes the
    requests file into the run's folder and registers the "app" workload."""
    args.gilgamesh_uvloop = None
    if args.builtin_asgi:
        site = starlette_site(out_dir)
        args.pythonpath.append(site)
        uvloop = trixie_uvloop()
        if uvloop:
            os.symlink(uvloop[0], os.path.join(site, "uvloop"))
            args.gilgamesh_uvloop = uvloop[1]
    if not args.requests:
        return
    path = os.path.join(out_dir, "requests.tsv")
    with open(path, "w") as f:
        for r in args.requests:
            f.write("\t".join([str(r.weight), r.method, r.target, r.content_type, r.body_file,
                               r.label]) + "\n")
    description = ", ".join("%s (weight %d)" % (r.label, r.weight) if len(args.requests) > 1 else r.label
                            for r in args.requests)
    WORKLOADS[NAME] = Workload(NAME, "%s of %s" % (description, app_name(args)),
                               {"file": path}, {r.label: r.weight for r in args.requests},
                               profile="requests", app="asgi" if args.asgi else "route")


def app_name(args):
    return args.asgi or args.wsgi or args.app


def app_flag(args):
    """["--asgi", APP], ["--wsgi", APP] or [] (route handlers: --app)."""
    return ["--asgi", args.asgi] if args.asgi else ["--wsgi", args.wsgi] if args.wsgi else []


def app_args(args):
    """The server's app flags: --asgi, --wsgi or --app, and every --pythonpath."""
    out = app_flag(args) or ["--app", args.app]
    for path in args.pythonpath:
        out += ["--pythonpath", path]
    return out


def rate_args(args):
    """The same app, paths and requests for handler_rate.py."""
    out = app_flag(args)
    for path in args.pythonpath:
        out += ["--pythonpath", path]
    if args.root_path:
        out += ["--root-path", args.root_path]
    if args.requests:
        out += ["--requests", WORKLOADS[NAME].params["file"]]
    return out


def peer_env(args):
    """What wsgi_demo.py needs to serve the same app under gunicorn and uWSGI, or asgi_demo.py
    under uvicorn and Hypercorn."""
    env = {"GILGAMESH_APP_ROOT": REPO, "GILGAMESH_APP": args.app,
           "GILGAMESH_PYTHONPATH": os.pathsep.join(args.pythonpath),
           "GILGAMESH_ROOT_PATH": args.root_path}
    if args.wsgi:
        env["GILGAMESH_WSGI"] = args.wsgi
    if args.asgi:
        env["GILGAMESH_ASGI"] = args.asgi
    return env


def peer_module(args):
    """The module the peers serve: asgi_demo for an ASGI app, else wsgi_demo."""
    return "asgi_demo" if args.asgi else "wsgi_demo"


def peer_import_error(args, owned):
    """None if the app imports in the peers' Python (Debian's 3.11), else why not."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **peer_env(args))
    proc = owned.popen([PEER_PYTHON, "-c", "import " + peer_module(args)], cwd=LOADTEST, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        owned.stop(proc, grace=1.0)
        return "importing the app in %s took over 60 s" % PEER_PYTHON
    owned.stop(proc)
    if proc.returncode == 0:
        return None
    last = (err.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
    return "the app does not import in %s: %s" % (PEER_PYTHON, last)


def non_2xx(wrk_result):
    """'404 x 105309, 500 x 3' for the statuses other than 2xx, or ''."""
    counts = sorted(((code, n) for code, n in (wrk_result.get("responses_by_status") or {}).items()
                     if not code.startswith("2")), key=lambda item: -item[1])
    return ", ".join("%s x %d" % (code, n) for code, n in counts)


def loop_note(args):
    """Which event loop gilgamesh's worker processes run the built-in ASGI workloads on."""
    if getattr(args, "gilgamesh_uvloop", None):
        return (" gilgamesh's `processes` cells run uvloop %s in their worker processes, as the peers "
                "run uvloop (Debian trixie's build for 3.13, linked into the same folder; --loop auto);"
                " its other strategies run asyncio's loop." % args.gilgamesh_uvloop)
    return (" gilgamesh runs asyncio's loop on every strategy: no uvloop built for 3.13 is at hand "
            "(`make trixie-site` fetches Debian trixie's, which `processes` then runs).")


def peer_note(args):
    if args.asgi:
        return ("Peers (if run) serve the same ASGI app, %s, on Debian's Python 3.11 through "
                "loadtest/asgi_demo.py (which adds only GET /healthz for the readiness probe)%s: "
                "uvicorn %s with --workers N (one event loop per worker process), and Hypercorn %s "
                "with --workers N." % (
                    args.asgi, ", with bookworm's Starlette 0.26.1, the version gilgamesh's 3.13 "
                    "runs too (copied by scripts/pure_python_site.py)" if args.builtin_asgi else "",
                    " ".join(UVICORN), " ".join(HYPERCORN)) + (loop_note(args) if args.builtin_asgi else ""))
    if args.wsgi:
        return ("Peers (if run) serve the same WSGI app, %s, on Debian's Python 3.11 through "
                "loadtest/wsgi_demo.py (which adds only GET /healthz for the readiness probe), "
                "gunicorn with sync workers and uWSGI with --http-socket (both close the connection "
                "after each response, so every wrk connection is served in turn), and gunicorn-gthread: "
                "gunicorn at its documented keep-alive setting (gthread workers, 4 threads each, "
                "--keep-alive 5)." % args.wsgi)
    return None
