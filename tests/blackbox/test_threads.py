"""--threads N: a worker serves up to N requests at once, each on its own OS thread, on
the in-process strategies (tests/apps/concurrency.py, tests/apps/wsgi_streaming.py): sleeping
requests overlap inside one worker; a request past --timeout gets its 504 while the
worker's other threads answer on; recycling (--max-requests) drains a worker under load
without losing a request; /stats and /metrics count busy threads; wsgi.multithread."""

import re
import threading
import time

import pytest

from gilgamesh_harness import (APPS_DIR, TIME_SCALE, concurrent_gets, in_threads, join_all,
                               run_cli, scaled, server_stats, wait_for_stats)

RECYCLING = ("subinterpreters", "processes")
NOT_YET = "--threads is not built for the processes strategy yet (issue 22): " \
          "test_processes_refuse_threads_by_name proves the refusal"


@pytest.fixture(autouse=True)
def in_process_only(request):
    if "strategy" in request.fixturenames and request.getfixturevalue("strategy") == "processes":
        pytest.skip(NOT_YET)


def concurrency_server(start_server, workers, threads, args=(), **kw):
    return start_server(workers=workers, app="concurrency",
                        args=["--pythonpath", str(APPS_DIR), "--threads", str(threads), *args], **kw)


def statuses(results):
    return [getattr(r, "status", r) for r in results]


def test_eight_sleeping_requests_overlap_in_one_worker(start_server, strategy):
    server = concurrency_server(start_server, workers=1, threads=8)
    warm = concurrent_gets(server, ["/sleep?s=0.05"] * 8)  # every thread started
    assert statuses(warm) == [200] * 8, warm
    started = time.monotonic()
    results = concurrent_gets(server, ["/sleep?s=1"] * 8)
    elapsed = time.monotonic() - started
    assert statuses(results) == [200] * 8, results
    answers = [r.json() for r in results]
    assert all(a["s"] == 1.0 and a["slept"] >= 0.99 for a in answers), answers
    # Well under 2 s: serially the 8 would take 8 s, two at a time 4 s.
    assert elapsed < 1.0 + 0.6 * TIME_SCALE, (
        "8 requests that each sleep 1 s took %.2f s on 1 worker x 8 threads" % elapsed)
    # One worker, eight threads: one process, eight distinct OS threads at once.
    assert len({a["pid"] for a in answers}) == 1, answers
    assert len({a["thread"] for a in answers}) == 8, answers
    assert len({a["worker_info"]["worker"] for a in answers}) == 1, answers
    assert len({r.header("X-Request-Id") for r in results}) == 8


def test_without_threads_one_worker_serves_one_at_a_time(start_server, strategy):
    """The default stays --threads 1: the capacity of a worker is one request."""
    server = concurrency_server(start_server, workers=1, threads=1)
    started = time.monotonic()
    results = concurrent_gets(server, ["/sleep?s=0.3"] * 3)
    elapsed = time.monotonic() - started
    assert statuses(results) == [200] * 3, results
    assert elapsed >= 0.85, "3 x 0.3 s on 1 worker x 1 thread took %.2f s: overlapped" % elapsed
    assert server_stats(server)["threads_per_worker"] == 1


@pytest.mark.slow
def test_a_stuck_thread_gets_504_while_its_worker_answers_on(start_server, strategy):
    server = concurrency_server(start_server, workers=1, threads=4, args=["--timeout", "2"])
    pid = server.get("/sleep?s=0").json()["pid"]
    spin = {}

    def spin_once():
        try:
            spin["r"] = server.get("/spin?s=30", timeout=20)
        except Exception as e:  # asserted below
            spin["r"] = e
        spin["at"] = time.monotonic()

    spinner = threading.Thread(target=spin_once)
    began = time.monotonic()
    spinner.start()
    wait_for_stats(server, lambda s: s["busy_threads"] >= 1, "the spinning request running")
    # Sleeps of 0.5 s, a new one every 0.25 s, from before the spin's deadline (2 s) to
    # after it: those in flight when the spin is interrupted must finish, 200.
    threads, results = in_threads(12, lambda i: (time.sleep(0.25 * i),
                                                 server.get("/sleep?s=0.5", timeout=20))[1])
    join_all(threads, timeout=30)
    spinner.join(scaled(30))
    assert not spinner.is_alive(), "the spinning request got no answer"
    assert getattr(spin["r"], "status", None) == 504, spin["r"]
    took = spin["at"] - began
    assert took < 2 + scaled(3), "the 504 came %.1f s after the request (--timeout 2)" % took
    assert statuses(results) == [200] * 12, results
    # The same worker answered throughout: the stuck thread was interrupted, not its worker.
    assert {r.json()["pid"] for r in results} == {pid}, [r.json() for r in results]
    after = server.get("/sleep?s=0")
    assert after.status == 200 and after.json()["pid"] == pid, after
    body = spin["r"].json()
    assert body["request_id"] == spin["r"].header("X-Request-Id"), body


@pytest.mark.slow
def test_recycling_under_load_loses_nothing(start_server, strategy):
    server = concurrency_server(start_server, workers=2, threads=4, args=["--max-requests", "20"])
    clients, per_client = 8, 30
    failures = []

    def client(i):
        answers = []
        for j in range(per_client):
            path = "/sleep?s=0.02" if j % 2 else "/hello"
            try:
                r = server.get(path, timeout=20)
            except Exception as e:  # a dropped connection is a lost request
                failures.append((i, j, path, repr(e)))
                continue
            ok = r.status == 200 and (r.body == b"hello" if path == "/hello" else r.json()["s"] == 0.02)
            if not ok:
                failures.append((i, j, path, r))
            answers.append(r.status)
        return answers

    threads, results = in_threads(clients, client)
    join_all(threads, timeout=120)
    assert not failures, "%d of %d requests failed across recycles: %r\n%s" % (
        len(failures), clients * per_client, failures[:10], server.log()[-3000:])
    assert sum(len(r) for r in results) == clients * per_client
    s = server_stats(server)
    if strategy in RECYCLING:
        # 240 requests, 2 workers recycled every 20: about 11 recycles, all under load.
        assert s["recycles_total"] >= 5, s


def test_stats_and_metrics_count_busy_threads(start_server, strategy):
    server = concurrency_server(start_server, workers=2, threads=3)
    s = server_stats(server)
    assert s["threads_per_worker"] == 3, s
    assert s["busy_threads"] == 0, s
    for w in s["worker_details"]:
        assert w["threads"] == 3 and w["busy_threads"] == 0 and w["busy"] is False, w
    # Three requests held 3 s: on one worker or two, 3 busy threads in all.
    threads, results = in_threads(3, lambda i: server.get("/sleep?s=3", timeout=20))
    try:
        s = wait_for_stats(server, lambda s: s["busy_threads"] == 3, "3 busy threads")
        details = s["worker_details"]
        assert sum(w["busy_threads"] for w in details) == 3, details
        for w in details:
            assert 0 <= w["busy_threads"] <= 3, w
            assert w["busy"] is (w["busy_threads"] > 0), w
        metrics = server.get("/metrics").text
        found = re.search(r"^gilgamesh_busy_threads (\S+)$", metrics, re.M)
        assert found and float(found.group(1)) == 3, metrics[:3000]
        assert "# TYPE gilgamesh_busy_threads gauge" in metrics
        assert re.search(r"^gilgamesh_busy_workers ", metrics, re.M), "existing names stay"
    finally:
        join_all(threads, timeout=30)
    assert statuses(results) == [200] * 3, results
    s = wait_for_stats(server, lambda s: s["busy_threads"] == 0, "the threads idle again")
    assert all(w["busy_threads"] == 0 and w["busy"] is False for w in s["worker_details"]), s


@pytest.mark.parametrize("workers", [1, 2])
def test_wsgi_multithread_is_true_with_threads(start_server, strategy, workers):
    server = start_server(workers=workers, wsgi="wsgi_streaming:app",
                          args=["--pythonpath", str(APPS_DIR), "--threads", "4"])
    env = server.get("/environ").json()
    assert env["wsgi.multithread"] is True, env
    # And a WSGI app's requests overlap in one worker as route handlers' do.
    if workers == 1:
        started = time.monotonic()
        results = concurrent_gets(server, ["/sleep?s=0.5"] * 4)
        elapsed = time.monotonic() - started
        assert statuses(results) == [200] * 4, results
        assert len({r.json()["thread"] for r in results}) == 4, [r.json() for r in results]
        assert elapsed < 0.5 + 0.6 * TIME_SCALE, "4 x 0.5 s took %.2f s on 1 worker x 4 threads" % elapsed


@pytest.mark.parametrize("bad", ["0", "-1", "many", ""])
def test_threads_must_be_a_positive_number(gilgamesh_bin, bad):
    """As every bad flag (test_cli.py): exit 2, one line naming it."""
    result = run_cli(["--app", "handlers.demo", "--threads", bad])
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "threads" in lines[0], result.stderr


def test_processes_refuse_threads_by_name(gilgamesh_bin):
    """Until a worker process serves several requests at once, the start is refused with
    what to do instead, not served one at a time behind a flag that promised more."""
    result = run_cli(["--app", "handlers.demo", "--strategy", "processes", "--workers", "1",
                      "--threads", "4", "--port", "0"], timeout=60)
    assert result.returncode == 1, result
    assert "--threads 4 is not available with --strategy processes" in result.stderr, result.stderr
    assert "--workers" in result.stderr, result.stderr
