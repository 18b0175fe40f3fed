"""Test app: a PEP 3333 application wrapped in wsgiref.validate.validator, with
the validator's warnings turned into errors, so any protocol slip of the
server (environ, input, errors, start_response, write, close) is a 500.

Routes (by PATH_INFO):
  /hello               b"hello"
  .../environ...       the str entries of the environ and the wsgi.* flags, as JSON
  /echo                POST: the body read with read(CONTENT_LENGTH), and its sha256
  /lines               POST: readline(), readline(2), readlines(), iteration, read past the end
  /big?size=N&chunk=K  N bytes from a generator in chunks of K (a pattern you can check): streams
  /list?size=N         N bytes of the same pattern as a list, with its length: collected whole
  /close?token=T       an iterable whose close() leaves a marker file closed-T
  /fail-midway?token=T an iterable that raises after one chunk; close() leaves closed-T
  /write               body given through write() and through the iterable
  /exc-before-body     error page: start_response again with exc_info before any body
  /exc-after-body      start_response with exc_info after body: the server re-raises
  /errors?line=L       writes L to wsgi.errors
  /file?size=N         N bytes through wsgi.file_wrapper
  /slow?ms=M&token=T   sleeps M ms, then answers; close() leaves closed-T

Markers go to $GILGAMESH_TEST_MARKERS (a directory), so that a test sees them
whatever worker (thread, interpreter or process) served the request.
"""

import hashlib
import io
import json
import os
import sys
import time
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

MARKERS = os.environ.get("GILGAMESH_TEST_MARKERS", "")


def _mark(name):
    if MARKERS:
        with open(os.path.join(MARKERS, name), "w") as f:
            f.write("%d\n" % os.getpid())


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response, value, status="200 OK"):
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _text(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _pattern(size):
    """size bytes of a repeating, position-dependent pattern."""
    unit = bytes(range(256)) * 64  # 16 KiB
    return (unit * (size // len(unit) + 1))[:size]


class ClosingIterable:
    def __init__(self, chunks, token, fail_after=None):
        self.chunks = chunks
        self.token = token
        self.fail_after = fail_after

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("failed midway on purpose")
            yield chunk

    def close(self):
        _mark("closed-" + self.token)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = _query(environ)
    if path == "/hello":
        return _text(start_response, b"hello")
    if "/environ" in path:
        out = {k: v for k, v in environ.items() if isinstance(v, str)}
        for k in ("wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
                  "wsgi.input_terminated"):
            out[k] = environ.get(k)
        out["file_wrapper"] = environ.get("wsgi.file_wrapper") is not None
        out["pid"] = os.getpid()
        return _json(start_response, out)
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        rest = environ["wsgi.input"].read(10)  # past the body: nothing
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("X-Sha256", hashlib.sha256(body).hexdigest()),
                                  ("X-After-Body", str(len(rest)))])
        return [body]
    if path == "/lines":
        stream = environ["wsgi.input"]
        first = stream.readline()
        limited = stream.readline(2)
        rest_of_line = stream.readline()
        remaining = stream.readlines()
        after = stream.read(100)
        return _json(start_response, {"first": first.decode(), "limited": limited.decode(),
                                      "rest_of_line": rest_of_line.decode(),
                                      "remaining": [l.decode() for l in remaining],
                                      "after": after.decode(),
                                      "iterated": None})
    if path == "/iterate":
        lines = [line.decode() for line in environ["wsgi.input"]]
        return _json(start_response, {"lines": lines})
    if path == "/big":
        size = int(q.get("size", "1000"))
        chunk = int(q.get("chunk", "65536"))
        data = _pattern(size)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (data[i:i + chunk] for i in range(0, size, chunk))
    if path == "/list":
        data = _pattern(int(q.get("size", "1000")))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data)))])
        return [data]
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingIterable([b"a", b"", b"b", b"c"], q["token"])
    if path == "/fail-midway":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingIterable([b"first", b"second"], q["token"], fail_after=1)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"")
        write(b"then ")
        return [b"iterated"]
    if path == "/exc-before-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("went wrong before the body")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"error page"]
    if path == "/exc-after-body":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial body")
        try:
            raise ValueError("went wrong after the body began")
        except ValueError:
            # The server must re-raise: the status can no longer change.
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"never sent"]
    if path == "/errors":
        errors = environ["wsgi.errors"]
        errors.write("wsgi.errors says: %s\n" % q.get("line", ""))
        errors.writelines(["two ", "parts\n", "unterminated"])
        errors.flush()
        return _text(start_response, b"logged")
    if path == "/file":
        size = int(q.get("size", "1000"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(_pattern(size)), 4096)
    if path == "/slow":
        time.sleep(int(q.get("ms", "100")) / 1000.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingIterable([b"slow"], q["token"])
    return _text(start_response, b"no such test route", "404 Not Found")


application = validator(app)
