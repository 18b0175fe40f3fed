"""Built-in endpoints answered by the I/O threads: /healthz, /stats, /."""

import time

import pytest

from gilgamesh_harness import APPS_DIR, Gate, find_route_entry, in_threads, join_all, wait_for_stats


def test_healthz(demo_server):
    r = demo_server.get("/healthz")
    assert r.status == 200
    assert r.header("Content-Type", "").startswith("application/json")
    assert r.json() == {"status": "ok"}


def test_stats_describes_the_server(demo_server):
    r = demo_server.get("/stats")
    assert r.status == 200, r
    stats = r.json()
    for key in ("strategy", "workers", "python_version", "build", "gil_enabled", "uptime_s",
                "queue_depth", "busy_workers", "routes"):
        assert key in stats, (key, stats)
    assert stats["strategy"] == demo_server.strategy
    assert stats["workers"] == demo_server.workers
    assert stats["python_version"].startswith("3.")
    assert stats["build"] in ("default", "free-threaded")
    assert isinstance(stats["gil_enabled"], bool)
    if demo_server.strategy == "free-threaded":
        assert stats["build"] == "free-threaded" and stats["gil_enabled"] is False
    if demo_server.strategy in ("subinterpreters", "threads"):
        assert stats["build"] == "default" and stats["gil_enabled"] is True
    assert isinstance(stats["uptime_s"], (int, float)) and stats["uptime_s"] >= 0
    assert isinstance(stats["queue_depth"], int) and stats["queue_depth"] >= 0
    assert isinstance(stats["busy_workers"], int) and 0 <= stats["busy_workers"] <= stats["workers"]


def test_stats_uptime_grows(demo_server):
    first = demo_server.get("/stats").json()["uptime_s"]
    wait_for_stats(demo_server, lambda s: s["uptime_s"] > first, "uptime_s to grow", timeout=5)


def route_stats(server, method, path):
    table = server.get("/stats").json()["routes"]
    entry = find_route_entry(table, method, path)
    assert entry is not None, ("no %s %s in /stats routes" % (method, path), table)
    return entry


def test_stats_count_requests_per_route(demo_server):
    before = route_stats(demo_server, "GET", "/hello")
    for key in ("count", "errors", "p50_ms", "p99_ms"):
        assert key in before, (key, before)
    for _ in range(5):
        assert demo_server.get("/hello").status == 200
    after = route_stats(demo_server, "GET", "/hello")
    assert after["count"] - before["count"] == 5, (before, after)
    assert after["errors"] == before["errors"]
    assert 0 <= after["p50_ms"] <= after["p99_ms"], after


def test_stats_count_rejected_requests_per_route(demo_server):
    before = route_stats(demo_server, "GET", "/fib")
    assert demo_server.get("/fib?n=oops").status == 400
    after = route_stats(demo_server, "GET", "/fib")
    assert after["count"] - before["count"] == 1, (before, after)


def test_index_lists_routes_with_docs(demo_server):
    r = demo_server.get("/")
    assert r.status == 200, r
    listing = r.json()
    table = listing["routes"] if isinstance(listing, dict) and "routes" in listing else listing
    fib = find_route_entry(table, "GET", "/fib")
    assert fib is not None, listing
    assert fib["doc"] == "Naive recursive Fibonacci of n (0..35): pure CPU, exponential in n."
    post_json = find_route_entry(table, "POST", "/json")
    assert post_json is not None and post_json["doc"].startswith("Parse the JSON body"), listing
    assert find_route_entry(table, "GET", "/json") is None, listing


@pytest.mark.slow
def test_builtins_answer_while_every_worker_is_busy(start_server):
    workers = 2
    server = start_server(workers=workers, app="gate", args=["--pythonpath", str(APPS_DIR)])
    with Gate() as gate:
        threads, results = in_threads(workers + 2, lambda i: server.get(gate.path(i), timeout=30))
        # Every worker is held at the gate, and two more requests wait in the queue.
        gate.wait_arrivals(workers)
        wait_for_stats(server, lambda s: s["busy_workers"] == workers and s["queue_depth"] == 2,
                       "every worker busy and two requests queued")
        for path in ("/healthz", "/readyz", "/stats", "/metrics", "/"):
            started = time.monotonic()
            r = server.get(path, timeout=5)
            elapsed = time.monotonic() - started
            assert r.status == 200, r
            assert elapsed < 2.0, "%s took %.2f s while the workers were busy" % (path, elapsed)
        assert gate.arrivals == workers, "a queued request ran while every worker was held"
        gate.release()
        join_all(threads)
    for i, r in enumerate(results):
        assert not isinstance(r, Exception), results
        assert r.status == 200 and r.json() == {"released": str(i)}, (i, r)
