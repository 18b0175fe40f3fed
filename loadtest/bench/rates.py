"""Single-thread handler rates, once per Python build (see handler_rate.py)."""

import json
import os
import subprocess

LOADTEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(LOADTEST, "handler_rate.py")


def python_cache():
    return os.environ.get("GILGAMESH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gilgamesh")


def default_pythons(version="3.13.5"):
    """build -> interpreter path, where the gilgamesh build scripts put them.
    GILGAMESH_PYTHON_DEFAULT / GILGAMESH_PYTHON_FREE_THREADED override."""
    root = os.path.join(python_cache(), "python-" + version)
    return {
        "default": os.environ.get("GILGAMESH_PYTHON_DEFAULT")
        or os.path.join(root, "default", "bin", "python" + version.rsplit(".", 1)[0]),
        "free-threaded": os.environ.get("GILGAMESH_PYTHON_FREE_THREADED")
        or os.path.join(root, "free-threaded", "bin", "python" + version.rsplit(".", 1)[0] + "t"),
    }


def measure(owned, python, targets, app_root, app, seconds, repeat, extra=(), cpus=None):
    """The rates of `targets` (GET targets; `extra` may name more handler_rate.py
    flags: --wsgi, --pythonpath, --requests...) in `python`, run on `cpus` (the servers'
    when they are pinned: a rate is one of their cores'): handler_rate.py's JSON, or
    {"error": ...} if that interpreter is missing or the measurement failed."""
    if not os.access(python, os.X_OK):
        return {"python": python, "error": "interpreter not found"}
    cmd = [python, SCRIPT, "--app-root", app_root, "--app", app, "--seconds", str(seconds),
           "--repeat", str(repeat)] + list(extra) + sorted(targets)
    proc = owned.popen(cmd, cpus=cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        out, err = proc.communicate(timeout=60 + (len(targets) or 16) * (repeat + 1) * seconds * 4)
    except subprocess.TimeoutExpired:
        owned.stop(proc, grace=1.0)
        return {"python": python, "error": "timed out"}
    owned.stop(proc)
    if proc.returncode != 0:
        return {"python": python, "error": "exit %d: %s" % (proc.returncode, err.strip()[-500:])}
    return json.loads(out)
