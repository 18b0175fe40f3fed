"""Test app for the load runner: a small WSGI app, stdlib only, so that the
peers (Debian's Python 3.11) import it as gilgamesh (3.13) does.

  GET  /work?n=N   fib(N) in pure Python: CPU-bound
  POST /echo       the body back
"""

from urllib.parse import parse_qs


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/work":
        n = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["15"])[0])
        body = b"%d\n" % fib(min(n, 30))
    elif path == "/echo" and environ["REQUEST_METHOD"] == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
