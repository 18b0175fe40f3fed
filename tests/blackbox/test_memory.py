"""Memory stays bounded while workers are recycled (`--max-requests`).

A server recycling every 5 requests is driven through a few thousand requests
(hundreds of recycles); its memory (PSS of the server and every descendant:
worker processes, zygote) after the last recycle must stay within a fixed bound
of its memory after the first few. Unpatched CPython 3.13.5 leaks every ended
sub-interpreter's obmalloc arenas, about 2-3 MiB a recycle: hundreds of
recycles break the bound by far. A bounded implementation stays within a few
MiB of where it started.
"""

import http.client
import os
import threading
import time

import pytest

import gilgamesh_harness as harness
from gilgamesh_harness import HOST, GilgameshServer

MAX_REQUESTS = 5
WORKERS = 2
CLIENTS = 4
WARMUP_RECYCLES = 20          # the "first few": arenas, caches and the allocator settle
REQUESTS = 2000               # after the warm-up: REQUESTS / MAX_REQUESTS recycles, about 400
BOUND_MIB = 24.0              # unpatched 3.13.5: about 1 GiB over this run
BUDGET_S = 120.0              # a hard stop on a slow machine (normally 10-25 s per strategy)
RECYCLING = {"subinterpreters", "processes"}  # the others share one interpreter: nothing to recycle


def _children():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def pss_mib(pid):
    """PSS of `pid` and all its live descendants, MiB (shared pages counted once)."""
    children, todo, total_kb = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            pass  # a worker that ended between the listing and the read
    return total_kb / 1024.0


def stats(server):
    r = server.get("/stats", timeout=5.0)
    assert r.status == 200, r
    return r.json()


def recycles(body):
    """Workers recycled so far: `recycles_total`, else the sum over `worker_details`."""
    if isinstance(body.get("recycles_total"), int):
        return body["recycles_total"]
    return sum(w.get("recycles", 0) for w in body.get("worker_details", []))


def drive(server, count, deadline):
    """`count` requests over CLIENTS keep-alive connections; each must answer 200
    with the expected body. Returns how many did."""
    paths = [("/hello", b"hello"), ("/fib?n=12", b'{"n": 12, "value": 144}')]
    done, failures, lock = [0], [], threading.Lock()

    def client(share):
        conn = None
        try:
            for i in range(share):
                if time.monotonic() > deadline:
                    return
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, server.port, timeout=15.0)
                path, expected = paths[i % len(paths)]
                try:
                    conn.request("GET", path)
                    r = conn.getresponse()
                    body = r.read()
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = None
                    with lock:
                        failures.append("%s: %r" % (path, e))
                    continue
                if r.status != 200 or body != expected:
                    with lock:
                        failures.append("%s: %d %r" % (path, r.status, body[:200]))
                with lock:
                    done[0] += 1
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=client, args=(count // CLIENTS,)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 20.0))
    assert not any(t.is_alive() for t in threads), "clients still running past the deadline"
    assert not failures, "%d failed requests, e.g. %s" % (len(failures), failures[:5])
    return done[0]


def settle(server, deadline, recycling_strategy):
    """Waits until no request is queued or running and no recycle is half done:
    no worker in a starting/recycling state and, where a worker's counters are
    cumulative, every worker recycled once per MAX_REQUESTS requests served (a
    recycle runs after the response has gone out)."""
    body = {}
    while time.monotonic() < deadline:
        body = stats(server)
        details = body.get("worker_details") or []
        busy = body.get("busy_workers", 0) or any(w.get("busy") for w in details)
        recycling = any(w.get("state") in ("starting", "recycling", "replacing") for w in details)
        behind = recycling_strategy and any(
            w.get("recycles", 0) < w["requests"] // MAX_REQUESTS for w in details
            if isinstance(w.get("requests"), int)
            and w["requests"] >= MAX_REQUESTS * w.get("recycles", 0))
        if body.get("queue_depth", 0) == 0 and not busy and not recycling and not behind:
            return body
        time.sleep(0.05)  # polls /stats until the condition holds or the deadline passes
    raise AssertionError("server still busy or recycling at the deadline: %s" % {
        k: v for k, v in body.items() if k != "routes"})


@pytest.mark.slow
def test_memory_stays_bounded_while_recycling(start_server, strategy):
    started = time.monotonic()
    deadline = started + BUDGET_S
    server = start_server(workers=WORKERS, args=["--max-requests", str(MAX_REQUESTS)])

    # The first few recycles.
    drive(server, WARMUP_RECYCLES * MAX_REQUESTS, deadline)
    first = settle(server, deadline, strategy in RECYCLING)
    before_mib, recycles_before = pss_mib(server.process.pid), recycles(first)

    served = drive(server, REQUESTS, deadline)
    last = settle(server, deadline, strategy in RECYCLING)
    after_mib, recycles_after = pss_mib(server.process.pid), recycles(last)
    seconds = time.monotonic() - started
    done = recycles_after - recycles_before

    summary = "%s: PSS %.1f MiB after %d recycles, %.1f MiB after %d (%+.1f MiB%s), %d requests in %.1f s" % (
        strategy, before_mib, recycles_before, after_mib, recycles_after, after_mib - before_mib,
        ", %.1f KiB per recycle" % (1024.0 * (after_mib - before_mib) / done) if done else "",
        served, seconds)
    print(summary)
    assert server.alive(), "server died\n" + server.log()[-4000:]
    assert served == REQUESTS - REQUESTS % CLIENTS, "only %d requests in %.0f s: %s" % (
        served, BUDGET_S, summary)
    if strategy in RECYCLING:
        # Every worker recycles after 5 requests: the run really recycled hundreds of times.
        assert done >= 0.8 * served / MAX_REQUESTS, summary
    assert after_mib - before_mib < BOUND_MIB, summary


LEAK_WARNING = "would grow the server without bound"


def test_recycling_sub_interpreters_warns_where_cpython_leaks_them(gilgamesh_bin):
    """The bundled default build frees an ended sub-interpreter (patched): recycling it says
    nothing. The free-threaded build of 3.13.5 does not: --max-requests with sub-interpreters
    on it says, at start-up, that memory would grow and what to use instead."""
    if "free-threaded" not in harness.strategies():
        pytest.skip("free-threaded not declared by this build (NOT TESTED is printed)")
    quiet = GilgameshServer("subinterpreters", workers=1, args=["--max-requests", "5"]).start()
    try:
        assert quiet.get("/hello").status == 200
    finally:
        assert quiet.stop() == 0
    assert LEAK_WARNING not in quiet.log(), quiet.log()[-2000:]

    loud = GilgameshServer("subinterpreters", workers=1,
                           args=["--max-requests", "5", "--python-build", "free-threaded"]).start()
    try:
        assert loud.get("/hello").status == 200  # it warns, and still serves
    finally:
        assert loud.stop() == 0
    log = loud.log()
    assert LEAK_WARNING in log and "--strategy processes" in log, log[-2000:]

    plain = GilgameshServer("subinterpreters", workers=1,
                            args=["--python-build", "free-threaded"]).start()
    try:
        assert plain.get("/hello").status == 200
    finally:
        assert plain.stop() == 0
    assert LEAK_WARNING not in plain.log(), "no --max-requests: nothing to warn about"
