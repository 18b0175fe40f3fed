"""Single-thread rate of demo handlers in the Python that runs this script.

No HTTP: each handler is called in a loop, one thread, with a Request built
as the server builds it and the result converted as the server converts it.
The runner starts this once per Python build, so that efficiency is measured
against the same build the server embeds:

    ideal(handler, build) = cores x rate(handler, build)

    PYTHON loadtest/handler_rate.py --app-root . --seconds 1 --repeat 3 \
        '/fib?n=25' '/primes?limit=20000'

Prints one JSON object: the interpreter (version, build, GIL) and, per target,
every repeat's calls/seconds and the best rate (the run least disturbed by
whatever else shares the cores).
"""

import argparse
import importlib
import json
import os
import platform
import sys
import sysconfig
import time


def measure(call, seconds):
    """Calls `call` until `seconds` have passed; returns (calls, elapsed)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        call()
        calls += 1
        now = time.perf_counter()
    return calls, now - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--app", default="handlers.demo")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("targets", nargs="+", help="GET targets, e.g. '/fib?n=25'")
    args = parser.parse_args()

    import gilgamesh_standin  # beside this file: sys.path[0]

    gilgamesh_standin.install()
    sys.path.insert(0, os.path.abspath(args.app_root))
    importlib.import_module(args.app)

    gil_disabled_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    is_gil_enabled = getattr(sys, "_is_gil_enabled", lambda: True)
    out = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "build": "free-threaded" if gil_disabled_build else "default",
        "gil_enabled": is_gil_enabled(),
        "seconds_per_repeat": args.seconds,
        "targets": {},
    }
    for target in args.targets:
        path, _, query = target.partition("?")
        handler = gilgamesh_standin.find_handler("GET", path)

        def call(path=path, query=query, handler=handler):
            request = gilgamesh_standin.Request("GET", path, query, [], b"", "-")
            status = gilgamesh_standin.call(handler, request)[0]
            if not 200 <= status < 300:
                raise SystemExit("%s answered %d; cannot time a failing handler" % (target, status))

        measure(call, min(0.2, args.seconds))  # warm-up: imports, caches, specialisation
        runs = []
        for _ in range(args.repeat):
            calls, elapsed = measure(call, args.seconds)
            runs.append({"calls": calls, "seconds": elapsed, "per_s": calls / elapsed})
        out["targets"][target] = {
            "route": path,
            "runs": runs,
            "per_s": max(r["per_s"] for r in runs),
            "ms_per_call": 1000.0 / max(r["per_s"] for r in runs),
        }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
