"""Overload (503 + Retry-After), per-request deadline (504), header and
keep-alive timeouts."""

import threading
import time

import pytest

from gilgamesh_harness import APPS_DIR


def concurrent_gets(server, path, count, timeout=20.0):
    """`count` GETs released at once from threads; returns the responses (or exceptions)."""
    results = [None] * count
    barrier = threading.Barrier(count, timeout=10)

    def one(i):
        try:
            barrier.wait()
            results[i] = server.get(path, timeout=timeout)
        except Exception as e:  # recorded, asserted by the caller
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return results


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after(start_server):
    server = start_server(workers=1, args=["--max-queue", "2"])
    started = time.monotonic()
    results = concurrent_gets(server, "/sleep?ms=1000", 10)
    elapsed = time.monotonic() - started
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    ok = [r for r in results if r.status == 200]
    rejected = [r for r in results if r.status == 503]
    assert len(ok) + len(rejected) == 10, results
    # One running, two queued: everything else is turned away at once.
    assert 1 <= len(ok) <= 3, [r.status for r in results]
    assert len(rejected) >= 7, [r.status for r in results]
    for r in ok:
        assert r.json() == {"slept_ms": 1000}
    for r in rejected:
        assert r.header("Retry-After") and r.header("Retry-After").isdigit(), r
        body = r.json()
        assert body["error"] and body["request_id"] == r.header("X-Request-Id"), body
    assert elapsed < 3 * 1.0 + 3.0, "accepted requests should finish in about 3 s"
    # Once the queue drains, the server serves again.
    assert server.get("/hello").status == 200


def wait_until(server, predicate, what, timeout=5.0):
    """/stats once `predicate(stats)` holds, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        s = server.get("/stats", timeout=2).json()
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s: %r" % (what, s))
        time.sleep(0.02)  # polling interval


def wait_until_idle(server, timeout=5.0):
    """Waits (bounded) until no worker runs a handler, e.g. one whose request was answered 504."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.get("/stats", timeout=2).json()["busy_workers"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("workers still busy after %.0f s" % timeout)


def test_deadline_while_running_is_504(start_server):
    server = start_server(workers=1, args=["--timeout", "1"])
    started = time.monotonic()
    r = server.get("/sleep?ms=2000", timeout=10)
    elapsed = time.monotonic() - started
    assert r.status == 504, r
    body = r.json()
    assert body["error"] and body["request_id"] == r.header("X-Request-Id"), body
    assert elapsed < 1.8, "504 came after %.2f s, not at the 1 s deadline" % elapsed
    # The handler cannot be interrupted; once it returns, the worker serves again.
    wait_until_idle(server)
    assert server.get("/hello", timeout=10).body == b"hello"


def test_deadline_while_queued_is_504(start_server, strategy, tmp_path):
    # A request reaches its deadline while still queued: 504, and its handler never
    # runs. With --timeout the worker is taken back at the running handler's own
    # deadline, so the queue must stay blocked longer than that: in-process, a
    # handler stuck in C holds its slot for the 1 s interrupt grace; under
    # processes, replacements that keep dying at start-up leave no worker.
    if strategy == "processes":
        marker = tmp_path / "die"
        server = start_server(workers=1, app="crashy", args=["--timeout", "1", "--pythonpath", str(APPS_DIR)],
                              env={"CRASHY_DIE_AT_START": str(marker)})
        marker.write_text("")
        assert server.get("/crash?how=exit").status == 502
        blocker = None
    else:
        server = start_server(workers=1, args=["--timeout", "1"])
        blocker = threading.Thread(target=lambda: server.get("/sleep?ms=3000", timeout=10))
        blocker.start()
        wait_until(server, lambda s: s["busy_workers"] == 1, "the sleep to hold the worker")
    try:
        started = time.monotonic()
        r = server.get("/hello", timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if blocker:
            blocker.join(15)
    assert r.status == 504, r
    assert r.json()["request_id"] == r.header("X-Request-Id")
    assert 0.9 < elapsed < 1.8, elapsed
    if strategy == "processes":
        marker.unlink()  # replacements start again
    s = wait_until(server, lambda s: s["expired_in_queue_total"] + s["dropped_disconnected_total"] == 1
                   and s["ready_workers"] == 1, "the queued request to be dropped", timeout=15)
    assert server.get("/hello", timeout=10).body == b"hello", s


def test_header_timeout_drops_a_stalled_request(start_server):
    server = start_server(workers=1, args=["--header-timeout", "1"])
    with server.raw(timeout=10) as conn:
        conn.send(b"GET /hel")
        started = time.monotonic()
        data, closed = conn.read_until_closed(6.0)
        elapsed = time.monotonic() - started
    assert closed, "stalled request still open after 6 s"
    assert elapsed < 4.0, elapsed
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]


def test_header_timeout_covers_a_trickling_client(start_server):
    # A slowloris sends a byte now and then; the header deadline is for the whole head.
    server = start_server(workers=1, args=["--header-timeout", "1"])
    with server.raw(timeout=10) as conn:
        started = time.monotonic()
        closed = False
        for byte in b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaa":
            try:
                conn.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            data, closed = conn.read_until_closed(0.25)
            if closed or time.monotonic() - started > 6.0:
                break
        elapsed = time.monotonic() - started
    assert closed, "trickling client kept alive for %.1f s" % elapsed
    assert elapsed < 4.0, elapsed


def test_keepalive_timeout_closes_idle_connection(start_server):
    server = start_server(workers=1, args=["--keepalive-timeout", "1"])
    with server.raw(timeout=10) as conn:
        r = conn.request("GET", "/hello")
        assert r.status == 200
        started = time.monotonic()
        data, closed = conn.read_until_closed(6.0)
        elapsed = time.monotonic() - started
    assert closed and data == b"", (closed, data[:200])
    assert 0.5 <= elapsed < 4.0, elapsed


def test_keepalive_connection_survives_within_timeout(start_server):
    server = start_server(workers=1, args=["--keepalive-timeout", "3"])
    with server.raw(timeout=10) as conn:
        assert conn.request("GET", "/hello").status == 200
        time.sleep(1.0)
        assert conn.request("GET", "/hello").body == b"hello"
