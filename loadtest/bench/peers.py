"""The peers a run can measure beside the gilgamesh strategies, as one table of
what each one is: the runner, the report and the charts read its properties
and never test a peer's name.

Two sorts, told apart by `serves_app`:
- Python servers serve the run's own app on Debian's Python 3.11, with the
  cell's worker count; they count in ratios like any strategy. Each serves one
  `interface`: WSGI (gunicorn, gunicorn-gthread, uWSGI, through
  loadtest/wsgi_demo.py, for --app and --wsgi runs) or ASGI (uvicorn, Hypercorn,
  through loadtest/asgi_demo.py, for --asgi runs and the asgi-* workloads).
- A reference (nginx) answers a fixed string on the workloads it lists, with no
  Python at all: the ceiling an HTTP server in C reaches with the same wrk. It
  is compared against, never used as the base of a ratio, and skipped (not
  failed) on other workloads.
"""

import os
from dataclasses import dataclass

from . import nginx
from .workloads import WORKLOADS

LOADTEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"  # Debian's: the Python peers embed it
BUILD = "system"             # their Python build, as the single-thread rates name it
# gunicorn's documented setting for keep-alive clients: gthread workers, a thread pool per
# process, connections kept open (its sync workers close after each response).
GTHREAD_THREADS = 4
GUNICORN_GTHREAD = ["--worker-class", "gthread", "--threads", str(GTHREAD_THREADS), "--keep-alive", "5"]


def _gunicorn(extra):
    def command(binary, port, workers, timeout_s):
        return [binary, "--chdir", LOADTEST, "--workers", str(workers),
                "--bind", "127.0.0.1:%d" % port, "--timeout", str(timeout_s),
                "--graceful-timeout", "5", "--log-level", "warning"] + extra + ["wsgi_demo:app"]
    return command


# uvicorn at its documented production setting: worker processes, uvloop and httptools (Debian
# has both), no access log, warnings only. Its other defaults: --backlog 2048, keep-alive 5 s,
# no --limit-concurrency.
UVICORN = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
# Hypercorn 0.13's uvloop worker class; --backlog as uvicorn's default (Hypercorn's is 100, which
# a burst of 1000 connections overflows); no access log by default; keep-alive 5 s.
HYPERCORN = ["--worker-class", "uvloop", "--backlog", "2048", "--log-level", "warning"]


def _uvicorn(binary, port, workers, _timeout_s):
    return [binary, "-m", "uvicorn", "--app-dir", LOADTEST, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers)] + UVICORN + ["asgi_demo:app"]


def _hypercorn(binary, port, workers, _timeout_s):
    return [binary, "--bind", "127.0.0.1:%d" % port, "--workers", str(workers)] + HYPERCORN + [
        os.path.join(LOADTEST, "asgi_demo.py") + ":app"]


def _uwsgi(binary, port, workers, _timeout_s):
    # --http-socket, not --http11-socket: with keep-alive each uWSGI worker serves one
    # connection until it closes, so all but `workers` of wrk's connections would starve.
    # It closes after each response without saying so, which wrk counts as a read
    # error: say so.
    return [binary, "--plugin", "python3", "--http-socket", "127.0.0.1:%d" % port,
            "--add-header", "Connection: close",
            "--processes", str(workers), "--master", "--chdir", LOADTEST,
            "--module", "wsgi_demo:app", "--need-app", "--die-on-term", "--disable-logging"]


@dataclass(frozen=True)
class Peer:
    name: str
    binary: str                    # the executable, by default
    packages: str                  # the Debian packages that install it
    color: str                     # its bars and lines in the charts
    hatch: str                     # its bars' hatch: "//" a Python server, "xx" a reference
    serves_app: bool = True        # runs the app (wsgi_demo.py); False: a fixed answer, no Python
    interface: str = "wsgi"        # what it serves: "wsgi" (wsgi_demo.py) or "asgi" (asgi_demo.py)
    modules: tuple = ()            # Python modules it needs in Debian's Python (uvloop...)
    in_ratios: bool = True         # compared in ratios and "vs" columns; False: a reference
    label: str = ""                # its name in tables and charts; empty: "<name> (py3.11)"
    workloads: tuple = ()          # the workloads it has a handler for; empty: every one
    threads_per_worker: int = 1    # requests one worker process serves at once
    threads_args: object = None    # n -> argv for n threads per worker, for the workloads that set
                                   # threads (sleep-tN); None: it has none, those are skipped
    binary_option: str = ""        # the runner's flag that names another executable
    command: object = None         # (binary, port, workers, timeout_s) -> argv, for app servers
    instance: object = None        # (binary, port, workers, connections) -> an instance with its
                                   # own configuration (.command, .conf, .conf_path, .prefix, .remove())
    version: object = None         # binary -> version text, for a reference's context line
    note: str = ""                 # a note in the report when it runs
    reference_intro: str = ""      # a reference's headline table: what its ratio means

    def skip_reason(self, workload):
        """Why this peer does not run `workload`, or None if it does."""
        threads = getattr(WORKLOADS.get(workload), "threads", 0)
        if not self.workloads or workload in self.workloads:
            if threads and self.threads_args is None:
                return ("%s has no threads per worker; '%s' runs %d in each" % (
                    self.name, workload, threads))
            return None
        return ("%s is a reference for %s only (a fixed string, no Python); it has no handler "
                "for '%s'" % (self.name, ", ".join(self.workloads), workload))


PEERS = {p.name: p for p in (
    Peer("gunicorn", "/usr/bin/gunicorn", "gunicorn", "#9467bd", "//", command=_gunicorn([])),
    Peer("gunicorn-gthread", "/usr/bin/gunicorn", "gunicorn", "#c5b0d5", "//",
         command=_gunicorn(GUNICORN_GTHREAD), threads_per_worker=GTHREAD_THREADS,
         threads_args=lambda n: ["--threads", str(n)]),  # after GUNICORN_GTHREAD's: the last wins
    Peer("uwsgi", "/usr/bin/uwsgi", "uwsgi uwsgi-plugin-python3", "#8c564b", "//", command=_uwsgi,
         threads_args=lambda n: ["--threads", str(n)]),
    Peer("uvicorn", PYTHON, "python3-uvicorn python3-uvloop python3-httptools", "#d62728", "//",
         interface="asgi", modules=("uvicorn", "uvloop", "httptools"), command=_uvicorn),
    Peer("hypercorn", "/usr/bin/hypercorn", "python3-hypercorn python3-uvloop", "#e377c2", "//",
         interface="asgi", modules=("hypercorn", "uvloop"), command=_hypercorn),
    Peer("nginx", nginx.BINARY, "nginx", "#17becf", "xx", serves_app=False, in_ratios=False,
         label=nginx.LABEL, workloads=nginx.WORKLOADS, binary_option="--nginx",
         instance=nginx.Instance, version=nginx.version,
         note="%s is a reference, not a peer: Debian's nginx answering GET /hello with a fixed "
              "string from its configuration (no Python, no handler), as many worker processes "
              "as the cell's workers, keep-alive at nginx's defaults, no access log. It shows "
              "what an HTTP server in C reaches on this machine with the same wrk; it runs the "
              "workloads that send GET /hello only (%s)." % (nginx.LABEL, ", ".join(nginx.WORKLOADS)),
         reference_intro="in brackets the ratio to nginx answering the same `GET /hello` with a "
                         "fixed string from its configuration, with as many worker processes, in "
                         "this run: the share of a C server's rate with no Python at all that each "
                         "server keeps."),
)}

APP_PEERS = tuple(name for name, p in PEERS.items() if p.serves_app)
WSGI_PEERS = tuple(name for name in APP_PEERS if PEERS[name].interface == "wsgi")
ASGI_PEERS = tuple(name for name in APP_PEERS if PEERS[name].interface == "asgi")
