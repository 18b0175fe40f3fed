"""Threads an app starts itself, at shutdown and at a recycle (tests/apps/app_threads.py).

A Python program waits at exit for its non-daemon threads, and so does gunicorn's
worker. The server waits for them too, up to --graceful-timeout, on every strategy;
one that never ends must not hold the exit past it, nor stop a recycled worker's
slot from serving (under subinterpreters, ending an interpreter waits for its
threads: it once held the lock every other worker's start needs, and the server
stopped answering)."""

import os
import re
import signal
import subprocess
import time

import pytest

from gilgamesh_harness import (APPS_DIR, REPO, assert_no_sanitizer_report, binary_path, free_port,
                               scaled, wait_for_stats)


def serve(start_server, workers=1, args=()):
    return start_server(workers=workers, wsgi="app_threads:app",
                        args=["--pythonpath", str(APPS_DIR), *args])


def stop_by_sigterm(server, within):
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=within)
    except subprocess.TimeoutExpired:
        raise AssertionError("still running %.0f s after SIGTERM\n%s" % (
            within, server.log()[-3000:])) from None
    return code, time.monotonic() - started


def test_threads_the_app_starts_are_not_daemons(start_server):
    # As in a Python program's main thread: the default is a thread Python's exit waits for.
    server = serve(start_server)
    r = server.get("/daemon")
    assert r.status == 200 and r.json() == {"here": False, "new": False}, (r, r.body[:200])
    server.stop()


@pytest.mark.parametrize("atexit", ["", "raise"], ids=["plain", "atexit-raises"])
def test_the_apps_thread_finishes_before_the_server_exits(start_server, tmp_path, atexit):
    # atexit-raises: threading._shutdown() stops at an atexit call that raises, before its
    # join; the server once took that for "the threads are done", ended the interpreter under
    # the app's thread and aborted ("Py_EndInterpreter: not the last thread").
    server = serve(start_server, args=["--graceful-timeout", "20"])
    done = tmp_path / "done"
    r = server.get("/late?secs=1.0&atexit=%s&path=%s" % (atexit, done))
    assert r.status == 200, r
    code, elapsed = stop_by_sigterm(server, within=15)
    assert code == 0, server.log()[-3000:]
    assert done.exists() and done.read_text() == "done", (
        "the app's thread was cut off at exit (after %.2f s)\n%s" % (elapsed, server.log()[-3000:]))
    if atexit:
        assert re.search(r"atexit call raised ValueError: the app's atexit call failed "
                         r"\(\S+app_threads\.py:\d+ in _atexit_that_raises\)", server.log()), \
            server.log()[-3000:]


def test_an_app_thread_that_never_ends_does_not_hold_the_exit(start_server):
    server = serve(start_server, args=["--graceful-timeout", "1.5"])
    assert server.get("/forever").status == 200
    code, elapsed = stop_by_sigterm(server, within=15)
    assert code == 0, server.log()[-3000:]
    assert elapsed >= 1.0, "it did not wait for the app's thread (%.2f s)" % elapsed
    assert "never-ends" in server.log(), server.log()[-3000:]


@pytest.mark.parametrize("preload", [False, True], ids=["import", "preload"])
def test_a_thread_started_by_the_apps_import_does_not_hold_the_exit(start_server, strategy, preload):
    if preload and strategy != "subinterpreters":
        pytest.skip("--preload is a subinterpreters flag")
    # --preload imports the app in the main interpreter too: its thread there counts as well.
    server = start_server(workers=2, wsgi="app_threads:app", env={"APP_THREADS_AT_IMPORT": "1"},
                          args=["--pythonpath", str(APPS_DIR), "--graceful-timeout", "1.5",
                                *(["--preload"] if preload else [])])
    assert server.get("/hello").status == 200
    code, elapsed = stop_by_sigterm(server, within=15)
    assert code == 0, server.log()[-3000:]
    if strategy != "processes":  # its workers are forked after the import: the zygote has the thread
        assert elapsed >= 1.0, "it did not wait for the app's thread (%.2f s)" % elapsed
        assert "started-at-import" in server.log(), server.log()[-3000:]


def test_a_recycled_worker_left_to_its_apps_thread_does_not_stop_the_slot(start_server, strategy):
    if strategy in ("threads", "free-threaded"):
        pytest.skip("one shared interpreter: its workers are not recycled")
    server = serve(start_server, args=["--max-requests", "2", "--max-requests-jitter", "0",
                                       "--graceful-timeout", "1"])
    assert server.get("/forever").status == 200
    # Several recycles, the first of them while the thread runs on.
    for i in range(8):
        r = server.get("/hello", timeout=15)
        assert r.status == 200, (i, r, server.log()[-3000:])
    deadline = time.monotonic() + 10
    while "never-ends" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "never-ends" in server.log(), server.log()[-3000:]
    assert server.get("/hello", timeout=15).status == 200
    # /stats counts the interpreter left to the thread as left, not as ended: one worker
    # serves, so every other interpreter created was ended or left.
    left = 1 if strategy == "subinterpreters" else 0
    stats = wait_for_stats(server, lambda s: s["interpreters_created"] - s["interpreters_ended"]
                           - s["interpreters_left"] == 1, "one live interpreter in /stats")
    assert stats["interpreters_left"] == left, stats
    assert stats["interpreters_ended"] >= 2, stats
    code, _ = stop_by_sigterm(server, within=15)
    assert code == 0, server.log()[-3000:]


def test_an_app_whose_import_fails_after_starting_a_thread_is_refused_at_once(gilgamesh_bin, strategy,
                                                                             tmp_path):
    # Each worker's interpreter (or the one shared) is ended, or left, without waiting for
    # the thread: the start failed. It once hung for good (subinterpreters, threads).
    args = [str(binary_path()), "--host", "127.0.0.1", "--port", str(free_port()),
            "--strategy", strategy, "--workers", "2", "--pythonpath", str(APPS_DIR),
            "--wsgi", "app_threads_broken:app"]
    env = dict(os.environ, GILGAMESH_PROBE_CACHE=str(tmp_path / "probe-cache"))
    try:
        result = subprocess.run(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=scaled(30))
    except subprocess.TimeoutExpired:
        raise AssertionError("a start that failed did not end within 30 s") from None
    assert_no_sanitizer_report(result.stdout + result.stderr, "gilgamesh " + " ".join(args[1:]))
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "broken on purpose" in result.stderr, result.stderr[-3000:]
