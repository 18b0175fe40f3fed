"""gunicorn's own HTTP request-parser vectors, sent to the real server on a socket.

The vectors are tests/requests of gunicorn's source (Debian trixie's gunicorn source package,
fetched by scripts/fetch-parser-vectors.sh: `make parser-vectors`). Each is a .http file, the
bytes with CR LF, NUL and tab written as escapes (read here as gunicorn's tests/treq.py reads
them), and a .py file that names what gunicorn parses it to: `request = {...}` (a list of
them for pipelined requests) for a valid one, or the exception it raises (`request =
InvalidHeader`) for an invalid one.

- valid: every request is answered 200 by tests/apps/asgi_echo.py with the method, path,
  query, version, headers (in order; names compared without case) and body gunicorn names;
- invalid: no request is answered 2xx: the server refuses it (4xx, then closes) or closes.

gilgamesh requires Host on an HTTP/1.1 request (RFC 9112 3.2: a server MUST answer 400
without it); where a vector has none, `Host: h` is added after its request line (and left
out of the comparison) so that the rest of the vector is what is tested. Deliberate
differences from gunicorn are in DIFFERENT, each with its reason and what gilgamesh answers
instead; vectors that exercise one of gunicorn's settings (`cfg.set(...)`) or the PROXY
protocol are skipped, named. The parser is the I/O thread's, the same for every strategy:
the vectors run against one server."""

import importlib.machinery
import json
import re
import socket
import sys
import types
from urllib.parse import urlsplit

import pytest

from gilgamesh_harness import APPS_DIR, AsgiServer, RawConnection, parser_vectors_dir, strategies

VECTORS = parser_vectors_dir()

# name: (status gilgamesh answers, or None for a close without an answer; words of its body; why)
DIFFERENT = {
    "valid/009": (400, "ambiguous", "Transfer-Encoding beside Content-Length is refused (RFC 9112 6.1 allows it; "
                                    "gunicorn drops the Content-Length): request smuggling"),
    "valid/025": (400, "Transfer-Encoding is repeated", "only one Transfer-Encoding, exactly `chunked`: "
                                                        "request smuggling"),
    "valid/025_line": (400, "exactly 'chunked'", "a list of codings (`gzip,chunked`) is refused: request smuggling"),
    "valid/029": (400, "Transfer-Encoding is repeated", "only one Transfer-Encoding: request smuggling"),
    "valid/030": (400, "Transfer-Encoding is repeated", "only one Transfer-Encoding: request smuggling"),
    "valid/099": (None, "", "its body is shorter than its Content-Length (gunicorn's test reads it lazily): "
                            "the server waits for the rest, and the client leaves"),
    "invalid/003c": (200, "", "a method is any token (RFC 9110 9.1), passed to the app as sent; gunicorn refuses "
                              "lowercase ones unless permit_unconventional_http_method"),
    "invalid/006": (200, "", "a request line may take the whole 8 KiB head, as nginx and Apache allow; "
                             "gunicorn's own limit is 4094 bytes"),
}
# Header names with "_" are passed to an ASGI app as sent, as uvicorn and Hypercorn do (a WSGI
# app never sees them: docs/wsgi.md); gunicorn drops them.
UNDERSCORES_KEPT = {"valid/040"}


def _vectors():
    if VECTORS is None or not VECTORS.is_dir():
        return ["not-fetched"]  # the test fails, saying how to fetch them
    return sorted("%s/%s" % (p.parent.name, p.stem) for p in VECTORS.glob("*/*.http"))


def _uri(raw):
    # gunicorn's tests/treq.py uri(): what its parser makes of the request target.
    parts = urlsplit("." + raw) if raw.startswith("//") else urlsplit(raw)
    path = parts.path[1:] if raw.startswith("//") else parts.path
    return {"raw": raw, "path": path or "", "query": parts.query or "", "fragment": parts.fragment or ""}


class _Config:
    def __init__(self):
        self.settings = {}

    def set(self, name, value):
        self.settings[name] = value


def _stub_gunicorn():
    """The two gunicorn modules the .py files import: its error classes by name, and a
    Config that records what a vector sets."""
    if "gunicorn" in sys.modules:
        return
    errors = types.ModuleType("gunicorn.http.errors")
    errors.__getattr__ = lambda name: type(name, (Exception,), {})
    config = types.ModuleType("gunicorn.config")
    config.Config = _Config
    http = types.ModuleType("gunicorn.http")
    http.errors = errors
    top = types.ModuleType("gunicorn")
    top.http, top.config = http, config
    sys.modules.update({"gunicorn": top, "gunicorn.http": http, "gunicorn.http.errors": errors,
                        "gunicorn.config": config})


def _expectation(name):
    _stub_gunicorn()
    module = types.ModuleType("vector_expectation")
    module.uri = _uri
    module.cfg = _Config()
    importlib.machinery.SourceFileLoader("vector_expectation", str(VECTORS / (name + ".py"))).exec_module(module)
    return module.request, module.cfg.settings


def _wire(name):
    data = (VECTORS / (name + ".http")).read_bytes()
    if name.startswith("invalid/"):  # gunicorn reads these as text, then encodes them as latin-1
        data = data.decode("utf-8").encode("latin-1")
    data = data.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    return data.replace(b"\\0", b"\0").replace(b"\\n", b"\n").replace(b"\\t", b"\t")


def _add_host(wire, request_lines):
    """`Host: h` after each of `request_lines` (the heads of HTTP/1.1 requests without one),
    in order; or, with None, after the first line of an HTTP/1.1 head without Host. Returns
    (the wire, whether a Host was added)."""
    if request_lines is None:
        head = wire.split(b"\r\n\r\n", 1)[0]
        if re.search(rb"\r\nhost:", head, re.I) or b"HTTP/1.1\r\n" not in wire.split(b"\r\n", 1)[0] + b"\r\n":
            return wire, False
        line, sep, rest = wire.partition(b"\r\n")
        return line + sep + b"Host: h\r\n" + rest, True
    at, added = 0, False
    for line in request_lines:
        found = wire.index(line, at)
        end = found + len(line)
        wire = wire[:end] + b"Host: h\r\n" + wire[end:]
        at, added = end + len(b"Host: h\r\n"), True
    return wire, added


def _responses(data):
    """(status, body) of each whole response in `data`; every one has a Content-Length."""
    out = []
    while data.startswith(b"HTTP/1."):
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        size = int(length.group(1)) if length else 0
        out.append((int(head.split(b" ", 2)[1]), rest[:size]))
        data = rest[size:]
    return out


def _exchange(port, wire, answers):
    """Sends `wire`, reads `answers` whole responses (fewer if the server closes first), then
    half-closes and reads until the server closes: (responses, raw bytes). The half-close
    waits for the answers a vector expects: the server drops a request whose client's end of
    stream it reads before a worker takes it (the client left), so sending it at once would
    race the worker."""
    with RawConnection(port, timeout=10) as conn:
        conn.send(wire)
        data = b""
        while len(_responses(data)) < answers:
            chunk = conn.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.sock.shutdown(socket.SHUT_WR)  # the client has said all it will
        rest, closed = conn.read_until_closed(10)
    data += rest
    assert closed, "the server kept the connection open after the client finished: %r" % data[-300:]
    return _responses(data), data


@pytest.fixture(scope="module")
def echo(gilgamesh_bin):
    server = AsgiServer(strategies()[0], "asgi_echo:app", workers=1,
                        args=["--pythonpath", str(APPS_DIR)]).start()
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.mark.parametrize("name", _vectors())
def test_gunicorn_parser_vector(echo, name):
    if VECTORS is None or not VECTORS.is_dir():
        pytest.fail("gunicorn's parser vectors are not fetched: run `make parser-vectors`", pytrace=False)
    expected, settings = _expectation(name)
    if settings:
        pytest.skip("exercises gunicorn's setting %s" % ", ".join(sorted(settings)))
    if name.split("/")[1].startswith("pp_"):
        pytest.skip("the PROXY protocol, which gilgamesh does not speak")
    valid = name.startswith("valid/")
    wanted = (expected if isinstance(expected, list) else [expected]) if valid else None
    lines, hostless = None, []
    if valid:
        hostless = [w["version"] == (1, 1) and not any(h.lower() == "host" for h, _ in w["headers"])
                    for w in wanted]
        lines = [("%s %s HTTP/1.1\r\n" % (w["method"], w["uri"]["raw"])).encode("latin-1")
                 for w, added in zip(wanted, hostless) if added]
    wire, _ = _add_host(_wire(name), lines)
    if name in DIFFERENT:
        answers = 0 if DIFFERENT[name][0] is None else 1
    else:
        answers = len(wanted) if valid else 0
    responses, data = _exchange(echo.port, wire, answers)
    statuses = [status for status, _ in responses]

    if name in DIFFERENT:
        status, words, why = DIFFERENT[name]
        if status is None:
            assert not responses, (why, statuses)
        else:
            assert statuses[:1] == [status], (why, statuses, data[-400:])
            assert words.encode() in responses[0][1], (why, responses[0][1])
        return
    if not valid:
        assert all(status >= 400 for status in statuses), \
            "gunicorn refuses it (%s); gilgamesh answered %s\n%r" % (expected.__name__, statuses, data[-600:])
        return
    assert statuses == [200] * len(wanted), (statuses, data[-600:])
    for (_, body), want, host_added in zip(responses, wanted, hostless):
        got = json.loads(body)
        assert got["method"] == want["method"]
        assert got["http_version"] == "%d.%d" % want["version"]
        raw_target = got["raw_path"] + ("?" + got["query_string"] if got["query_string"] else "")
        assert (got["raw_path"], got["query_string"]) == (want["uri"]["path"], want["uri"]["query"]), raw_target
        headers = [(n.lower(), v) for n, v in got["headers"]]
        if host_added:
            headers.remove(("host", "h"))
        if name in UNDERSCORES_KEPT:
            kept = [(n, v) for n, v in headers if "_" in n]
            assert kept, "names with '_' reach an ASGI app: %r" % headers
            headers = [h for h in headers if h not in kept]
        assert headers == [(n.lower(), v) for n, v in want["headers"]]
        body_wanted = want["body"] if isinstance(want["body"], bytes) else want["body"].encode("latin-1")
        assert got["body"].encode("latin-1") == body_wanted
