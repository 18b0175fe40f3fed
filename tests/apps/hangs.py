"""Test app: handlers that hang, for --timeout, interruption and replacement.

HANGS_MARKER_DIR (environment): where /side-effect leaves its marker files.
HANGS_IMPORT_DELAY (environment): seconds the import sleeps (a slow start-up).
"""

import os
import time

import gilgamesh

_delay = float(os.environ.get("HANGS_IMPORT_DELAY", "0") or 0)
if _delay:
    time.sleep(_delay)  # a slow import, so the server is observably "starting"


@gilgamesh.route("/hello")
def hello(request):
    """Answers at once: proves a worker is free."""
    return "hello"


@gilgamesh.route("/spin")
def spin(request):
    """A pure-Python loop that never ends: stopped only by an interrupt."""
    n = 0
    while True:
        n += 1


@gilgamesh.route("/spin-catching")
def spin_catching(request):
    """Loops forever and swallows every Exception, as careless code does."""
    n = 0
    while True:
        try:
            n += 1
        except Exception:
            pass


@gilgamesh.route("/sleep")
def sleep_forever(request):
    """Blocked in C for an hour (time.sleep): cannot be interrupted, only abandoned or killed."""
    time.sleep(3600)
    return "woke up"


@gilgamesh.route("/block")
def block(request):
    """Sleeps ?s= seconds (default 1), then answers: keeps a worker busy for a while."""
    time.sleep(float(request.query.get("s", "1")))
    return {"blocked_s": float(request.query.get("s", "1"))}


@gilgamesh.route("/side-effect")
def side_effect(request):
    """Leaves a marker file named ?key= in HANGS_MARKER_DIR: proof that the handler ran."""
    path = os.path.join(os.environ["HANGS_MARKER_DIR"], request.query["key"])
    with open(path, "w") as f:
        f.write("ran")
    return {"ran": request.query["key"]}


@gilgamesh.route("/whoami")
def whoami(request):
    """The worker that answers."""
    return gilgamesh.worker_info()
