"""Start and stop 8 sub-interpreters that import datetime, email, http.client and
decimal, many times in a row. CPython 3.13.5 corrupted its heap when several
sub-interpreters imported datetime at once; every cycle must start, answer and
exit 0 (no crash, no signal)."""

import os
import time

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, strategies

RUNS = int(os.environ.get("GILGAMESH_STRESS_RUNS", "20"))
WORKERS = 8
BUDGET_S = 110.0

EXPECTED = {
    "date": "Thu, 29 Feb 2024 12:30:00 GMT",
    "decimal": "3.305",
    "reason": "I'm a Teapot",
    "json": '{"a": [1, 2], "b": 1}',
    "email": "hi",
}


@pytest.mark.slow
@pytest.mark.skipif("subinterpreters" not in strategies(),
                    reason="subinterpreters not in GILGAMESH_STRATEGIES")
def test_repeated_startup_with_stdlib_imports(gilgamesh_bin):
    started = time.monotonic()
    completed = 0
    for run in range(RUNS):
        if time.monotonic() - started > BUDGET_S:
            break  # a slow machine runs fewer cycles rather than blow the suite's budget
        server = GilgameshServer("subinterpreters", workers=WORKERS, app="stdlib_imports",
                                 args=["--pythonpath", str(APPS_DIR)])
        try:
            server.start()
            health = server.get("/healthz")
            assert health.status == 200 and health.json() == {"status": "ok"}, (run, health)
            r = server.get("/stdlib")
            assert r.status == 200, (run, r)
            assert r.json() == EXPECTED, (run, r.json())
            code = server.stop()
            assert code == 0, "run %d: exit code %r (negative: killed by signal)\n%s" % (
                run, code, server.log()[-4000:])
        finally:
            server.kill()
        completed += 1
    assert completed >= min(RUNS, 5), \
        "only %d start/stop cycles fit in %.0f s" % (completed, BUDGET_S)


@pytest.mark.slow
@pytest.mark.skipif("subinterpreters" not in strategies(),
                    reason="subinterpreters not in GILGAMESH_STRATEGIES")
def test_repeated_parallel_startup_importing_wide_stdlib(gilgamesh_bin):
    """8 sub-interpreters import ~60 stdlib modules (most with C extensions) in parallel,
    start after start: no crash, and every worker imported the same set."""
    started = time.monotonic()
    completed = 0
    for run in range(RUNS):
        if time.monotonic() - started > BUDGET_S:
            break  # a slow machine runs fewer cycles rather than blow the suite's budget
        server = GilgameshServer("subinterpreters", workers=WORKERS, app="stdlib_wide",
                                 args=["--pythonpath", str(APPS_DIR)])
        try:
            server.start()
            answers = [server.get("/modules").json() for _ in range(2 * WORKERS)]
            assert all(a == answers[0] for a in answers), (run, answers)
            assert {"datetime", "decimal", "sqlite3", "ssl", "asyncio"} <= set(answers[0]["imported"]), answers[0]
            code = server.stop()
            assert code == 0, "run %d: exit code %r (negative: killed by signal)\n%s" % (
                run, code, server.log()[-4000:])
        finally:
            server.kill()
        completed += 1
    assert completed >= min(RUNS, 5), \
        "only %d start/stop cycles fit in %.0f s" % (completed, BUDGET_S)
