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


def _command(python, targets, app_root, app, seconds, repeat, extra):
    return [python, SCRIPT, "--app-root", app_root, "--app", app, "--seconds", str(seconds),
            "--repeat", str(repeat)] + list(extra) + sorted(targets)


def _start(owned, cmd, cpus):
    return owned.popen(cmd, cpus=cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))


def _collect(owned, proc, python, timeout):
    """handler_rate.py's JSON from `proc`, or {"error": ...}."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        owned.stop(proc, grace=1.0)
        return {"python": python, "error": "timed out"}
    owned.stop(proc)
    if proc.returncode != 0:
        return {"python": python, "error": "exit %d: %s" % (proc.returncode, err.strip()[-500:])}
    return json.loads(out)


def _timeout(targets, seconds, repeat):
    return 60 + (len(targets) or 16) * (repeat + 1) * seconds * 4


def measure(owned, python, targets, app_root, app, seconds, repeat, extra=(), cpus=None):
    """The rates of `targets` (GET targets; `extra` may name more handler_rate.py
    flags: --wsgi, --pythonpath, --requests...) in `python`, run on `cpus` (the servers'
    when they are pinned: a rate is one of their cores'): handler_rate.py's JSON, or
    {"error": ...} if that interpreter is missing or the measurement failed."""
    if not os.access(python, os.X_OK):
        return {"python": python, "error": "interpreter not found"}
    proc = _start(owned, _command(python, targets, app_root, app, seconds, repeat, extra), cpus)
    return _collect(owned, proc, python, _timeout(targets, seconds, repeat))


def measure_side_by_side(owned, python, copies, targets, app_root, app, seconds, repeat, extra=(),
                         cpus=None):
    """What `copies` single-thread loops give together when they run at once, the way a
    server's workers do: `copies` handler_rate.py processes started together (on `cpus`,
    the servers', when they are pinned). A machine whose cores share a physical core (SMT), or a
    VM whose vCPUs share the host's, gives each of them less than one loop alone gets; the
    ideal (cores x the single-thread rate) does not see it. {"copies": n, "targets":
    {target: {"per_s": the copies' best rates summed, "per_copy": [each copy's best]}}},
    or {"error": ...}."""
    if not os.access(python, os.X_OK):
        return {"python": python, "error": "interpreter not found"}
    cmd = _command(python, targets, app_root, app, seconds, repeat, extra)
    procs = [_start(owned, cmd, cpus) for _ in range(copies)]
    results = [_collect(owned, proc, python, _timeout(targets, seconds, repeat)) for proc in procs]
    failed = [r for r in results if "error" in r]
    if failed:
        return {"python": python, "error": failed[0]["error"]}
    combined = {}
    for name in results[0]["targets"]:
        per_copy = [r["targets"][name]["per_s"] for r in results]
        combined[name] = {"per_s": sum(per_copy), "per_copy": per_copy}
    return {"python": python, "copies": copies, "targets": combined}
