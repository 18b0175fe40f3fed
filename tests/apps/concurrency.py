"""Test app: route handlers for threads per worker (--threads) and streamed answers
(tests/blackbox/test_threads.py, test_streaming.py).

Routes:
  /hello                         "hello", at once
  /sleep?s=1                     time.sleep(s) (releases the GIL), then JSON: s, the OS thread
                                 ident, the pid and gilgamesh.worker_info()
  /spin?s=10                     a pure-Python busy loop for s seconds (interruptible by
                                 --timeout), then JSON
  /stream?chunks=N&delay_ms=D&size=B&token=T&text=0&empty=0&raise_after=-1
                                 a generator of N chunks of B bytes (chunk(i, B) below), D ms
                                 apart (none before the first); text=1: str chunks; empty=1: an
                                 empty chunk between two; raise_after=K: raises after K chunks
  /big?mib=N&token=T             a generator of N MiB in 64 KiB chunks

GILGAMESH_TEST_CLOSE_LOG (environment): a file to which a streamed body appends one line
when its generator ends, however it ends (the last chunk, close() by the server, an
exception): "<token> <chunks produced> <finished 0|1>". The test reads that file, so it
sees the line whatever worker (thread, interpreter or process) ran the handler.
"""

import os
import threading
import time

import gilgamesh

from stream_parts import MIB_CHUNK, chunk, log_close


def _number(request, name, default, kind=int):
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise gilgamesh.HTTPError(400, "query parameter %r: not a number: %r" % (name, raw[:40]))


@gilgamesh.route("/hello")
def hello(request):
    """Answers at once."""
    return "hello"


@gilgamesh.route("/sleep")
def sleep(request):
    """Sleeps ?s= seconds without the GIL; answers which thread and process ran it."""
    s = _number(request, "s", 1.0, float)
    started = time.monotonic()
    time.sleep(s)
    return {"s": s, "thread": threading.get_ident(), "pid": os.getpid(),
            "slept": time.monotonic() - started, "worker_info": gilgamesh.worker_info()}


@gilgamesh.route("/spin")
def spin(request):
    """A pure-Python loop for ?s= seconds: holds its thread until interrupted."""
    s = _number(request, "s", 10.0, float)
    deadline = time.monotonic() + s
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return {"spun_s": s, "loops": n}


def _stream(chunks, delay_s, size, token, text, empty, raise_after):
    produced = 0
    finished = False
    try:
        for i in range(chunks):
            if i and delay_s:
                time.sleep(delay_s)
            if raise_after >= 0 and i >= raise_after:
                raise RuntimeError("stream failed after %d chunks on purpose" % i)
            data = chunk(i, size)
            yield data.decode("ascii") if text else data
            produced += 1
            if empty and i + 1 < chunks:
                yield "" if text else b""
        finished = True
    finally:
        log_close(token, produced, finished)


@gilgamesh.route("/stream")
def stream(request):
    """A generator: ?chunks= chunks of ?size= bytes, ?delay_ms= apart."""
    chunks = _number(request, "chunks", 5)
    delay_s = _number(request, "delay_ms", 0) / 1000.0
    size = _number(request, "size", 16)
    return _stream(chunks, delay_s, size, request.query.get("token", ""),
                   request.query.get("text") == "1", request.query.get("empty") == "1",
                   _number(request, "raise_after", -1))


def _big(total, token):
    produced = 0
    finished = False
    try:
        for i in range(total // len(MIB_CHUNK)):
            # A new bytes object per chunk: a server that kept them all would hold all 256 MiB.
            yield MIB_CHUNK[i % 256:] + MIB_CHUNK[:i % 256]
            produced += 1
        finished = True
    finally:
        log_close(token, produced, finished)


@gilgamesh.route("/big")
def big(request):
    """?mib= MiB (default 256) in 64 KiB chunks, produced as fast as they are taken."""
    return _big(_number(request, "mib", 256) * 1024 * 1024, request.query.get("token", ""))
