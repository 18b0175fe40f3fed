"""What the peer servers (gunicorn, uWSGI) serve for the load runner: the same
app gilgamesh serves.

  * GILGAMESH_WSGI=MODULE:CALLABLE: that WSGI app, called as it is;
  * else the @gilgamesh.route handlers of GILGAMESH_APP (default handlers.demo),
    served through the stand-in of the gilgamesh module.

They run on Debian's Python 3.11, not 3.13: the report says so. Besides the
app it answers GET /healthz like the server does, so the runner can wait for
it the same way (the one thing added in front of a WSGI app).

    gunicorn --chdir loadtest -w 2 -b 127.0.0.1:8000 wsgi_demo:app
    uwsgi --plugin python3 --http-socket 127.0.0.1:8000 --processes 2 \
          --chdir loadtest --module wsgi_demo:app

Environment: GILGAMESH_WSGI, GILGAMESH_APP, GILGAMESH_APP_ROOT (default: the
repository root above this file), GILGAMESH_PYTHONPATH (directories, joined
with os.pathsep, put before it on sys.path), GILGAMESH_ROOT_PATH (SCRIPT_NAME,
as the server's --root-path).
"""

import importlib
import os
import sys
import traceback

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

import gilgamesh_standin  # noqa: E402

gilgamesh_standin.install()
sys.path[0:0] = [p for p in os.environ.get("GILGAMESH_PYTHONPATH", "").split(os.pathsep) if p] + \
    [os.environ.get("GILGAMESH_APP_ROOT", os.path.dirname(_here))]
_ROOT_PATH = os.environ.get("GILGAMESH_ROOT_PATH", "").rstrip("/")
_WSGI = os.environ.get("GILGAMESH_WSGI")
if _WSGI:
    _module, _, _expression = _WSGI.partition(":")
    _wsgi_app = gilgamesh_standin.wsgi_adapter().resolve(importlib.import_module(_module),
                                                         _expression or "application")
else:
    importlib.import_module(os.environ.get("GILGAMESH_APP", "handlers.demo"))

_STATUS_LINES = {}


def _status_line(code):
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = "%d %s" % (code, gilgamesh_standin._reason(code))
    return line


def _request_from(environ):
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").title(), value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        headers.append(("Content-Length", length))
    body = environ["wsgi.input"].read(int(length)) if length.isdigit() and int(length) > 0 else b""
    # PEP 3333 hands the path over as latin-1 decoded bytes.
    path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
    return gilgamesh_standin.Request(environ["REQUEST_METHOD"], path,
                                     environ.get("QUERY_STRING", ""), headers, body, "-")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    if _WSGI:
        if _ROOT_PATH:
            path = environ.get("PATH_INFO", "")
            if path == _ROOT_PATH or path.startswith(_ROOT_PATH + "/"):
                environ["PATH_INFO"] = path[len(_ROOT_PATH):]
            environ["SCRIPT_NAME"] = _ROOT_PATH
        return _wsgi_app(environ, start_response)
    try:
        request = _request_from(environ)
        handler = gilgamesh_standin.find_handler(request.method, request.path)
        status, ctype, headers, body = gilgamesh_standin.call(handler, request)
    except gilgamesh_standin.HTTPError as e:
        status, ctype, headers, body = gilgamesh_standin.error_response(e.status, e.message)
    except Exception as e:  # a handler bug is a 500, as in the server
        traceback.print_exc()
        status, ctype, headers, body = gilgamesh_standin.error_response(
            500, "%s: %s" % (type(e).__name__, e))
    out = list(headers)
    if ctype:
        out.append(("Content-Type", ctype))
    out.append(("Content-Length", str(len(body))))
    start_response(_status_line(status), out)
    return [body] if environ["REQUEST_METHOD"] != "HEAD" else [b""]
