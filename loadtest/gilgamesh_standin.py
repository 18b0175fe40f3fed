"""A small stand-in for the `gilgamesh` module that exists only inside the server.

Two users, both outside the server:
  * handler_rate.py times handler functions directly in each Python build;
  * wsgi_demo.py serves the same handlers under gunicorn and uWSGI.

It mirrors the handler API (route, Request, Response, HTTPError, worker_info)
and how the server turns a handler's result into a response. Install it with
`install()` before importing the app; never put it where the server looks,
because there the real module must win.
"""

import json as _json
import os
import sys
import threading
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import parse_qsl

__version__ = "standin"
_routes = []  # (path, methods, handler, doc), as the real module keeps them
_strategy = os.environ.get("GILGAMESH_STANDIN_STRATEGY", "standin")


def _reason(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP %d" % status


class HTTPError(Exception):
    def __init__(self, status, message=None):
        status = int(status)
        if not 400 <= status <= 599:
            raise ValueError("HTTPError status must be 400..599, got %d" % status)
        self.status = status
        self.message = _reason(status) if message is None else str(message)
        super().__init__(status, self.message)


class Response:
    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(self, body=b"", status=200, headers=None, content_type=None):
        self.body = body
        self.status = status
        self.headers = headers
        self.content_type = content_type


class Headers(Mapping):
    """Case-insensitive request headers; repeated fields join with ', '."""

    def __init__(self, raw):
        self._raw = list(raw)
        self._map = {}
        for name, value in self._raw:
            key = name.lower()
            self._map[key] = self._map[key] + ", " + value if key in self._map else value

    def __getitem__(self, name):
        return self._map[name.lower()]

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def get(self, name, default=None):
        return self._map.get(name.lower(), default)

    def getall(self, name):
        key = name.lower()
        return [v for n, v in self._raw if n.lower() == key]

    def raw(self):
        return list(self._raw)


class Request:
    def __init__(self, method, path, query_string="", raw_headers=(), body=b"", request_id="-"):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = Headers(raw_headers)
        self.body = body
        self.request_id = request_id
        self.query = dict(parse_qsl(query_string, keep_blank_values=True))

    def query_list(self):
        return parse_qsl(self.query_string, keep_blank_values=True)

    def json(self):
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, "request body is not valid JSON: %s" % e) from None


def route(path, methods=("GET",)):
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(m.upper() for m in methods)

    def decorator(handler):
        doc = (handler.__doc__ or "").strip().splitlines()
        _routes.append((path, methods, handler, doc[0].strip() if doc else ""))
        return handler

    return decorator


def worker_info():
    return {"strategy": _strategy, "worker": -1, "interpreter_id": 0,
            "pid": os.getpid(), "thread_id": threading.get_ident()}


# --- what the server does around a handler ---------------------------------

def find_handler(method, path):
    """The handler for (method, path), or an HTTPError 404/405 like the server's."""
    allowed = False
    for route_path, methods, handler, _doc in _routes:
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
