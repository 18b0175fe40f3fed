"""Overload (503 + Retry-After), per-request deadline (504), header and
keep-alive timeouts."""

import threading
import time

import pytest

from gilgamesh_harness import (APPS_DIR, Gate, concurrent_gets, in_threads, join_all,
                               server_stats, wait_for_stats)


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after(start_server):
    server = start_server(workers=1, app="gate", args=["--max-queue", "2", "--pythonpath", str(APPS_DIR)])
    with Gate() as gate:
        # One request runs (held at the gate), then two wait in the queue. The first is let
        # reach the worker before the others are sent: a job the worker has not taken yet
        # still counts against --max-queue, so three sent at once could fill it.
        first, first_result = in_threads(1, lambda i: server.get(gate.path(0), timeout=30))
        gate.wait_arrivals(1)
        queued, queued_results = in_threads(2, lambda i: server.get(gate.path(i + 1), timeout=30))
        held = first + queued
        wait_for_stats(server, lambda s: s["busy_workers"] == 1 and s["queue_depth"] == 2,
                       "one request running and two queued")
        # ...so every further one is turned away at once.
        started = time.monotonic()
        rejected = concurrent_gets(server, [gate.path("late")] * 7)
        elapsed = time.monotonic() - started
        assert gate.arrivals == 1, "a request past the full queue reached a worker"
        gate.release()
        join_all(held)
    held_results = first_result + queued_results  # filled in place by the threads
    assert elapsed < 5.0, "503s took %.1f s: not at once" % elapsed
    for r in rejected:
        assert not isinstance(r, Exception), rejected
        assert r.status == 503, r
        assert r.header("Retry-After") == "1", r
        body = r.json()
        assert body["error"] and body["request_id"] == r.header("X-Request-Id"), body
    for i, r in enumerate(held_results):
        assert not isinstance(r, Exception), held_results
        assert r.status == 200 and r.json() == {"released": str(i)}, r
    s = server_stats(server)
    assert s["rejected_queue_full"] == 7, s
    # Once the queue drains, the server serves again.
    assert server.get("/hello").body == b"hello"


def wait_until(server, predicate, what, timeout=5.0):
    """/stats once `predicate(stats)` holds, polled until `timeout`."""
    return wait_for_stats(server, predicate, what, timeout)


def wait_until_idle(server, timeout=5.0):
    """Waits (bounded) until no worker runs a handler, e.g. one whose request was answered 504."""
    wait_for_stats(server, lambda s: s["busy_workers"] == 0, "the workers to be idle", timeout)


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
        time.sleep(1.0)  # idle for a while, within the keep-alive timeout: the point of the test
        assert conn.request("GET", "/hello").body == b"hello"
