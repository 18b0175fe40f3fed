"""Answers that stream, on every strategy, from a route handler that returns a generator
(tests/apps/concurrency.py) and from a WSGI app's iterable and write() (tests/apps/
wsgi_streaming.py): each chunk goes out as it is produced; no Content-Length from the app
means chunked on HTTP/1.1 and close-delimited on HTTP/1.0; a slow reader holds the producer
back (the server's memory stays bounded); a client that leaves stops the iteration and
close() is called; a Content-Length the body does not match closes the connection; HEAD sends
no body; an exception after the head closes the connection (no terminating chunk).

Read on the raw socket, so the framing and the arrival times are what the wire carries.
"""

import os
import socket
import time
import uuid

import pytest

from gilgamesh_harness import (APPS_DIR, HOST, TIME_SCALE, GilgameshServer, build_request,
                               scaled, wait_for)

KINDS = ("route", "wsgi")
MIB = 1024 * 1024


def chunk(i, size):
    """Chunk i of the apps' /stream (the same function as theirs)."""
    unit = b"%d:" % i
    return (unit * (size // len(unit) + 1))[:size]


def expected_body(chunks, size):
    return b"".join(chunk(i, size) for i in range(chunks))


# --- servers: one route app and one WSGI app per strategy, shared by this module ----------

@pytest.fixture(scope="module")
def close_log(tmp_path_factory):
    return tmp_path_factory.mktemp("streaming") / "close.log"


def _serve(strategy, close_log, workers=2, **kw):
    return GilgameshServer(strategy, workers=workers, args=["--pythonpath", str(APPS_DIR)],
                           env={"GILGAMESH_TEST_CLOSE_LOG": str(close_log)}, **kw).start()


def _stop(server):
    try:
        code = server.stop()
    finally:
        server.kill()
    assert code == 0, "server exited with %r\n%s" % (code, server.log()[-4000:])


@pytest.fixture(scope="module")
def route_server(gilgamesh_bin, strategy, close_log):
    server = _serve(strategy, close_log, app="concurrency")
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def wsgi_server(gilgamesh_bin, strategy, close_log):
    server = _serve(strategy, close_log, wsgi="wsgi_streaming:app")
    yield server
    _stop(server)


@pytest.fixture(params=KINDS)
def served(request, strategy):
    """(kind, server): the route app, then the WSGI app, of this test's strategy."""
    return request.param, request.getfixturevalue(request.param + "_server")


def closed_lines(close_log, token):
    """The close log's lines for `token`: [(chunks produced, finished)]."""
    try:
        text = close_log.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == token:
            out.append((int(parts[1]), parts[2] == "1"))
    return out


# --- the wire ------------------------------------------------------------------------

class Wire:
    """One client connection that keeps every byte with the time it arrived."""

    def __init__(self, port, timeout=15.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(scaled(timeout))
        self.sock.connect((HOST, port))
        self.started = time.monotonic()
        self.data = b""
        self.arrivals = []  # (seconds since started, total bytes so far)
        self.closed = False

    def send(self, data):
        self.started = time.monotonic()
        self.sock.sendall(data)

    def recv_some(self, n=65536):
        """One recv: the bytes (b"" once the server closed)."""
        try:
            got = self.sock.recv(n)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        if not got:
            self.closed = True
        else:
            self.data += got
            self.arrivals.append((time.monotonic() - self.started, len(self.data)))
        return got

    def read_until(self, predicate, timeout, what):
        """Reads until predicate(self.data) holds; fails naming `what` after `timeout` (not
        scaled: the caller decides) or when the server closes first."""
        deadline = time.monotonic() + timeout
        while not predicate(self.data):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: not within %.1f s; got %r" % (what, timeout, self.data[:400]))
            self.sock.settimeout(left)
            try:
                if not self.recv_some():
                    raise AssertionError("%s: the server closed first; got %r" % (what, self.data[:400]))
            except socket.timeout:
                raise AssertionError("%s: not within %.1f s; got %r" % (what, timeout, self.data[:400]))
        return time.monotonic() - self.started

    def read_to_close(self, timeout):
        """Reads until the server closes (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                self.recv_some()
            except socket.timeout:
                return False
        return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_head(data):
    """(status, {lower name: [values]}, rest) of a response at the start of `data`."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, "no complete head in %r" % data[:400]
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[:2]
    assert version.startswith("HTTP/1."), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status), headers, rest


def has_head(data):
    return b"\r\n\r\n" in data


def parse_chunked(data):
    """(body, complete, rest): the chunked body at the start of `data`, strictly framed;
    complete is whether the terminating 0-chunk and its empty trailer arrived."""
    body = b""
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return body, False, b""
        size_text = data[pos:end].split(b";")[0]
        assert size_text and all(c in b"0123456789abcdefABCDEF" for c in size_text), \
            "bad chunk size line %r at %d in %r" % (data[pos:end], pos, data[:400])
        size = int(size_text, 16)
        if size == 0:
            if data[end + 2:end + 4] == b"\r\n":
                return body, True, data[end + 4:]
            return body, False, b""
        if len(data) < end + 2 + size + 2:
            return body + data[end + 2:end + 2 + size], False, b""
        assert data[end + 2 + size:end + 4 + size] == b"\r\n", \
            "chunk of %d bytes not followed by CRLF: %r" % (size, data[end + 2 + size:end + 12 + size])
        body += data[end + 2:end + 2 + size]
        pos = end + 4 + size


def chunked_complete(data):
    if not has_head(data):
        return False
    return parse_chunked(split_head(data)[2])[1]


def _is_chunked(headers):
    return "chunked" in ",".join(headers.get("transfer-encoding", [])).lower()


def body_so_far(data):
    """The body bytes received so far (de-chunked if chunked), or b"" before the head."""
    if not has_head(data):
        return b""
    _, headers, rest = split_head(data)
    return parse_chunked(rest)[0] if _is_chunked(headers) else rest


def first_chunk(size):
    """A predicate: the head and at least `size` bytes of the body have arrived."""
    return lambda data: len(body_so_far(data)) >= size


def response_complete(data):
    """Whether one whole response arrived: chunked to its 0-chunk, or Content-Length bytes
    (a close-delimited one never is: read it with read_to_close)."""
    if not has_head(data):
        return False
    _, headers, rest = split_head(data)
    if _is_chunked(headers):
        return parse_chunked(rest)[1]
    if "content-length" in headers:
        return len(rest) >= int(headers["content-length"][0])
    return False


def get(path, version="HTTP/1.1", method="GET", headers=None):
    return build_request(method, path, headers=headers, version=version)


# --- time to first byte ------------------------------------------------------------------

TTFB_PATHS = [("route", "/stream"), ("wsgi", "/stream"), ("wsgi", "/write")]


@pytest.mark.parametrize("kind, path", TTFB_PATHS, ids=["route-generator", "wsgi-iterable", "wsgi-write"])
def test_head_and_first_chunk_arrive_before_the_handler_ends(request, strategy, kind, path):
    server = request.getfixturevalue(kind + "_server")
    delay = 0.4 * TIME_SCALE  # the handler sleeps this long between 5 chunks: >= 4 delays in all
    chunks, size = 5, 32
    with Wire(server.port) as wire:
        wire.send(get("%s?chunks=%d&delay_ms=%d&size=%d" % (path, chunks, delay * 1000, size)))
        first = wire.read_until(first_chunk(size), scaled(10), "the head and the first chunk")
        last = wire.read_until(response_complete, scaled(15), "the whole body")
    status, headers, rest = split_head(wire.data)
    assert status == 200, wire.data[:400]
    assert last >= 4 * delay * 0.9, "the body took %.2f s, the handler sleeps %.2f s" % (last, 4 * delay)
    assert first < 2.5 * delay, (
        "the head and first chunk came %.2f s after the request, the handler ended at %.2f s: "
        "the answer was collected, not streamed (arrivals: %r)" % (first, last, wire.arrivals))
    assert "content-length" not in headers, headers
    assert headers.get("transfer-encoding") == ["chunked"], headers
    body, complete, extra = parse_chunked(rest)
    assert complete and extra == b"", rest[-200:]
    assert body == expected_body(chunks, size), body


# --- framing ---------------------------------------------------------------------------

def test_chunked_framing_and_keep_alive(served):
    kind, server = served
    with Wire(server.port) as wire:
        # empty=1: the app yields empty chunks between the others; none may end the body early.
        wire.send(get("/stream?chunks=4&size=1000&empty=1&delay_ms=50"))
        wire.read_until(response_complete, scaled(10), "the body")
        status, headers, rest = split_head(wire.data)
        assert status == 200, wire.data[:400]
        assert headers.get("transfer-encoding") == ["chunked"], headers
        assert "content-length" not in headers, headers
        if kind == "route":
            assert headers.get("content-type", [""])[0].startswith("application/octet-stream"), headers
        body, complete, extra = parse_chunked(rest)
        assert body == expected_body(4, 1000) and complete, body[:200]
        assert extra == b"", "bytes after the terminating chunk: %r" % extra[:200]
        # The connection stays usable: the next answer starts right after the last chunk.
        wire.data = b""
        wire.send(get("/hello"))
        wire.read_until(lambda d: d.endswith(b"hello"), scaled(10), "the next answer on the connection")
        assert split_head(wire.data)[0] == 200


def test_route_generator_of_str_is_text(route_server):
    with Wire(route_server.port) as wire:
        wire.send(get("/stream?chunks=3&size=20&text=1&delay_ms=50"))
        wire.read_until(response_complete, scaled(10), "the body")
    status, headers, rest = split_head(wire.data)
    assert status == 200, wire.data[:400]
    assert headers.get("content-type", [""])[0].startswith("text/plain"), headers
    assert body_so_far(wire.data) == expected_body(3, 20), wire.data[:400]


def test_http_10_is_close_delimited(served):
    _kind, server = served
    with Wire(server.port) as wire:
        wire.send(get("/stream?chunks=4&size=500&delay_ms=50", version="HTTP/1.0"))
        assert wire.read_to_close(scaled(10)), "the server did not close an HTTP/1.0 streamed answer"
    status, headers, rest = split_head(wire.data)
    assert status == 200, wire.data[:400]
    assert "chunked" not in ",".join(headers.get("transfer-encoding", [])).lower(), headers
    assert "content-length" not in headers, headers
    assert rest == expected_body(4, 500), rest[:200]


# --- HEAD --------------------------------------------------------------------------------

def test_head_sends_no_body(served, close_log):
    kind, server = served
    token = uuid.uuid4().hex
    with Wire(server.port) as wire:
        wire.send(get("/stream?chunks=3&size=100&token=" + token, method="HEAD"))
        wire.read_until(has_head, scaled(10), "the HEAD answer's head")
        status, headers, rest = split_head(wire.data)
        assert status == 200, wire.data[:400]
        # Whatever the head says, no body follows: the next answer on the connection starts
        # right after it.
        wire.send(get("/hello"))
        wire.read_until(lambda d: d.endswith(b"hello"), scaled(10), "the next answer")
        assert split_head(wire.data)[2].startswith(b"HTTP/1.1 200"), \
            "bytes between the HEAD answer and the next one: %r" % split_head(wire.data)[2][:200]
    if kind == "wsgi":  # PEP 3333: close() is called whenever the iterable has one
        wait_for(lambda: closed_lines(close_log, token), "close() of the HEAD answer's iterable", 5)


def test_the_request_after_a_head_is_served_by_the_same_worker(strategy, gilgamesh_bin, close_log):
    # One worker, so the pipelined request goes where the HEAD answer went. The answer ends
    # before the server has read its head (one small chunk), so the server's word to stop
    # (`processes`: a cancel frame) comes after the end, and right behind it comes the next
    # request; a thread of the app keeps the worker's handler thread waiting for the GIL
    # meanwhile, so both reach the worker together. They were once read as one malformed
    # frame: the worker process left, and the next request got a 502.
    server = _serve(strategy, close_log, workers=1, wsgi="wsgi_streaming:app")
    try:
        for i in range(8):
            with Wire(server.port) as wire:
                wire.send(get("/stream?chunks=1&size=10&busy_ms=40", method="HEAD") + get("/hello"))
                wire.read_until(lambda d: d.endswith(b"hello") or b" 502 " in d, scaled(10),
                                "both answers")
                status, _, rest = split_head(wire.data)
                assert status == 200, wire.data[:400]
                assert rest.startswith(b"HTTP/1.1 200"), "round %d: %r" % (i, rest[:400])
        # The app's threads end before the server does (the last may still run: no GIL
        # holds the answer back on free-threaded), or CPython leaves their state to the exit.
        assert server.get("/busy_join", timeout=scaled(10)).status == 200
    finally:
        _stop(server)
    assert "bad request frame" not in server.log(), server.log()[-3000:]


# --- slow reader: bounded memory ---------------------------------------------------------------

def process_tree(pid):
    """pid and every descendant (read from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass  # gone meanwhile
    return out


def tree_rss(pid):
    """The resident memory of pid and its descendants, in bytes (VmRSS summed)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


@pytest.mark.slow
def test_a_slow_reader_of_256_mib_keeps_the_server_small(served, close_log):
    kind, server = served
    token = uuid.uuid4().hex
    for _ in range(3):  # warm: the app imported, the worker's first answers made
        with Wire(server.port) as wire:
            wire.send(get("/stream?chunks=2&size=1000", version="HTTP/1.0"))
            wire.read_to_close(scaled(10))
    baseline = tree_rss(server.process.pid)
    peak = baseline
    received = 0
    read_for = 6.0  # seconds of slow reading: 64 KiB every 20 ms, about 20 MiB in all
    with Wire(server.port, rcvbuf=64 * 1024) as wire:
        wire.send(get("/big?mib=256&token=" + token))
        wire.read_until(has_head, scaled(10), "the head of /big")
        status, headers, _ = split_head(wire.data)
        assert status == 200, wire.data[:400]
        assert "content-length" not in headers, headers
        wire.data = b""  # keep no body in this process: count it
        started = last_sample = time.monotonic()
        while time.monotonic() - started < read_for:
            got = wire.recv_some(65536)
            assert got, "the server closed after %d bytes" % received
            received += len(got)
            wire.data = b""
            if time.monotonic() - last_sample > 0.25:
                peak = max(peak, tree_rss(server.process.pid))
                last_sample = time.monotonic()
            time.sleep(0.02)
        peak = max(peak, tree_rss(server.process.pid))
    # Disconnected mid-body: the producer is stopped and close() called.
    assert received < 256 * MIB
    lines = wait_for(lambda: closed_lines(close_log, token), "close() of /big after the client left", 10)
    growth = peak - baseline
    # Under ASan the RSS says nothing about the server (freed blocks wait in its quarantine,
    # 256 MiB by default): there the produced count below proves the backpressure alone.
    assert growth <= 64 * MIB or os.environ.get("GILGAMESH_SANITIZED") == "1", (
        "the server's RSS (its process and children) grew by %.1f MiB while a client read %.1f MiB "
        "of 256 MiB slowly: the body is buffered, not held back (baseline %.1f MiB, peak %.1f MiB)"
        % (growth / MIB, received / MIB, baseline / MIB, peak / MIB))
    produced, finished = lines[-1]
    assert not finished, "the whole 256 MiB was produced for a client that read %.1f MiB" % (received / MIB)
    assert produced * 64 * 1024 < received + 64 * MIB, (produced, received)
    wire2 = server.get("/hello")
    assert wire2.status == 200


# --- a client that leaves ------------------------------------------------------------------

def test_a_client_that_leaves_mid_stream_gets_close_called(served, close_log):
    kind, server = served
    token = uuid.uuid4().hex
    # 200 chunks 50 ms apart: 10 s if nobody stops it.
    with Wire(server.port) as wire:
        wire.send(get("/stream?chunks=200&delay_ms=50&size=64&token=" + token))
        wire.read_until(first_chunk(64), scaled(10), "the head and first chunk")
        time.sleep(0.2)
        left_at = time.monotonic()
    lines = wait_for(lambda: closed_lines(close_log, token), "close() after the client left", 5)
    took = time.monotonic() - left_at
    produced, finished = lines[-1]
    assert not finished and produced < 200, (
        "the iteration ran to its end (%d chunks) for a client that had left" % produced)
    assert took < scaled(5), took
    assert server.get("/hello").status == 200  # the worker serves on


# --- Content-Length the body does not match -----------------------------------------------

def test_a_body_shorter_than_its_content_length_closes_the_connection(wsgi_server, close_log):
    with Wire(wsgi_server.port) as wire:
        wire.send(get("/length_short"))
        wire.read_until(has_head, scaled(10), "the head")
        closed = wire.read_to_close(scaled(5))
    status, headers, rest = split_head(wire.data)
    assert closed, "the connection stays open after a body shorter than its Content-Length: " \
                   "the client waits for bytes that never come (%r)" % wire.data[:300]
    if status == 200:
        assert headers.get("content-length") == ["100"], headers
        assert len(rest) < 100, "got %d bytes" % len(rest)
    else:  # caught before the head went out: the clean 500
        assert status == 500, wire.data[:400]
    _logged(wsgi_server, headers)


def test_a_body_longer_than_its_content_length_is_cut_and_closed(wsgi_server):
    with Wire(wsgi_server.port) as wire:
        # A second request pipelined behind: the extra 40 bytes must not pose as its answer.
        wire.send(get("/length_long") + get("/hello"))
        wire.read_until(has_head, scaled(10), "the head")
        closed = wire.read_to_close(scaled(5))
    status, headers, rest = split_head(wire.data)
    assert closed, "the connection stays open after a body longer than its Content-Length"
    if status == 200:
        assert headers.get("content-length") == ["10"], headers
        assert rest == b"L" * 10, "the bytes past Content-Length went out: %r" % rest[:200]
    else:
        assert status == 500, wire.data[:400]
    _logged(wsgi_server, headers)


def _logged(server, headers):
    rid = (headers.get("x-request-id") or [None])[0]
    if rid:
        wait_for(lambda: rid in server.log(), "a log line naming request %s" % rid, 5)
    assert server.get("/hello").status == 200


# --- exceptions ---------------------------------------------------------------------------

RAISE_AFTER_HEAD = {"route": "/stream?chunks=3&delay_ms=300&size=7&raise_after=1",
                    "wsgi": "/raise_after_head?delay_ms=300"}


def test_an_exception_after_the_head_truncates_the_body(served):
    kind, server = served
    with Wire(server.port) as wire:
        wire.send(get(RAISE_AFTER_HEAD[kind]))
        wire.read_until(first_chunk(7), scaled(10), "the head and first chunk")
        closed = wire.read_to_close(scaled(5))
    status, headers, rest = split_head(wire.data)
    assert status == 200, wire.data[:400]
    assert headers.get("transfer-encoding") == ["chunked"], headers
    assert closed, "the connection stays open after the app raised mid-body"
    body, complete, _ = parse_chunked(rest)
    assert not complete, "a failed body ended with the terminating chunk, as if it were whole"
    assert body == (chunk(0, 7) if kind == "route" else b"partial"), body
    rid = headers["x-request-id"][0]
    wait_for(lambda: rid in server.log() and "on purpose" in server.log(),
             "the traceback logged with request %s" % rid, 5)
    assert server.get("/hello").status == 200


def test_an_exception_before_the_first_chunk_is_the_clean_500(served):
    kind, server = served
    path = "/stream?chunks=3&raise_after=0" if kind == "route" else "/raise_after_head?before=1"
    r = server.get(path)
    assert r.status == 500, r
    body = r.json()
    assert body.get("request_id") == r.header("X-Request-Id"), body
    assert server.get("/hello").status == 200
