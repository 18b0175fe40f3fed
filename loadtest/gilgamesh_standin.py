"""A small stand-in for the `gilgamesh` module that exists only inside the server.

Three users, all outside the server:
  * handler_rate.py times handler functions (or a WSGI or ASGI app) directly in each Python build;
  * wsgi_demo.py serves the same handlers (or WSGI app) under gunicorn and uWSGI;
  * asgi_demo.py serves the same ASGI app under uvicorn and Hypercorn.

It runs the server's own Python half of the handler API
(pyworkers/embedding/gilgamesh_api.py: route, Request, Response, HTTPError) and mirrors
worker_info() and how the server turns a handler's result into a response. Install it with
`install()` before importing the app; never put it where the server looks,
because there the real module must win.
"""

import json as _json
import os
import sys
import threading
from urllib.parse import parse_qsl

__version__ = "standin"
_strategy = os.environ.get("GILGAMESH_STANDIN_STRATEGY", "standin")


def _parse_query(query_string):
    """What the server's C++ _parse_query gives: (name, value) pairs, blanks kept."""
    return parse_qsl(query_string, keep_blank_values=True)


# route, Request, Response, HTTPError, Headers: the very code the server embeds.
_API = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "pyworkers",
                    "embedding", "gilgamesh_api.py")
with open(_API, encoding="utf-8") as _f:
    exec(compile(_f.read(), _API, "exec"), globals())


def _log(line):
    """What wsgi.errors writes to: the server log there, stderr here."""
    sys.stderr.write(line + "\n")


def wsgi_adapter():
    """The server's own Python half of its WSGI adapter (pyworkers/apps/gilgamesh_wsgi.py:
    resolve, run, ErrorStream, FileWrapper) as a module. Call install() first."""
    import types
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "pyworkers",
                        "apps", "gilgamesh_wsgi.py")
    module = types.ModuleType("_gilgamesh_wsgi")
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)
    return module


def asgi_adapter():
    """The server's own Python half of its ASGI adapter (pyworkers/apps/gilgamesh_asgi.py:
    resolve, Worker, Request) as a module, with the WSGI half it imports resolve() from
    registered as `_gilgamesh_wsgi`. Call install() first."""
    import types
    sys.modules.setdefault("_gilgamesh_wsgi", wsgi_adapter())
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "pyworkers",
                        "apps", "gilgamesh_asgi.py")
    module = types.ModuleType("_gilgamesh_asgi")
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)
    return module


def worker_info():
    return {"strategy": _strategy, "worker": -1, "interpreter_id": 0,
            "pid": os.getpid(), "thread_id": threading.get_ident()}


# --- what the server does around a handler ---------------------------------

def find_handler(method, path):
    """The handler for (method, path), or an HTTPError 404/405 like the server's."""
    allowed = False
    for route_path, methods, handler, _doc, *_ in _routes:
        if route_path == path:
            if method in methods or (method == "HEAD" and "GET" in methods):
                return handler
            allowed = True
    if allowed:
        raise HTTPError(405, "method %s not allowed on %s" % (method, path))
    raise HTTPError(404, "no route for %s" % path)


def _body_bytes(body):
    if isinstance(body, (dict, list)):
        return _json.dumps(body).encode(), "application/json"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), "application/octet-stream"
    raise TypeError("handler returned %s" % type(body).__name__)


def error_response(status, message, request_id="-"):
    body = _json.dumps({"error": message, "request_id": request_id}).encode()
    return status, "application/json", [], body


def to_response(result):
    """A handler's return value as (status, content_type, headers, body bytes)."""
    if result is None:
        return 204, None, [], b""
    if isinstance(result, Response):
        body, ctype = (b"", None) if result.body is None else _body_bytes(result.body)
        headers = result.headers or []
        if isinstance(headers, dict):
            headers = list(headers.items())
        return (int(result.status), result.content_type or ctype,
                [(str(n), str(v)) for n, v in headers], body)
    body, ctype = _body_bytes(result)
    return 200, ctype, [], body


def call(handler, request):
    """Runs a handler as the server would: HTTPError becomes its status."""
    try:
        return to_response(handler(request))
    except HTTPError as e:
        return error_response(e.status, e.message, request.request_id)


def install():
    """Makes `import gilgamesh` give this module (outside the server only)."""
    sys.modules["gilgamesh"] = sys.modules[__name__]
