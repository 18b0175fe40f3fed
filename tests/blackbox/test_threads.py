"""--threads N: a worker serves up to N requests at once, each on its own OS thread, on
every strategy (tests/apps/concurrency.py, tests/apps/wsgi_streaming.py): sleeping
requests overlap inside one worker; a request past --timeout gets its 504 while the
worker's other threads answer on; recycling (--max-requests) drains a worker under load
without losing a request; /stats and /metrics count busy threads; wsgi.multithread.
And for worker processes with threads: a handler stuck in C is abandoned with its process
only once the process's other threads have answered, and a process that dies costs only
the requests it was running."""

import json
import os
import re
import signal
import threading
import time

import pytest

from gilgamesh_harness import (APPS_DIR, TIME_SCALE, GilgameshServer, concurrent_gets, in_threads,
                               join_all, run_cli, scaled, server_stats, wait_for, wait_for_stats)

RECYCLING = ("subinterpreters", "processes")


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
        # The pool's total and the workers' lanes are read a moment apart (a lane that starts
        # between the two counts in one only): wait until both say 3.
        s = wait_for_stats(server, lambda s: s["busy_threads"] == 3 and sum(
            w["busy_threads"] for w in s["worker_details"]) == 3, "3 busy threads")
        details = s["worker_details"]
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


# --- processes with threads ------------------------------------------------------------

@pytest.fixture
def processes_server(gilgamesh_bin):
    """Factory: processes_server(workers=, threads=, args=) -> a running `processes` server of
    tests/apps/concurrency.py (whatever GILGAMESH_STRATEGIES says), stopped when the test ends."""
    started = []

    def start(workers, threads, args=()):
        server = GilgameshServer("processes", workers=workers, app="concurrency",
                                 args=["--pythonpath", str(APPS_DIR), "--threads", str(threads), *args])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.alive():
            server.stop()
        server.kill()


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_processes_a_thread_stuck_in_c_goes_with_its_process_after_the_others_answer(processes_server):
    """time.sleep cannot be interrupted: past the grace the process is abandoned. A fresh
    process takes the slot at once, and the old one is killed only once its other threads
    have answered what they held: nothing but the stuck request is lost."""
    server = processes_server(workers=1, threads=4, args=["--timeout", "4"])
    old_pid = server.get("/sleep?s=0").json()["pid"]
    stuck = {}

    def stuck_once():
        try:
            stuck["r"] = server.get("/sleep?s=60", timeout=30)
        except Exception as e:  # asserted below
            stuck["r"] = e
        stuck["at"] = time.monotonic()

    began = time.monotonic()
    stuck_thread = threading.Thread(target=stuck_once)
    stuck_thread.start()
    wait_for_stats(server, lambda s: s["busy_threads"] >= 1, "the stuck request running")
    # Started 2.5 s in, sleeping 3 s: still running when the stuck one is abandoned (its
    # deadline 4 s + the 1 s grace), answered well before its own deadline.
    time.sleep(max(0.0, began + 2.5 - time.monotonic()))
    overlapping = server.get("/sleep?s=3", timeout=30)
    stuck_thread.join(scaled(30))
    assert not stuck_thread.is_alive(), "the stuck request got no answer"
    assert getattr(stuck["r"], "status", None) == 504, stuck["r"]
    assert stuck["at"] - began < 4 + scaled(3), "the 504 came %.1f s in" % (stuck["at"] - began)
    assert overlapping.status == 200 and overlapping.json()["pid"] == old_pid, overlapping
    # The slot was refilled by a new process; the old one is gone with its stuck thread.
    wait_for(lambda: not pid_alive(old_pid), "the abandoned process to be killed")
    after = server.get("/sleep?s=0")
    assert after.status == 200 and after.json()["pid"] != old_pid, after
    s = wait_for_stats(server, lambda s: s["abandoned_live"] == 0, "the abandoned run to end")
    assert s["abandoned_total"] == 1 and s["replacements_total"] == 1, s
    assert s["killed_total"] == 0 and s["interrupted_total"] >= 1, s
    log = server.log()
    assert "abandoned" in log and "killed its abandoned process %d" % old_pid in log, log[-3000:]


@pytest.mark.slow
def test_processes_interrupt_hits_only_the_stuck_thread(processes_server):
    """A pure-Python loop past --timeout gets HandlerTimeout in its own thread: the same
    process (pid) answers the requests on its other threads, before and after."""
    server = processes_server(workers=1, threads=3, args=["--timeout", "2"])
    pid = server.get("/sleep?s=0").json()["pid"]
    # The spin's deadline is 2 s in; the sleeps run from 1.5 s to 2.5 s, across it.
    paths = ["/spin?s=30", "/sleep?s=1", "/sleep?s=1"]
    threads, results = in_threads(3, lambda i: (time.sleep(1.5 if i else 0),
                                                server.get(paths[i], timeout=20))[1])
    join_all(threads, timeout=30)
    assert getattr(results[0], "status", None) == 504, results[0]
    assert [getattr(r, "status", r) for r in results[1:]] == [200, 200], results
    assert {r.json()["pid"] for r in results[1:]} == {pid}, [r.json() for r in results[1:]]
    s = wait_for_stats(server, lambda s: s["busy_threads"] == 0, "the interrupted thread to return")
    assert s["interrupted_total"] == 1 and s["killed_total"] == 0 and s["abandoned_total"] == 0, s
    after = server.get("/sleep?s=0")
    assert after.status == 200 and after.json()["pid"] == pid, after


@pytest.mark.slow
def test_processes_a_killed_worker_costs_its_running_requests_only(processes_server):
    """SIGKILL from outside while three of a process's four threads run a request: each
    of the three gets a 502 naming the process and the signal, and a new process takes
    the slot."""
    server = processes_server(workers=1, threads=4)
    victim = server.get("/sleep?s=0").json()["pid"]
    threads, results = in_threads(3, lambda i: server.get("/sleep?s=30", timeout=20))
    try:
        wait_for_stats(server, lambda s: s["busy_threads"] == 3, "three requests running")
        os.kill(victim, signal.SIGKILL)
    finally:
        join_all(threads, timeout=30)
    assert [getattr(r, "status", r) for r in results] == [502] * 3, results
    for r in results:
        error = json.loads(r.body)["error"]
        assert "pid %d" % victim in error and "SIGKILL" in error, error
    s = wait_for_stats(server, lambda s: s["worker_details"][0]["state"] == "idle"
                       and s["worker_pids"] and s["worker_pids"][0] != victim, "a new worker process")
    assert s["replacements_total"] >= 1, s
    answers = concurrent_gets(server, ["/sleep?s=0.3"] * 4)
    assert [getattr(r, "status", r) for r in answers] == [200] * 4, answers
    assert {r.json()["pid"] for r in answers} == {s["worker_pids"][0]}, [r.json() for r in answers]
    assert not pid_alive(victim)
