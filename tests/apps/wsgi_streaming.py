"""Test app: a WSGI application whose answers stream (tests/blackbox/test_streaming.py,
test_threads.py). `--wsgi wsgi_streaming:app`.

Routes (by PATH_INFO), the parameters as in tests/apps/concurrency.py:
  /hello                 b"hello" with a Content-Length
  /environ               JSON: wsgi.multithread, wsgi.multiprocess, pid, thread ident
  /sleep?s=1             sleeps s seconds, then JSON: s, thread ident, pid
  /stream?chunks=N&delay_ms=D&size=B&token=T&empty=0&raise_after=-1&busy_ms=0
                         an iterable (no Content-Length) of N chunks, D ms apart, with a
                         close() that logs; busy_ms: a thread of the app runs Python code
                         that long meanwhile (with a GIL, the handler's thread waits for it
                         whenever it takes the GIL back)
  /busy_join             waits for every busy_ms thread to end (before the server stops:
                         a thread still running at exit is left to the process's end)
  /write?chunks=N&delay_ms=D&size=B&token=T
                         the same chunks through write(), then an empty iterable that logs
  /length_short?token=T  Content-Length: 100, a body of 50 bytes
  /length_long?token=T   Content-Length: 10, a body of 50 bytes
  /raise_after_head?delay_ms=300&before=0&token=T
                         one chunk b"partial", then (delay_ms later) raises; before=1:
                         raises before the first chunk (the head not sent yet)
  /big?mib=N&token=T     N MiB (default 256) in 64 KiB chunks, no Content-Length

GILGAMESH_TEST_CLOSE_LOG (environment): the file close() appends its line to,
"<token> <chunks produced> <finished 0|1>".
"""

import json
import os
import threading
import time
from urllib.parse import parse_qs

from stream_parts import MIB_CHUNK, chunk, log_close


class Logged:
    """An iterable over `chunks` (a callable giving an iterator) whose close() logs how far
    the iteration got."""

    def __init__(self, token, chunks):
        self.token = token
        self.chunks = chunks
        self.produced = 0
        self.finished = False

    def __iter__(self):
        for data in self.chunks():
            yield data
            if data:
                self.produced += 1
        self.finished = True

    def close(self):
        log_close(self.token, self.produced, self.finished)


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


_busy_threads = []


def _busy(seconds):
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


def _json(start_response, value):
    body = json.dumps(value).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = _query(environ)
    token = q.get("token", "")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path == "/environ":
        return _json(start_response, {
            "wsgi.multithread": environ["wsgi.multithread"],
            "wsgi.multiprocess": environ["wsgi.multiprocess"],
            "pid": os.getpid(), "thread": threading.get_ident()})
    if path == "/sleep":
        s = float(q.get("s", "1"))
        time.sleep(s)
        return _json(start_response, {"s": s, "thread": threading.get_ident(), "pid": os.getpid()})
    if path == "/busy_join":
        while _busy_threads:
            _busy_threads.pop().join()
        return _json(start_response, {"joined": True})
    if path == "/stream":
        chunks = int(q.get("chunks", "5"))
        delay_s = int(q.get("delay_ms", "0")) / 1000.0
        size = int(q.get("size", "16"))
        empty = q.get("empty") == "1"
        raise_after = int(q.get("raise_after", "-1"))
        busy_s = int(q.get("busy_ms", "0")) / 1000.0
        if busy_s:
            busy = threading.Thread(target=_busy, args=(busy_s,))  # sub-interpreters allow no daemon threads
            busy.start()
            _busy_threads.append(busy)

        def produce():
            for i in range(chunks):
                if i and delay_s:
                    time.sleep(delay_s)
                if 0 <= raise_after <= i:
                    raise RuntimeError("stream failed after %d chunks on purpose" % i)
                yield chunk(i, size)
                if empty and i + 1 < chunks:
                    yield b""

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Logged(token, produce)
    if path == "/write":
        chunks = int(q.get("chunks", "5"))
        delay_s = int(q.get("delay_ms", "0")) / 1000.0
        size = int(q.get("size", "16"))
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for i in range(chunks):
            if i and delay_s:
                time.sleep(delay_s)
            write(chunk(i, size))
        return Logged(token, lambda: iter(()))
    if path == "/length_short":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", "100")])
        return Logged(token, lambda: iter([b"s" * 25, b"s" * 25]))
    if path == "/length_long":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", "10")])
        return Logged(token, lambda: iter([b"L" * 25, b"L" * 25]))
    if path == "/raise_after_head":
        delay_s = int(q.get("delay_ms", "300")) / 1000.0
        before = q.get("before") == "1"

        def produce():
            if not before:
                yield b"partial"
                time.sleep(delay_s)
            raise RuntimeError("raised after the head on purpose")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Logged(token, produce)
    if path == "/big":
        total = int(q.get("mib", "256")) * 1024 * 1024
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        # A new bytes object per chunk: a server that kept them all would hold all 256 MiB.
        return Logged(token, lambda: (MIB_CHUNK[i % 256:] + MIB_CHUNK[:i % 256]
                                      for i in range(total // len(MIB_CHUNK))))
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "18")])
    return [b"no such test route"]
