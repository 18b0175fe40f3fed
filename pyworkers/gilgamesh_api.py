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

    __slots__ = ("method", "path", "query_string", "body", "request_id", "path_params",
                 "_raw_headers", "_headers", "_query")

    def __init__(self, method, path, query_string, raw_headers, body, request_id,
                 path_params=None):
        self.method = method
        self.path = path
        self.query_string = query_string
        self._raw_headers = raw_headers
        self.body = body
        self.request_id = request_id
        # What a pattern such as /items/<int:item_id> captured, converted: {"item_id": 3}.
        self.path_params = {} if path_params is None else path_params
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
        ours = warnings.filters[0]
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            found = _foreign_extension(e)
            if found is None:
                raise
            raise ImportError("%s; %s" % (e, found), name=e.name, path=e.path) from e
        added = warnings.filters[:warnings.filters.index(ours)] if ours in warnings.filters else []
    # Filters the app set while it was imported outlive the block that recorded its warnings.
    for action, message, category, module_re, lineno in reversed(added):
        warnings.filterwarnings(action, message.pattern if message else "", category,
                                module_re.pattern if module_re else "", lineno)
    gil_warnings = []
    for w in caught:
        text = str(w.message)
        if "GIL" in text and "enabled" in text:
            gil_warnings.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return module, gil_warnings


def _foreign_extension(error):
    """If the module an ImportError names exists only as an extension built for
    another Python (say Debian's 3.11 packages on the path), a sentence that says so."""
    import importlib.machinery
    import os
    import re
    import sys
    import sysconfig
    if not error.name:
        return None
    names = [error.name]
    if getattr(error, "name_from", None):  # from package import name (3.12+)
        names.insert(0, "%s.%s" % (error.name, error.name_from))
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for full in names:
        parent, _, leaf = full.rpartition(".")
        if parent:
            # A package whose import failed has left sys.modules: look where it would be.
            dirs = list(getattr(sys.modules.get(parent), "__path__", None) or
                        [os.path.join(p or ".", *parent.split(".")) for p in sys.path])
        else:
            dirs = sys.path
        for folder in dirs:
            try:
                entries = sorted(os.listdir(folder or "."))
            except OSError:
                continue
            for entry in entries:
                if not (entry.startswith(leaf + ".") and entry.endswith(".so")):
                    continue
                suffix = entry[len(leaf):]
                if suffix in suffixes:
                    continue
                tag = suffix[1:-3]
                m = re.match(r"cpython-(\d)(\d+)(t?)-", tag)
                if m:
                    built_for = "CPython %s.%s%s" % (m.group(1), m.group(2),
                                                     " (free-threaded)" if m.group(3) else "")
                else:
                    built_for = "another Python (%s)" % tag
                here = "%d.%d" % sys.version_info[:2]
                build = "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "default"
                return ("%s is an extension built for %s, but gilgamesh embeds Python %s (%s build), "
                        "which cannot load it: install that package for Python %s (e.g. with pip "
                        "in a venv made by that Python) and pass its site-packages with --pythonpath"
                        % (os.path.join(folder, entry), built_for,
                           "%d.%d.%d" % sys.version_info[:3], build, here))
    return None


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
