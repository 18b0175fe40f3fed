"""Single-thread rate of handlers, or of a WSGI or ASGI app, in the Python that runs this script.

No HTTP: each handler is called in a loop, one thread, with a Request built
as the server builds it and the result converted as the server converts it;
a WSGI app (--wsgi) is called with the environ the server builds, through the
server's own calling protocol (pyworkers/apps/gilgamesh_wsgi.py); an ASGI app
(--asgi) with the scope the server builds, as a task on an event loop, through
the server's own Python half (pyworkers/apps/gilgamesh_asgi.py).
The runner starts this once per Python build, so that efficiency is measured
against the same build the server embeds:

    ideal(handler, build) = cores x rate(handler, build)

    PYTHON loadtest/handler_rate.py --app-root . --seconds 1 --repeat 3 \
        '/fib?n=25' '/primes?limit=20000'
    PYTHON loadtest/handler_rate.py --wsgi app:app --pythonpath DIR --requests FILE
    PYTHON loadtest/handler_rate.py --asgi asgi_bench:app --pythonpath loadtest '/fib?n=25'

Prints one JSON object: the interpreter (version, build, GIL) and, per target,
every repeat's calls/seconds and the best rate (the run least disturbed by
whatever else shares the cores), with the CPU time a call took in that repeat
(far below its wall time for a handler that waits: the ideal does not apply).
"""

import argparse
import importlib
import json
import os
import platform
import sys
import sysconfig
import time

import gilgamesh_standin  # beside this file: sys.path[0]


def optimization():
    """How this CPython was compiled, where it says: "PGO+LTO" (`make build PGO=full`),
    "PGO" (the default bundled build), "LTO", "plain" (a bundled build with PGO=0), or None
    when its configure arguments do not tell (Debian builds its own with PGO+LTO through
    its packaging, which its configure arguments do not show). Two builds' rates differ by 10-20 %."""
    config = sysconfig.get_config_var("CONFIG_ARGS") or ""
    pgo = "--enable-optimizations" in config
    lto = "--with-lto" in config
    if pgo or lto:
        return "PGO+LTO" if pgo and lto else "PGO" if pgo else "LTO"
    if os.path.exists(os.path.join(sys.prefix, "gilgamesh-patches")):  # scripts/build-python.sh made it
        return "plain"
    return None


def measure(call, seconds):
    """Calls `call` until `seconds` have passed; returns (calls, elapsed, CPU seconds
    this process used meanwhile: far below elapsed for a handler that waits)."""
    calls = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        call()
        calls += 1
        now = time.perf_counter()
    return calls, now - start, time.process_time() - cpu_start


def read_requests(path):
    """The runner's requests file: (label, method, target, content type, body bytes)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            _weight, method, target, ctype, body_file, label = line.split("\t", 5)
            body = b""
            if body_file:
                with open(body_file, "rb") as b:
                    body = b.read()
            out.append((label, method, target, ctype, body))
    return out


def route_caller(method, target, ctype, body):
    """One call of the @gilgamesh.route handler for the request, as the server makes it."""
    path, _, query = target.partition("?")
    handler = gilgamesh_standin.find_handler(method, path)
    headers = [("Content-Type", ctype)] if ctype else []

    def call():
        request = gilgamesh_standin.Request(method, path, query, headers, body, "-")
        return gilgamesh_standin.call(handler, request)[0]
    return call


def wsgi_caller(app, adapter, method, target, ctype, body, root_path):
    """One call of the WSGI app for the request: the environ the server builds, the
    server's own calling protocol (start_response, iteration, close)."""
    from io import BytesIO
    from urllib.parse import unquote_to_bytes
    path, _, query = target.partition("?")
    path = unquote_to_bytes(path).decode("latin-1")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        path = path[len(root_path):]
    base = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": root_path, "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "REQUEST_URI": target, "RAW_URI": target,
        "SERVER_SOFTWARE": "gilgamesh-handler-rate", "HTTP_HOST": "127.0.0.1:8080",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.input_terminated": True,
        "wsgi.file_wrapper": adapter.FileWrapper, "gilgamesh.request_id": "-",
    }
    if body or method in ("POST", "PUT", "PATCH"):
        base["CONTENT_LENGTH"] = str(len(body))
    if ctype:
        base["CONTENT_TYPE"] = ctype

    def call():
        environ = dict(base)
        environ["wsgi.input"] = BytesIO(body)
        environ["wsgi.errors"] = adapter.ErrorStream("-")
        status = adapter.run(app, environ, 1 << 40).status
        return int(status[:3]) if status else 500
    return call


def asgi_caller(app, adapter, method, target, ctype, body, root_path):
    """One call of the ASGI app for the request, as the server makes it: the server's own
    Python half (pyworkers/apps/gilgamesh_asgi.py, DirectCaller) starts the request's task
    on a worker's event loop with the scope the server builds; the loop runs until the task
    ends. Returns the status the app answered (500 for an error, 504 for a timeout)."""
    headers = []
    if ctype:
        headers.append((b"content-type", ctype.encode("latin-1")))
    if body or method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", b"%d" % len(body)))
    caller = adapter.DirectCaller(app, lifespan="off", root_path=root_path)

    def call():
        status, error = caller.call(method, target, headers, body)
        if error:
            sys.stderr.write("%s %s: %s\n" % (method, target, error))
        return status
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--app", default="handlers.demo")
    parser.add_argument("--wsgi", help="MODULE:CALLABLE of a WSGI app, instead of --app")
    parser.add_argument("--asgi", help="MODULE:APP of an ASGI app, instead of --app")
    parser.add_argument("--pythonpath", action="append", default=[], help="prepended to sys.path")
    parser.add_argument("--root-path", default="", help="SCRIPT_NAME, as the server's --root-path")
    parser.add_argument("--requests", help="the runner's requests file (METHOD, target, body...)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("targets", nargs="*", help="GET targets, e.g. '/fib?n=25'")
    args = parser.parse_args()

    gilgamesh_standin.install()
    sys.path[0:0] = [os.path.abspath(p) for p in args.pythonpath] + [os.path.abspath(args.app_root)]
    requests = [(t, "GET", t, "", b"") for t in args.targets]
    if args.requests:
        requests += read_requests(args.requests)
    if args.wsgi:
        adapter = gilgamesh_standin.wsgi_adapter()
        module, _, expression = args.wsgi.partition(":")
        app = adapter.resolve(importlib.import_module(module), expression or "application")
    elif args.asgi:
        adapter = gilgamesh_standin.asgi_adapter()
        module, _, expression = args.asgi.partition(":")
        app = adapter.resolve(importlib.import_module(module), expression or "app")
    else:
        importlib.import_module(args.app)

    gil_disabled_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    is_gil_enabled = getattr(sys, "_is_gil_enabled", lambda: True)
    out = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "build": "free-threaded" if gil_disabled_build else "default",
        "gil_enabled": is_gil_enabled(),
        "optimization": optimization(),
        "seconds_per_repeat": args.seconds,
        "targets": {},
    }
    for label, method, target, ctype, body in requests:
        if args.wsgi:
            call_once = wsgi_caller(app, adapter, method, target, ctype, body, args.root_path)
        elif args.asgi:
            call_once = asgi_caller(app, adapter, method, target, ctype, body, args.root_path)
        else:
            try:
                call_once = route_caller(method, target, ctype, body)
            except gilgamesh_standin.HTTPError as e:
                raise SystemExit("%s: %s (only exact paths can be timed outside the server)"
                                 % (label, e.message))

        def call(call_once=call_once, label=label):
            status = call_once()
            if not 200 <= status < 300:
                raise SystemExit("%s answered %d; cannot time a failing handler" % (label, status))

        measure(call, min(0.2, args.seconds))  # warm-up: imports, caches, specialisation
        runs = []
        for _ in range(args.repeat):
            calls, elapsed, cpu = measure(call, args.seconds)
            runs.append({"calls": calls, "seconds": elapsed, "per_s": calls / elapsed,
                         "cpu_seconds": cpu})
        best = max(runs, key=lambda r: r["per_s"])
        out["targets"][label] = {
            "route": target.partition("?")[0],
            "runs": runs,
            "per_s": best["per_s"],
            "ms_per_call": 1000.0 / best["per_s"],
            "cpu_ms_per_call": 1000.0 * best["cpu_seconds"] / best["calls"],
        }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
