"""--timeout frees the worker on every strategy: a handler still running at its
deadline is interrupted (in-process) or its process killed, and a handler stuck
in C is abandoned and replaced; /readyz; a queued request whose client left is
not run; the processes zygote comes back after it dies (tests/apps/hangs.py)."""

import os
import signal
import threading
import time

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, RawConnection, concurrent_gets

IN_PROCESS = ("subinterpreters", "threads", "free-threaded")


def hangs_server(start_server, workers=2, args=(), **kw):
    return start_server(workers=workers, app="hangs",
                        args=["--pythonpath", str(APPS_DIR), *args], **kw)


def stats(server):
    r = server.get("/stats", timeout=5)
    assert r.status == 200, r
    return r.json()


def wait_for(predicate, what, timeout=10.0):
    """Polls `predicate` until it returns a true value (returned), or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)  # polling interval


def answered(server, path):
    """GET `path`'s JSON once it answers 200 (a queued request may still get a 504), else None."""
    r = server.get(path, timeout=10)
    return r.json() if r.status == 200 else None


def status_is(server, path, status):
    """The response to GET `path` if it has `status`, else None (for wait_for)."""
    r = server.get(path, timeout=5)
    return r if r.status == status else None


@pytest.mark.slow
def test_hung_handlers_get_504_and_the_workers_come_back(start_server, strategy):
    server = hangs_server(start_server, args=["--timeout", "1"])
    started = time.monotonic()
    results = concurrent_gets(server, ["/spin"] * 4 + ["/sleep"] * 4)
    elapsed = time.monotonic() - started
    assert [getattr(r, "status", r) for r in results] == [504] * 8, results
    for r in results:
        body = r.json()
        assert body["request_id"] == r.header("X-Request-Id") and body["error"], body
    assert elapsed < 6, "the 504s took %.1f s" % elapsed
    # Both slots come back: an interrupted handler returns at once; one stuck in C is
    # abandoned after the grace (1 s) and a fresh worker takes its slot.
    s = wait_for(lambda: (lambda x: x if all(d["state"] == "idle" for d in x["worker_details"])
                          else None)(stats(server)), "both workers to be idle again", timeout=10)
    assert time.monotonic() - started < 8, "recovery took %.1f s" % (time.monotonic() - started)
    # Ten requests in a row, none of them waits for a hung handler.
    for i in range(10):
        r = server.get("/hello", timeout=10)
        assert r.status == 200 and r.body == b"hello", (i, r, server.log()[-3000:])
    if strategy == "processes":
        assert s["killed_total"] >= 2, s
    else:
        assert s["interrupted_total"] >= 2, s
    log = server.log()
    assert "past its deadline" in log, log[-3000:]
    assert "got no answer within 1 s; 504" in log, log[-3000:]  # every 504 is logged
    assert server.get("/readyz").status == 200


@pytest.mark.slow
def test_a_handler_that_catches_exception_is_still_stopped(start_server, strategy):
    server = hangs_server(start_server, workers=1, args=["--timeout", "1"])
    before = server.get("/whoami").json()
    r = server.get("/spin-catching", timeout=10)
    assert r.status == 504, r
    after = wait_for(lambda: answered(server, "/whoami"), "the worker to answer")
    s = stats(server)
    if strategy == "processes":
        assert s["killed_total"] == 1 and after["pid"] != before["pid"], (s, before, after)
    else:
        # Interrupted, not abandoned: the same worker (and interpreter) answers.
        wait_for(lambda: stats(server)["busy_workers"] == 0, "the interrupted handler to return")
        s = stats(server)
        assert s["interrupted_total"] == 1 and s["abandoned_total"] == 0, s
        assert after["interpreter_id"] == before["interpreter_id"], (before, after)
        assert after["thread_id"] == before["thread_id"], (before, after)
    log = server.log()
    assert "GET /spin-catching (request %s)" % r.header("X-Request-Id") in log, log[-3000:]


@pytest.mark.slow
def test_a_handler_stuck_in_c_is_abandoned_and_its_slot_refilled(start_server, strategy):
    if strategy not in IN_PROCESS:
        pytest.skip("processes kill the worker instead (test_hung_handlers_...)")
    server = hangs_server(start_server, workers=1, args=["--timeout", "1"])
    before = server.get("/whoami").json()
    assert server.get("/sleep", timeout=10).status == 504
    after = wait_for(lambda: answered(server, "/whoami"), "a fresh worker")
    assert after["thread_id"] != before["thread_id"], (before, after)
    s = stats(server)
    assert s["abandoned_total"] == 1 and s["abandoned_live"] == 1, s
    assert s["replacements_total"] == 1, s
    assert "did not return" in server.log() and "abandoned its thread" in server.log()


@pytest.mark.slow
def test_past_the_abandoned_limit_the_server_reports_not_ready(start_server, strategy):
    if strategy not in IN_PROCESS:
        pytest.skip("only in-process strategies abandon threads")
    server = hangs_server(start_server, workers=1, args=["--timeout", "1", "--max-abandoned", "1"])
    assert server.get("/sleep", timeout=10).status == 504
    wait_for(lambda: stats(server)["abandoned_live"] == 1, "the first abandonment")
    wait_for(lambda: status_is(server, "/readyz", 200), "the replacement to be ready")
    assert server.get("/sleep", timeout=10).status == 504
    r = wait_for(lambda: status_is(server, "/readyz", 503), "/readyz to turn 503")
    body = r.json()
    assert body["status"] == "degraded" and "abandoned-worker limit (1)" in body["reason"], body
    assert server.get("/healthz").status == 200  # alive, only not ready
    assert stats(server)["abandoned_total"] == 1


def test_readyz_while_serving(start_server):
    server = hangs_server(start_server, workers=1)
    r = server.get("/readyz")
    assert r.status == 200 and r.json() == {"status": "ready"}, r
    listing = server.get("/").json()["routes"]
    assert any(e["path"] == "/readyz" for e in listing), listing


@pytest.mark.slow
def test_readyz_while_starting_then_ready(gilgamesh_bin, strategy):
    server = GilgameshServer(strategy, workers=2, app="hangs", args=["--pythonpath", str(APPS_DIR)],
                             env={"HANGS_IMPORT_DELAY": "2"}).launch()
    try:
        def starting():
            try:
                r = server.get("/readyz", timeout=1)
            except OSError:
                return None  # not listening yet
            return r if r.status == 503 else None

        r = wait_for(starting, "/readyz to answer 503 while the app imports")
        assert r.json()["status"] == "starting", r
        assert r.header("Retry-After"), r
        assert server.get("/healthz").status == 200  # alive while starting
        early = server.get("/hello")
        assert early.status == 503 and "starting" in early.json()["error"], early
        wait_for(lambda: server.get("/readyz", timeout=5).status == 200, "readiness", timeout=30)
        assert server.get("/hello").body == b"hello"
        assert server.stop() == 0
    finally:
        server.kill()


@pytest.mark.slow
def test_shutdown_delay_keeps_serving_while_readyz_says_503(start_server):
    server = hangs_server(start_server, workers=1, args=["--shutdown-delay", "2"])
    server.signal(signal.SIGTERM)
    r = wait_for(lambda: status_is(server, "/readyz", 503), "/readyz to turn 503")
    assert r.json()["status"] == "draining", r
    sent_at = time.monotonic()
    # The listener still accepts and requests are served while the load balancer reacts.
    hello = server.get("/hello")
    assert hello.status == 200 and hello.body == b"hello", hello
    assert hello.header("Connection", "").lower() == "close", hello
    assert time.monotonic() - sent_at < 1.5
    assert server.wait(timeout=15) == 0, server.log()[-3000:]


@pytest.mark.slow
def test_a_queued_request_whose_client_left_is_not_run(start_server, tmp_path):
    server = hangs_server(start_server, workers=1, env={"HANGS_MARKER_DIR": str(tmp_path)})
    busy = threading.Thread(target=lambda: server.get("/block?s=1.5", timeout=10))
    busy.start()
    wait_for(lambda: stats(server)["busy_workers"] == 1, "the worker to be busy")
    with RawConnection(server.port) as conn:
        conn.send(b"GET /side-effect?key=gone HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_for(lambda: stats(server)["queue_depth"] == 1, "the request to be queued")
    # The client has closed its connection; the worker frees up after the block.
    busy.join(15)
    wait_for(lambda: stats(server)["dropped_disconnected_total"] == 1, "the job to be dropped")
    # A request that stayed does run, and leaves its marker.
    assert server.get("/side-effect?key=stayed").status == 200
    assert (tmp_path / "stayed").exists()
    assert not (tmp_path / "gone").exists(), "the handler ran for a client that had left"


@pytest.mark.slow
def test_processes_zygote_comes_back_after_sigkill(start_server, strategy):
    if strategy != "processes":
        pytest.skip("the zygote is the processes strategy's")
    server = hangs_server(start_server, workers=2)
    s = stats(server)
    old_zygote = s["zygote_pid"]
    workers_before = set(s["worker_pids"])
    os.kill(old_zygote, signal.SIGKILL)
    # Workers outlive the zygote: serving never stops.
    for _ in range(5):
        assert server.get("/hello").status == 200
    s = wait_for(lambda: (lambda x: x if x["zygote_restarts_total"] == 1 else None)(stats(server)),
                 "a new zygote", timeout=5)
    assert s["zygote_pid"] not in (old_zygote, -1), s
    assert set(s["worker_pids"]) == workers_before, s
    wait_for(lambda: status_is(server, "/readyz", 200), "readiness with the new zygote", timeout=5)
    # The new zygote can replace a killed worker.
    victim = sorted(workers_before)[0]
    os.kill(victim, signal.SIGKILL)
    s = wait_for(lambda: (lambda x: x if len(x["worker_pids"]) == 2 and victim not in x["worker_pids"]
                          and x["ready_workers"] == 2 else None)(stats(server)),
                 "the killed worker to be replaced", timeout=10)
    for _ in range(5):
        assert server.get("/hello").status == 200
    assert "zygote process ended unexpectedly" in server.log()
