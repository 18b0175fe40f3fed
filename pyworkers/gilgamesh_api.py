"""The pure-Python part of the `gilgamesh` handler API.

The server embeds this file in its C++ `gilgamesh` module (built into the
binary; see gilgamesh_module.cpp) and runs it in the module's namespace in
every interpreter, next to the C functions `_parse_query` and `worker_info`.
loadtest/gilgamesh_standin.py runs the same file outside the server.
Request parses its query and headers lazily, so a handler that never reads
them costs nothing for them.
"""
import json as _json
from collections.abc import Mapping as _Mapping
from http import HTTPStatus as _HTTPStatus


def _reason(status):
    try:
        return _HTTPStatus(status).phrase
    except ValueError:
        return "HTTP %d" % status


class HTTPError(Exception):
    """Raise to answer with `status` and a JSON body {"error": message}."""

    def __init__(self, status, message=None):
        status = int(status)
        if not 400 <= status <= 599:
            raise ValueError("HTTPError status must be 400..599, got %d" % status)
        self.status = status
        self.message = _reason(status) if message is None else str(message)
        super().__init__(status, self.message)

    def __str__(self):
        return "%d: %s" % (self.status, self.message)


class HandlerTimeout(BaseException):
    """Raised by the server inside a handler still running at its deadline (--timeout).

    A BaseException, like KeyboardInterrupt: `except Exception` does not catch it.
    Clean up in `finally` blocks; do not swallow it.
    """


class Response:
    """A handler result given as it is: body, status, headers, content type."""

    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(self, body=b"", status=200, headers=None, content_type=None):
        self.body = body
        self.status = status
        self.headers = headers
        self.content_type = content_type

    def __repr__(self):
        return "Response(status=%r, content_type=%r)" % (self.status, self.content_type)


class Headers(_Mapping):
    """Read-only, case-insensitive request headers. Repeated fields join with ', '."""

    __slots__ = ("_raw", "_map")

    def __init__(self, raw):
        self._raw = raw
        self._map = None

    def _index(self):
        m = self._map
        if m is None:
            m = {}
            for name, value in self._raw:
                key = name.lower()
                m[key] = m[key] + ", " + value if key in m else value
            self._map = m
        return m

    def __getitem__(self, name):
        return self._index()[name.lower()]

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._index()

    def __iter__(self):
        return iter(self._index())

    def __len__(self):
        return len(self._index())

    def get(self, name, default=None):
        return self._index().get(name.lower(), default)

    def getall(self, name):
        """Every value of a repeated field, in order."""
        key = name.lower()
        return [v for n, v in self._raw if n.lower() == key]

    def raw(self):
        """The (name, value) pairs as received."""
        return list(self._raw)

    def __repr__(self):
        return "Headers(%r)" % (self._raw,)


class Request:
    """One HTTP request, as a handler sees it."""

    __slots__ = ("method", "path", "query_string", "body", "request_id",
                 "_raw_headers", "_headers", "_query")

    def __init__(self, method, path, query_string, raw_headers, body, request_id):
        self.method = method
        self.path = path
        self.query_string = query_string
        self._raw_headers = raw_headers
        self.body = body
        self.request_id = request_id
        self._headers = None
        self._query = None

    @property
    def headers(self):
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._raw_headers)
        return h

    @property
    def query(self):
        """Query parameters as a dict of str to str; the last of repeated names wins."""
        q = self._query
        if q is None:
            q = self._query = dict(_parse_query(self.query_string))
        return q

    def query_list(self):
        """Query parameters as (name, value) pairs, repeated names kept."""
        return _parse_query(self.query_string)

    def json(self):
        """The body parsed as JSON; a body that is not JSON raises HTTPError(400)."""
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, "request body is not valid JSON: %s" % e) from None

    def __repr__(self):
        return "<Request %s %s>" % (self.method, self.path)


_routes = []


def _import_app(name):
    """Import the app; return it with the warnings that say an extension turned the GIL on."""
    import importlib
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        module = importlib.import_module(name)
    gil_warnings = []
    for w in caught:
        text = str(w.message)
        if "GIL" in text and "enabled" in text:
            gil_warnings.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return module, gil_warnings


def route(path, methods=("GET",)):
    """Register `handler(request)` for `path` and `methods`."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("route path must be a str starting with '/', got %r" % (path,))
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(m.upper() for m in methods)
    if not methods or not all(m.isalpha() for m in methods):
        raise ValueError("route methods must be HTTP method names, got %r" % (methods,))

    def decorator(handler):
        doc = (handler.__doc__ or "").strip().splitlines()
        _routes.append((path, methods, handler, doc[0].strip() if doc else ""))
        return handler

    return decorator
