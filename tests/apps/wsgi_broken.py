"""Test app: a WSGI application that breaks PEP 3333 (or HTTP) in one way per path.
Every one of them must be answered 500 with a JSON error naming the request id,
and the worker must keep serving (/ok).

Markers (closed-<path name>) go to $GILGAMESH_TEST_MARKERS, as in wsgi_validated.py.
"""

import os

MARKERS = os.environ.get("GILGAMESH_TEST_MARKERS", "")


class Closing:
    def __init__(self, chunks, name):
        self.chunks = chunks
        self.name = name

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        if MARKERS:
            with open(os.path.join(MARKERS, "closed-" + self.name), "w") as f:
                f.write("closed\n")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    ok = [("Content-Type", "text/plain")]
    if path == "/ok":
        start_response("200 OK", ok)
        return [b"ok"]
    if path == "/no-start-response":
        return [b"body without a status"]
    if path == "/no-start-response-empty":
        return []
    if path == "/twice":
        start_response("200 OK", ok)
        start_response("201 Created", ok)
        return [b"twice"]
    if path == "/str-chunk":
        start_response("200 OK", ok)
        return Closing([b"bytes, then ", "a str"], "str-chunk")
    if path == "/str-write":
        write = start_response("200 OK", ok)
        write("a str")
        return []
    if path == "/raise":
        raise ValueError("the app failed")
    if path == "/raise-in-iterable":
        start_response("200 OK", ok)

        def gen():
            yield b"one"
            raise KeyError("in the iterable")
        return gen()
    if path == "/close-raises":
        class Bad:
            def __iter__(self):
                return iter([b"x"])

            def close(self):
                raise RuntimeError("close failed")
        start_response("200 OK", ok)
        return Bad()
    if path == "/bad-status-text":
        start_response("OK", ok)
        return [b"x"]
    if path == "/status-1xx":
        start_response("103 Early Hints", ok)
        return [b"x"]
    if path == "/status-999":
        start_response("999 Whatever", ok)
        return [b"x"]
    if path == "/status-not-str":
        start_response(200, ok)
        return [b"x"]
    if path == "/header-crlf":
        start_response("200 OK", ok + [("X-Injected", "a\r\nSet-Cookie: evil=1")])
        return [b"x"]
    if path == "/header-nul":
        start_response("200 OK", ok + [("X-Nul", "a\x00b")])
        return [b"x"]
    if path == "/header-bad-name":
        start_response("200 OK", ok + [("Bad Name", "v")])
        return [b"x"]
    if path == "/header-not-latin1":
        start_response("200 OK", ok + [("X-Snowman", "\u2603")])
        return [b"x"]
    if path == "/header-not-tuple":
        start_response("200 OK", [["Content-Type", "text/plain"]])
        return [b"x"]
    if path == "/headers-not-list":
        start_response("200 OK", {"Content-Type": "text/plain"})
        return [b"x"]
    if path == "/content-type-crlf":
        start_response("200 OK", [("Content-Type", "text/plain\r\nX-Evil: 1")])
        return [b"x"]
    if path == "/huge-headers":
        start_response("200 OK", ok + [("X-Big-%d" % i, "v" * 1000) for i in range(80)])
        return [b"x"]
    if path == "/not-iterable":
        start_response("200 OK", ok)
        return 42
    start_response("404 Not Found", ok)
    return [b"no such route"]


def create_app():
    """A factory, as in --wsgi 'wsgi_broken:create_app()'."""
    return app
