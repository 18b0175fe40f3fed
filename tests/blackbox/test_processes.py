"""`--strategy processes`: forked workers that survive crashes.

These run under `processes` whatever GILGAMESH_STRATEGIES says (the strategy
is available in every build); the shared suite covers the demo routes with
GILGAMESH_STRATEGIES=processes.
"""

import json
import os
import re
import resource
import signal
import subprocess
import threading
import time

import pytest

from gilgamesh_harness import APPS_DIR, REPO, GilgameshServer, binary_path, free_port

STRATEGY = "processes"


@pytest.fixture(autouse=True, scope="module")
def no_core_dumps():
    """Workers are killed with SIGSEGV on purpose: no core files in the work tree."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.fixture
def processes_server(gilgamesh_bin):
    """Factory: processes_server(workers=, app=, args=, env=) -> a running `processes` server
    with tests/apps on its path, stopped (and killed if need be) when the test ends."""
    started = []

    def start(workers=2, app="crashy", args=(), env=None):
        server = GilgameshServer(STRATEGY, workers=workers, app=app,
                                 args=["--pythonpath", str(APPS_DIR), *args], env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.alive():
            server.stop()
        server.kill()


# --- helpers ----------------------------------------------------------------

def stats(server):
    r = server.get("/stats", timeout=5)
    assert r.status == 200, r
    return r.json()


def proc_stat(pid):
    """(state, ppid) of a live process, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def processes_of_server(server_pid):
    """The server and every live process it started (zygote, workers): they carry
    GILGAMESH_SERVER_PID=<server pid> in their environment."""
    needle = b"GILGAMESH_SERVER_PID=%d\0" % server_pid
    found = [server_pid] if alive(server_pid) else []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                if needle in f.read() + b"\0" and alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            pass  # gone meanwhile, or not ours to read
    return found


def run_to_exit(args, env=None, timeout=30):
    """Runs the server to its exit; returns (returncode, stderr, pid)."""
    proc = subprocess.Popen([str(binary_path()), *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, stderr, proc.pid


def wait_for_workers(server, count, timeout=15.0, exclude=()):
    """/stats once `count` live workers are up (none of them in `exclude`)."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(server)
        pids = s["worker_pids"]
        if (len(pids) == count and all(alive(p) for p in pids)
                and not set(pids) & set(exclude)):
            return s
        if time.monotonic() > deadline:
            raise AssertionError("workers did not recover: %r\n%s" % (s, server.log()[-3000:]))
        time.sleep(0.05)  # polling interval


def assert_process_tree(server, s):
    """Workers are children of the zygote, which is a child of the server."""
    zygote = s["zygote_pid"]
    assert proc_stat(zygote)[1] == server.process.pid, (zygote, proc_stat(zygote))
    for pid in s["worker_pids"]:
        assert pid != server.process.pid
        assert proc_stat(pid)[1] == zygote, (pid, proc_stat(pid))


def load(server, path, clients, per_client, on_response=None):
    """`clients` threads, each sending `per_client` GET `path` on its own keep-alive
    connection. Returns [(status, body)] and the exceptions raised."""
    results, errors = [], []
    lock = threading.Lock()

    def client():
        try:
            with server.raw(timeout=30) as conn:
                for _ in range(per_client):
                    r = conn.request("GET", path)
                    with lock:
                        results.append((r.status, r.body))
                        if on_response:
                            on_response(len(results))
        except Exception as e:  # recorded, asserted by the caller
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "load did not finish in time"
    return results, errors


# --- tests ------------------------------------------------------------------

def test_each_worker_is_its_own_forked_process(processes_server):
    server = processes_server(workers=3)
    s = stats(server)
    assert s["strategy"] == "processes" and s["workers"] == 3
    assert s["build"] in ("default", "free-threaded") and isinstance(s["gil_enabled"], bool)
    assert {"queue_depth", "busy_workers", "max_queue", "replacements_total"} <= set(s), s
    assert len(s["worker_pids"]) == 3 and len(set(s["worker_pids"])) == 3
    assert [d["worker"] for d in s["worker_details"]] == [0, 1, 2]
    for d in s["worker_details"]:
        assert set(d) >= {"worker", "pid", "requests", "replacements", "busy", "state"}, d
    assert_process_tree(server, s)

    results, errors = load(server, "/slow?ms=30", clients=6, per_client=8)
    assert not errors, errors
    assert all(status == 200 for status, _ in results), results
    answers = [json.loads(body) for _, body in results]
    assert {a["pid"] for a in answers} == set(s["worker_pids"])
    assert {a["worker"] for a in answers} == {0, 1, 2}
    # Each worker index is always the same process (nothing crashed or recycled).
    assert len({(a["worker"], a["pid"]) for a in answers}) == 3


def test_handler_that_kills_its_process_gets_502_and_worker_is_replaced(processes_server):
    server = processes_server(workers=2)
    before = stats(server)
    cases = [("segv", "killed by signal 11 (SIGSEGV)"), ("exit", "exited with status 3")]
    for how, words in cases:
        current = stats(server)["worker_pids"]
        r = server.get("/crash?how=" + how, headers={"X-Request-Id": "crash-" + how})
        assert r.status == 502, r
        assert r.header("Content-Type", "").startswith("application/json"), r
        body = r.json()
        assert set(body) == {"error", "request_id"} and body["request_id"] == "crash-" + how, body
        assert re.match(r"worker \d \(pid \d+\) died while handling the request: ", body["error"]), body
        assert words in body["error"], body
        pid = int(re.search(r"pid (\d+)", body["error"]).group(1))
        assert pid in current, (pid, current)
        # The next requests succeed at once, on the survivor or the replacement.
        for _ in range(4):
            assert server.get("/hello").body == b"hello"
        after = wait_for_workers(server, 2, exclude=[pid])
    assert after["replacements_total"] >= len(cases), after
    assert_process_tree(server, after)
    assert after["zygote_pid"] == before["zygote_pid"]
    assert "died while handling the request" in server.log()


def test_sigkill_from_outside_fails_only_the_request_on_that_worker(processes_server):
    server = processes_server(workers=3)
    s = stats(server)
    victim = s["worker_pids"][1]
    killed = threading.Event()

    def kill_once_warm(done):
        if done >= 30 and not killed.is_set():
            killed.set()
            os.kill(victim, signal.SIGKILL)

    results, errors = load(server, "/slow?ms=20", clients=6, per_client=40,
                           on_response=kill_once_warm)
    assert killed.is_set()
    assert not errors, errors
    assert len(results) == 240
    failed = [(status, body) for status, body in results if status != 200]
    # The victim was running at most one request; every other one completed.
    assert len(failed) <= 1, failed
    for status, body in failed:
        assert status == 502, (status, body)
        error = json.loads(body)["error"]
        assert "pid %d" % victim in error and "SIGKILL" in error, error
    after = wait_for_workers(server, 3, exclude=[victim])
    assert after["replacements_total"] >= 1
    assert not alive(victim)
    for _ in range(6):
        assert server.get("/hello").status == 200


def test_8_mib_bodies_are_echoed_intact(processes_server):
    server = processes_server(workers=2, args=["--max-body", str(16 << 20)])
    payloads = [os.urandom(8 << 20) for _ in range(3)]
    answers = [None] * len(payloads)

    def post(i):
        answers[i] = server.post("/echo", payloads[i], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for payload, r in zip(payloads, answers):
        assert r is not None and r.status == 200, r
        assert r.header("Content-Type") == "application/octet-stream"
        assert len(r.body) == len(payload) and r.body == payload
    # The workers are still the original ones.
    assert stats(server)["replacements_total"] == 0


def test_max_requests_recycles_workers_without_failing_a_request(processes_server):
    server = processes_server(workers=2, args=["--max-requests", "50"])
    first = stats(server)
    results, errors = load(server, "/pid", clients=4, per_client=100)
    assert not errors, errors
    assert [status for status, _ in results] == [200] * 400, [r for r in results if r[0] != 200]
    pids = {json.loads(body)["pid"] for _, body in results}
    assert len(pids) >= 6, pids  # 400 requests, 50 per worker life
    s = wait_for_workers(server, 2)
    assert s["recycles_total"] >= 6, s
    assert sum(d["recycles"] for d in s["worker_details"]) == s["recycles_total"], s
    assert s["replacements_total"] == 0, s
    assert not set(s["worker_pids"]) & set(first["worker_pids"]), s
    assert "recycling after 50 requests" in server.log()


def test_sigterm_drains_exits_0_and_leaves_no_process(processes_server):
    server = processes_server(workers=3, args=["--graceful-timeout", "10"])
    s = stats(server)
    recorded = s["worker_pids"] + [s["zygote_pid"]]
    assert len(recorded) == 4 and all(alive(p) for p in recorded)
    assert sorted(processes_of_server(server.process.pid)) == sorted(recorded + [server.process.pid])

    in_flight = []
    t = threading.Thread(target=lambda: in_flight.append(server.get("/slow?ms=800", timeout=15)))
    t.start()
    deadline = time.monotonic() + 5
    while stats(server)["busy_workers"] < 1:
        assert time.monotonic() < deadline, "the request never reached a worker"
        time.sleep(0.02)  # polling interval
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0, server.log()[-3000:]
    t.join(15)
    assert in_flight and in_flight[0].status == 200, in_flight
    for pid in recorded:
        assert proc_stat(pid) is None, (pid, proc_stat(pid))
    assert processes_of_server(server.process.pid) == []


def test_workers_and_zygote_die_with_a_killed_server(processes_server):
    server = processes_server(workers=2)
    s = stats(server)
    recorded = s["worker_pids"] + [s["zygote_pid"]]
    server.kill()  # SIGKILL: no chance to clean up; PR_SET_PDEATHSIG does it
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in recorded):
        assert time.monotonic() < deadline, [(p, proc_stat(p)) for p in recorded]
        time.sleep(0.05)  # polling interval


def test_handler_still_running_at_the_graceful_deadline_is_cut_off(processes_server):
    server = processes_server(workers=2, args=["--graceful-timeout", "1"])
    recorded = stats(server)["worker_pids"] + [stats(server)["zygote_pid"]]
    in_flight = []
    t = threading.Thread(target=lambda: in_flight.append(server.get("/slow?ms=8000", timeout=20)))
    t.start()
    deadline = time.monotonic() + 5
    while stats(server)["busy_workers"] < 1:
        assert time.monotonic() < deadline, "the request never reached a worker"
        time.sleep(0.02)  # polling interval
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0, server.log()[-3000:]
    # Not the 8 s of the handler: the deadline (1 s), then the worker is ended.
    assert time.monotonic() - started < 6
    t.join(20)
    assert in_flight and in_flight[0].status == 503, in_flight
    assert in_flight[0].json()["error"] == "server is shutting down"
    for pid in recorded:
        assert proc_stat(pid) is None, (pid, proc_stat(pid))
    assert processes_of_server(server.process.pid) == []


def test_app_import_failure_exits_nonzero_with_the_reason(gilgamesh_bin, tmp_path):
    (tmp_path / "broken_app.py").write_text(
        "import gilgamesh\nraise RuntimeError('configuration missing: FOO_URL')\n")
    code, stderr, pid = run_to_exit(
        ["--app", "broken_app", "--pythonpath", str(tmp_path), "--strategy", STRATEGY,
         "--workers", "2", "--host", "127.0.0.1", "--port", str(free_port())])
    assert code == 1, stderr
    assert "cannot load app 'broken_app' under strategy processes" in stderr, stderr
    assert "FOO_URL" in stderr
    # The traceback is logged once, not once per worker.
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    assert processes_of_server(pid) == []


def test_workers_dying_at_start_up_fail_the_start(gilgamesh_bin, tmp_path):
    marker = tmp_path / "die"
    marker.write_text("")
    code, stderr, pid = run_to_exit(
        ["--app", "crashy", "--pythonpath", str(APPS_DIR), "--strategy", STRATEGY,
         "--workers", "2", "--host", "127.0.0.1", "--port", str(free_port())],
        env=dict(os.environ, CRASHY_DIE_AT_START=str(marker)))
    assert code == 1, stderr
    assert "failed to start" in stderr and "exited with status 7" in stderr, stderr
    assert processes_of_server(pid) == []


def test_replacements_dying_at_start_up_back_off_then_recover(processes_server, tmp_path):
    marker = tmp_path / "die"
    server = processes_server(workers=2, env={"CRASHY_DIE_AT_START": str(marker)})
    marker.write_text("")
    assert server.get("/crash?how=exit").status == 502
    # The replacement keeps dying at start-up; the other worker serves meanwhile.
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        r = server.get("/hello")
        assert r.status == 200, r
        time.sleep(0.05)  # paces the requests sent while replacements keep failing
    attempts = server.log().count("replacement failed to start")
    # Back-off (100, 200, 400, 800 ms ...) rather than a tight fork loop.
    assert 2 <= attempts <= 6, server.log()[-3000:]
    marker.unlink()
    wait_for_workers(server, 2, timeout=15)


def test_single_phase_extension_loads_under_processes(processes_server):
    server = processes_server(workers=2, app="single_phase_ext")
    r = server.get("/extension")
    assert r.status == 200, r
    assert r.json()["extension"]
