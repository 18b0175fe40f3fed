"""GET /dashboard (one self-contained page) and GET /events (server-sent events:
one /stats snapshot a second), read off the wire."""

import json
import threading
import re
import signal
import socket
import time

import pytest

import gilgamesh_harness as harness
from gilgamesh_harness import HOST, find_route_entry

STATS_KEYS = ("strategy", "workers", "python_version", "build", "gil_enabled", "uptime_s", "queue_depth",
              "busy_workers", "routes", "responses", "connections_open", "event_streams", "rss_bytes", "latency",
              "worker_details", "version")


class EventStream:
    """A raw GET /events connection: the response head, then events one by one,
    each as (arrival time, {field: value}). Chunked or close-delimited."""

    def __init__(self, server, version="HTTP/1.1", timeout=10.0):
        self.sock = socket.create_connection((HOST, server.port), timeout=timeout)
        self.sock.sendall(("GET /events %s\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
                           % (version, HOST)).encode())
        self.raw = b""      # bytes off the socket, not yet decoded
        self.text = ""      # decoded body, not yet split into events
        self.closed = False
        self.ended = False  # the last chunk arrived
        head = self._read_until(b"\r\n\r\n", time.monotonic() + timeout)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    def close(self):
        self.sock.close()

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from /events in time; buffered %r" % (self.raw[:200] + self.text[:200].encode()))
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
        self.raw += chunk
        return chunk

    def _read_until(self, marker, deadline):
        while marker not in self.raw:
            if not self._recv(deadline):
                raise ConnectionError("closed before %r: %r" % (marker, self.raw[:300]))
        head, _, self.raw = self.raw.partition(marker)
        return head

    def _decode(self):
        """Moves complete chunks (or, unchunked, everything) from raw to text."""
        if not self.chunked:
            self.text += self.raw.decode("utf-8")
            self.raw = b""
            return
        while b"\r\n" in self.raw:
            size_line, _, rest = self.raw.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                if rest.startswith(b"\r\n"):
                    self.ended = True
                    self.raw = rest[2:]
                return
            if len(rest) < size + 2:
                return
            assert rest[size:size + 2] == b"\r\n", "chunk without its CRLF: %r" % rest[:size + 10]
            self.text += rest[:size].decode("utf-8")
            self.raw = rest[size + 2:]

    def next_event(self, timeout=5.0):
        """The next event as (monotonic arrival, fields), or None once the stream ended."""
        deadline = time.monotonic() + timeout
        while True:
            self._decode()
            if "\n\n" in self.text:
                block, _, self.text = self.text.partition("\n\n")
                fields = {}
                for line in block.split("\n"):
                    assert not line.startswith(":"), "unexpected comment line %r" % line
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
                return time.monotonic(), fields
            if self.ended or self.closed:
                assert self.text == "", "stream ended inside an event: %r" % self.text
                return None
            self._recv(deadline)

    def next_snapshot(self, timeout=5.0):
        while True:
            event = self.next_event(timeout)
            assert event is not None, "the stream ended"
            at, fields = event
            if "data" in fields and "event" not in fields:
                return at, json.loads(fields["data"])


def stats_of(server):
    return server.get("/stats", timeout=5).json()


def wait_for(predicate, timeout, what):
    return harness.wait_for(predicate, what, timeout)


# --- /dashboard --------------------------------------------------------------

def test_dashboard_is_one_self_contained_html_page(demo_server):
    r = demo_server.get("/dashboard")
    assert r.status == 200, r
    assert r.header("Content-Type") == "text/html; charset=utf-8"
    csp = r.header("Content-Security-Policy")
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert r.header("X-Content-Type-Options") == "nosniff"
    page = r.text
    assert page.startswith("<!doctype html>")
    assert "uPlot" in page and "gilgameshDashboard" in page  # the library and our script, inlined
    assert len(page) > 50000
    # Nothing is loaded from anywhere: no URL, no linked resource, no import.
    assert not re.search(r"https?:", page, re.I), re.search(r".{40}https?:.{40}", page, re.I)
    assert not re.search(r"""\b(src|href|action|poster)\s*=""", page, re.I), \
        re.search(r""".{40}\b(src|href)\s*=.{40}""", page, re.I)
    assert not re.search(r"<(link|iframe|object|embed|img|base)\b", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?!data:)[a-z/]", page, re.I)
    assert not re.search(r"""(["'`])//[a-z0-9]""", page, re.I), "protocol-relative URL"
    # The feed it reads is a relative URL of this server.
    assert 'EventSource("events")' in page and 'fetch("stats"' in page


def test_dashboard_head_and_index(demo_server):
    get = demo_server.get("/dashboard")
    head = demo_server.request("HEAD", "/dashboard")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == get.header("Content-Length") == str(len(get.body))
    assert demo_server.request("POST", "/dashboard", body=b"x").status == 405
    table = demo_server.get("/").json()["routes"]
    for path in ("/dashboard", "/events", "/metrics", "/stats"):
        assert find_route_entry(table, "GET", path) is not None, (path, table)


def test_no_dashboard_turns_both_off(start_server):
    server = start_server(workers=1, args=["--no-dashboard"])
    assert server.get("/dashboard").status == 404
    assert server.get("/events").status == 404
    assert server.get("/stats").status == 200
    table = server.get("/").json()["routes"]
    assert find_route_entry(table, "GET", "/dashboard") is None
    assert find_route_entry(table, "GET", "/events") is None


# --- /events -----------------------------------------------------------------

def test_events_deliver_a_stats_snapshot_every_second(demo_server):
    stream = EventStream(demo_server)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-store"
        assert stream.chunked and "content-length" not in stream.headers
        assert stream.headers.get("x-request-id")
        _, first = stream.next_event(timeout=5)
        assert first == {"retry": "3000"}, first
        snapshots = [stream.next_snapshot(timeout=3)]  # at once, then one a second
        for _ in range(3):
            snapshots.append(stream.next_snapshot(timeout=3))
        for _, s in snapshots:
            for key in STATS_KEYS:
                assert key in s, (key, sorted(s))
            assert s["strategy"] == demo_server.strategy and s["workers"] == demo_server.workers
            assert s["event_streams"] >= 1
        # The server's own clock: one a second. Ticks are scheduled a whole second
        # apart, so a late one (a busy machine) is followed by a shorter gap, and
        # the rate over the three holds.
        uptimes = [s["uptime_s"] for _, s in snapshots]
        gaps = [b - a for a, b in zip(uptimes, uptimes[1:])]
        assert all(0.4 <= g <= 2.0 for g in gaps), gaps
        assert 2.7 <= uptimes[-1] - uptimes[0] <= 4.0, uptimes
        arrivals = [at for at, _ in snapshots]
        assert 2.0 <= arrivals[-1] - arrivals[0] <= 5.0, arrivals
        # Each snapshot is the figures of that moment: traffic shows in the next one.
        before = find_route_entry(snapshots[-1][1]["routes"], "GET", "/hello")["count"]
        for _ in range(3):
            assert demo_server.get("/hello").status == 200
        _, later = stream.next_snapshot(timeout=3)
        assert find_route_entry(later["routes"], "GET", "/hello")["count"] == before + 3
    finally:
        stream.close()


def test_events_count_as_connections_and_end_with_their_client(demo_server):
    base = wait_for(lambda: (lambda s: s if s["event_streams"] == 0 else None)(stats_of(demo_server)),
                    10, "no event stream open before the test")
    streams = [EventStream(demo_server), EventStream(demo_server)]
    try:
        for st in streams:
            st.next_snapshot()
        stats = stats_of(demo_server)
        assert stats["event_streams"] == 2
        # the two streams and this /stats request
        assert stats["connections_open"] >= base["connections_open"] + 2
        metrics = demo_server.get("/metrics").text
        assert re.search(r"^gilgamesh_event_streams_open 2$", metrics, re.M), metrics[:2000]
    finally:
        for st in streams:
            st.close()
    # Nobody listens: the streams (and their timers) are gone.
    wait_for(lambda: stats_of(demo_server)["event_streams"] == 0, 10, "streams closed after their clients left")


def test_events_over_http_1_0_end_with_the_connection(demo_server):
    stream = EventStream(demo_server, version="HTTP/1.0")
    try:
        assert stream.status == 200
        assert not stream.chunked and "content-length" not in stream.headers
        assert stream.next_event()[1] == {"retry": "3000"}
        _, snapshot = stream.next_snapshot()
        assert snapshot["strategy"] == demo_server.strategy
    finally:
        stream.close()


def test_events_head_has_no_body(demo_server):
    with demo_server.raw() as conn:
        r = conn.request("HEAD", "/events")
        assert r.status == 200 and r.header("Content-Type") == "text/event-stream"
        # The connection stays usable: HEAD starts no stream.
        assert conn.request("GET", "/healthz").status == 200


def test_events_end_cleanly_on_sigterm(start_server):
    server = start_server(workers=2)
    stream = EventStream(server)
    try:
        stream.next_snapshot()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        names = []
        while True:
            event = stream.next_event(timeout=5)
            if event is None:
                break
            names.append(event[1].get("event", "message"))
        assert names and names[-1] == "shutdown", names
        assert stream.ended, "no last chunk: the stream was cut, not ended"
        # and then the connection closes
        stream.sock.settimeout(5)
        assert stream.sock.recv(1) == b""
        # The stream does not hold the drain (--graceful-timeout is 30 s).
        assert server.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        stream.close()


@pytest.mark.slow
def test_dashboard_and_events_answer_while_every_worker_is_busy(start_server):
    server = start_server(workers=1)
    t = threading.Thread(target=lambda: server.get("/sleep?ms=2500", timeout=20))
    t.start()
    try:
        wait_for(lambda: stats_of(server)["busy_workers"] == 1, 5, "the worker busy")
        started = time.monotonic()
        assert server.get("/dashboard", timeout=5).status == 200
        stream = EventStream(server)
        try:
            _, snapshot = stream.next_snapshot(timeout=2)
            assert snapshot["busy_workers"] == 1
        finally:
            stream.close()
        assert time.monotonic() - started < 2.0
    finally:
        t.join(timeout=20)


def test_events_keep_flowing_through_the_shutdown_delay(start_server):
    server = start_server(workers=1, args=["--shutdown-delay", "2"])
    stream = EventStream(server)
    try:
        _, snapshot = stream.next_snapshot()
        assert snapshot["shutting_down"] is False
        server.signal(signal.SIGTERM)
        started = time.monotonic()
        # While the listener still serves, the open stream goes on, and says so.
        _, snapshot = stream.next_snapshot(timeout=3)
        while not snapshot["shutting_down"]:
            _, snapshot = stream.next_snapshot(timeout=3)
        assert time.monotonic() - started < 2
        # A new stream is refused (the page falls back to polling /stats meanwhile).
        refused = server.get("/events", timeout=5)
        assert refused.status == 503, refused
        assert server.get("/stats", timeout=5).status == 200
        # The drain ends the stream.
        names = []
        while True:
            event = stream.next_event(timeout=5)
            if event is None:
                break
            names.append(event[1].get("event", "message"))
        assert names[-1] == "shutdown" and stream.ended, names
        assert time.monotonic() - started >= 1.5
        assert server.wait(timeout=15) == 0
    finally:
        stream.close()
