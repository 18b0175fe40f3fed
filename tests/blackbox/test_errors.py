"""Error answers: 404, 405, 431, 413, 400 on garbage, and every kind of handler
result or failure (tests/apps/behaviours.py)."""

import os
import signal
import socket
import time

import pytest

from gilgamesh_harness import APPS_DIR, find_route_entry, wait_for


def assert_json_error(response, status):
    assert response.status == status, response
    assert response.header("Content-Type", "").startswith("application/json"), response
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("request_id") == response.header("X-Request-Id"), response
    return body


def test_unknown_path_is_404_json(demo_server):
    body = assert_json_error(demo_server.get("/definitely/not/here"), 404)
    assert body["request_id"]


def test_wrong_method_is_405_with_allow(demo_server):
    r = demo_server.post("/hello", b"x")
    assert_json_error(r, 405)
    allow = [m.strip() for m in (r.header("Allow") or "").split(",")]
    assert "GET" in allow and "POST" not in allow, r


def test_get_on_post_route_is_405_allowing_post(demo_server):
    r = demo_server.get("/json")
    assert_json_error(r, 405)
    assert "POST" in [m.strip() for m in (r.header("Allow") or "").split(",")], r


def test_oversized_headers_are_431(demo_server):
    with demo_server.raw() as conn:
        conn.send(b"GET /hello HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        r = conn.read_response()
    assert r.status == 431, r


def test_many_headers_over_8k_are_431(demo_server):
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(100))  # ~10 KiB
    with demo_server.raw() as conn:
        conn.send(b"GET /hello HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
        r = conn.read_response()
    assert r.status == 431, r


def test_headers_just_under_the_limit_are_fine(demo_server):
    with demo_server.raw() as conn:
        r = conn.request("GET", "/hello", headers={"X-Big": "a" * 6000})
    assert r.status == 200 and r.body == b"hello", r


def test_max_header_size_raises_the_head_limit(start_server):
    # Large cookies and tokens: a 12 KiB Cookie is served whole with --max-header-size 16384,
    # and a head past the raised limit is still a 431 that names it.
    server = start_server(workers=1, asgi="asgi_echo:app",
                          args=["--pythonpath", str(APPS_DIR), "--max-header-size", "16384"])
    cookie = "session=" + "c" * 12 * 1024
    with server.raw() as conn:
        r = conn.request("GET", "/", headers={"Cookie": cookie})
        assert r.status == 200, r
        assert ["cookie", cookie] in r.json()["headers"], r.json()["headers"][:3]
    with server.raw() as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 17000 + b"\r\n\r\n")
        r = conn.read_response()
    assert_json_error(r, 431)
    assert "exceed 16384 bytes" in r.json()["error"], r.json()


def test_malformed_request_line_is_400(demo_server):
    with demo_server.raw() as conn:
        conn.send(b"GARBAGE\r\n\r\n")
        r = conn.read_response()
        assert r.status == 400, r
        _, closed = conn.read_until_closed(5.0)
        assert closed, "connection kept open after an unparseable request"
    assert demo_server.get("/hello").status == 200


def test_body_over_max_body_is_413(start_server):
    server = start_server(workers=1, args=["--max-body", "1024"])
    ok = server.post("/json", b'{"pad": "' + b"x" * 900 + b'"}')
    assert ok.status == 200, ok
    r = server.post("/json", b'{"pad": "' + b"x" * 2000 + b'"}')
    assert r.status == 413, r
    assert server.get("/hello").status == 200


def test_chunked_body_over_max_body_is_413(start_server):
    server = start_server(workers=1, args=["--max-body", "1024"])
    chunk = b"x" * 600
    wire = (b"POST /json HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 3 + b"0\r\n\r\n")
    with server.raw() as conn:
        try:
            conn.send(wire)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading at the limit; the answer is still due
        r = conn.read_response()
    assert r.status == 413, r


# --- handler results and failures -----------------------------------------

def assert_logged(server, text, request_id, timeout=5.0):
    """The server's log has a line with `request_id` that mentions `text` (polled: logs are flushed
    by another thread)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log().splitlines() if request_id in line]
        if any(text in line for line in lines):
            return
        if time.monotonic() > deadline:
            raise AssertionError("no log line with %r and %r in:\n%s" % (request_id, text, "\n".join(lines)))
        time.sleep(0.05)  # polling interval


def test_debug_flag_puts_the_exception_in_the_body(start_server):
    server = start_server(workers=1, app="behaviours", args=["--pythonpath", str(APPS_DIR), "--debug"])
    r = server.get("/raise")
    body = assert_json_error(r, 500)
    assert body["error"] == "internal server error", body
    assert body["exception"] == "ValueError: boom from the handler", body
    assert "Traceback (most recent call last)" in body["traceback"], body
    assert "raise_value_error" in body["traceback"], body

@pytest.fixture
def behaviours(start_server):
    return start_server(workers=2, app="behaviours", args=["--pythonpath", str(APPS_DIR)])


def test_handler_results_and_failures(behaviours):
    # One server per strategy for every case below (start-up is the slow part).
    server = behaviours

    r = server.get("/raise")
    body = assert_json_error(r, 500)
    # The exception's type and text go to the log, not to the client (see --debug).
    assert body == {"error": "internal server error", "request_id": r.header("X-Request-Id")}, body
    assert_logged(server, "ValueError: boom from the handler", body["request_id"])

    # Every worker keeps serving after the exception.
    for _ in range(2 * server.workers):
        r = server.get("/ok")
        assert r.status == 200 and r.json() == {"ok": True}, r

    r = server.get("/teapot", headers={"X-Request-Id": "tea-1"})
    assert r.status == 418
    assert r.json() == {"error": "teapot", "request_id": "tea-1"}

    r = server.get("/custom")
    assert r.status == 201, r
    assert r.header("X-Custom") == "1"
    assert r.header("Content-Type", "").startswith("text/csv")
    assert r.body == b"a,b\n1,2\n"

    r = server.get("/bytes")
    assert r.status == 200
    assert r.header("Content-Type") == "application/octet-stream"
    assert r.body == b"\x00\x01binary\xff"

    r = server.get("/text")
    assert r.status == 200 and r.header("Content-Type", "").startswith("text/plain")
    assert r.body.decode("utf-8") == "grüße ☃"

    r = server.get("/list")
    assert r.status == 200 and r.json() == [1, "two", {"three": 3}, None]

    r = server.get("/none")
    assert r.status == 204, r
    assert r.body == b""

    r = server.get("/unsupported")
    body = assert_json_error(r, 500)
    assert body["error"] == "internal server error", body
    assert_logged(server, "set", body["request_id"])

    r = server.post("/echo?a=1&b=two%20words&a=3", b"12345", headers={"X-Test": "yes"})
    assert r.status == 200, r
    echo = r.json()
    assert echo["method"] == "POST" and echo["path"] == "/echo"
    assert echo["query"] == {"a": "3", "b": "two words"}
    assert echo["x_test"] == "yes" and echo["body_length"] == 5
    assert echo["request_id"] == r.header("X-Request-Id")

    assert server.get("/ok").status == 200
    assert server.alive()

    # /stats counts the handler failure against its route.
    raise_stats = find_route_entry(server.get("/stats").json()["routes"], "GET", "/raise")
    assert raise_stats is not None and raise_stats["count"] == 1, raise_stats
    assert raise_stats["errors"] == 1, raise_stats


def test_child_processes_and_pipes_behave_as_under_python(behaviours, strategy):
    # One server for both parts (start-up is the slow part).
    # As under `python`: SIGPIPE is ignored in every process of the server (a worker process
    # that wrote to a pipe its reader had closed was killed by it: 502), and a child the app
    # starts gets its default action back (under the in-process strategies the server blocked
    # SIGPIPE, and the mask reached the child: `yes` printed "Broken pipe" and exited 1).
    r = behaviours.get("/broken-pipe")
    assert r.status == 200 and r.json() == {"raised": "BrokenPipeError"}, r
    r = behaviours.get("/child-sigpipe")
    assert r.status == 200 and r.json() == {"read": "y\n", "returncode": -13, "stderr": ""}, r

    # sys.executable was "": subprocess.run([sys.executable, ...]) failed, and so did every
    # multiprocessing start method that runs it (spawn; forkserver, the default from 3.14).
    r = behaviours.get("/python-child")
    assert r.status == 200, r
    got = r.json()
    assert os.path.isabs(got["executable"]) and os.access(got["executable"], os.X_OK), got
    assert os.path.basename(got["executable"]).startswith("python3"), got
    assert got["child"] == got["parent"], got  # the same Python, the same prefix
    if strategy == "subinterpreters":  # multiprocessing's queues need daemon threads
        assert "BrokenProcessPool" in got["pool"], got
    else:
        # The child imported this route app's module, which imports gilgamesh: before the
        # server's pure-Python copy for such children, "No module named 'gilgamesh'".
        assert got["pool"] == [[f, None, 200] for f in (1, 1, 2, 6, 24)], got
    assert behaviours.alive()


def test_a_handler_that_calls_os_exit_abort_or_exec_ends_only_its_request(behaviours, strategy):
    # Under the in-process strategies every worker lives in the server's process: os._exit(),
    # os.abort() and os.exec* raise gilgamesh.ProcessExitRefused there (the request's generic
    # 500, logged); under processes the worker ends and is replaced (502). The server serves on.
    server = behaviours
    for path, call in (("/exit", "os._exit(3)"), ("/abort", "os.abort()")):
        r = server.get(path)
        if strategy == "processes":
            body = assert_json_error(r, 502)
            assert "exited with status 3" in body["error"] or "SIGABRT" in body["error"], body
        else:
            body = assert_json_error(r, 500)
            assert_logged(server, "ProcessExitRefused: %s would end the whole server" % call, body["request_id"])
        assert server.alive()
        for _ in range(2 * server.workers):
            assert server.get("/ok").status == 200
    if strategy != "processes":  # (a worker process would become /bin/true, and exit)
        body = assert_json_error(server.get("/exec"), 500)
        assert_logged(server, "ProcessExitRefused: os.execv('/bin/true', ...) would replace the whole server",
                      body["request_id"])
        assert server.alive() and server.get("/ok").status == 200
    # A child the handler forks is another process: its os._exit() exits it.
    r = server.get("/fork-exit")
    assert r.status == 200, r
    if r.json()["forked"]:
        assert r.json()["exit_code"] == 7, r.json()
    else:
        assert strategy == "subinterpreters", r.json()  # the one kind that may not fork
    assert server.alive()


def test_a_handler_that_signals_its_own_process_ends_only_its_request(start_server, strategy):
    # In-process, a signal that would end, stop or restart the server (sent to its pid or its group,
    # raised, sent to one of its threads, or due from a timer) raises ProcessExitRefused: the
    # request's generic 500, logged. Signal 0 and signals whose default is to be ignored go.
    # Under processes the worker takes the signal itself: SIGKILL ends it (502, replaced);
    # its os.kill() and os.killpg() may not reach the server or their process group.
    # The server leads a process group of its own: were the guard gone, os.killpg() would
    # end it and not this test.
    server = start_server(workers=2, app="behaviours", args=["--pythonpath", str(APPS_DIR)], preexec_fn=os.setpgrp)
    if strategy == "processes":
        body = assert_json_error(server.get("/signal-self?call=kill&sig=KILL"), 502)
        assert "SIGKILL" in body["error"], body
        # ... but not the process group it shares with the server (which leads it here).
        body = assert_json_error(server.get("/signal-self?call=killpg&sig=TERM"), 500)
        assert_logged(server, "ProcessExitRefused: os.killpg(%d, SIGTERM) would end the whole server: it reaches "
                      "the server's process" % server.process.pid, body["request_id"])
    else:
        pid = server.process.pid
        for query, call in (("call=kill&sig=KILL", "os.kill(%d, SIGKILL) would end" % pid),
                            ("call=kill&sig=TERM", "os.kill(%d, SIGTERM) would end" % pid),
                            ("call=kill&sig=STOP", "os.kill(%d, SIGSTOP) would stop" % pid),
                            ("call=kill&sig=USR1", "os.kill(%d, SIGUSR1) would end" % pid),
                            ("call=kill&sig=HUP", "os.kill(%d, SIGHUP) would restart" % pid),
                            ("call=killpg&sig=TERM", "os.killpg(%d, SIGTERM) would end" % pid),
                            ("call=raise&sig=INT", "signal.raise_signal(SIGINT) would end"),
                            ("call=pthread_kill&sig=TERM", "signal.pthread_kill("),
                            ("call=alarm", "signal.alarm(1) (SIGALRM) would end"),
                            ("call=setitimer", "signal.setitimer(ITIMER_REAL, 0.5) (SIGALRM) would end")):
            body = assert_json_error(server.get("/signal-self?" + query), 500)
            assert_logged(server, "ProcessExitRefused: " + call, body["request_id"])
            assert server.alive(), query
        for query in ("call=kill&sig=0", "call=kill&sig=CHLD", "call=raise&sig=WINCH"):
            r = server.get("/signal-self?" + query)
            assert r.status == 200 and "sent" in r.json(), (query, r)
        time.sleep(0.7)  # past the refused timers' time, had they been set
    assert server.alive()
    for _ in range(2 * server.workers):
        assert server.get("/ok").status == 200


def _ended(pid):
    """Whether process `pid` has ended (gone, or a zombie its parent has not reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_copy_of_the_server_a_handler_forks_keeps_nothing_of_it(start_server, strategy, tmp_path):
    # A handler forks, and the child returns from the handler too (no os._exit): the copy
    # exits where its answer would leave (only the parent's reaches the client; under
    # processes the worker's copy sends the server nothing). A copy that lives on holds no
    # listening socket (the port is free once the server exits) and takes SIGTERM itself
    # (with the server's handler it told the server, which began to shut down).
    server = start_server(workers=2, app="behaviours", args=["--pythonpath", str(APPS_DIR)])
    r = server.get("/fork-return")
    assert r.status == 200 and "from" not in r.json(), r
    if not r.json()["forked"]:
        assert strategy == "subinterpreters", r.json()  # the one kind that may not fork
        return
    child = r.json()["child"]
    wait_for(lambda: _ended(child), "the handler's forked copy of the server to end")
    for _ in range(2 * server.workers):
        r = server.get("/ok")
        assert r.status == 200 and r.json() == {"ok": True}, r
    assert "a process the app forked returned into the server's code" in server.log()
    if strategy == "processes":  # the copy is a worker's: no listener, no server signal handlers
        return
    children = []

    def fork_and_sleep():
        # The copy has run Python (past the fork's handlers) once its file is there.
        ready = tmp_path / ("ready-%d" % len(children))
        children.append(server.get("/fork-return?sleep=30&ready=%s" % ready).json()["child"])
        wait_for(ready.exists, "the forked copy to start")
        return children[-1]

    try:
        os.kill(fork_and_sleep(), signal.SIGTERM)
        wait_for(lambda: _ended(children[-1]), "SIGTERM to end the forked copy")
        time.sleep(0.3)  # for a signal the server would have been told of
        assert server.alive() and server.get("/ok").status == 200
        assert "received SIGTERM" not in server.log()
        fork_and_sleep()
        assert server.stop() == 0
        with socket.socket() as s:  # while the copy sleeps on
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", server.port))
            s.listen()
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_copy_the_app_forks_while_it_is_imported_ends_at_the_import(start_server, strategy, tmp_path):
    # The app forks at import and the child returns from the import too (no os._exit): the
    # copy (of the server, of a worker process or of the zygote) exits where the import
    # returns instead of going on as a second server or zygote: it ends, and the server
    # serves, stops and frees its port as if it had never forked.
    log = tmp_path / "forked-at-import"
    server = start_server(workers=2, app="forks_at_import", args=["--pythonpath", str(APPS_DIR)],
                          env={"GILGAMESH_TEST_FORK_LOG": str(log)})
    for _ in range(2 * server.workers):
        r = server.get("/ok")
        assert r.status == 200 and r.json()["ok"], r
    if strategy == "subinterpreters":
        copies = log.read_text().split() if log.exists() else []
        assert not copies, copies  # the workers' interpreters may not fork
        return
    # The copy runs on its own time (on a busy machine, after the server has served): its
    # message is what says it reached the end of the import.
    wait_for(lambda: "forked while it was imported returned from the import" in server.log(),
             "the copy forked at import to say it exits")
    copies = [int(pid) for pid in log.read_text().split()] if log.exists() else []
    assert copies, "the app's import never forked"
    for pid in copies:
        wait_for(lambda: _ended(pid), "the copy forked at import (pid %d) to end" % pid)
    for _ in range(2 * server.workers):
        assert server.get("/ok").status == 200
    assert server.stop() == 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen()


def test_204_on_keep_alive_has_no_body(behaviours):
    with behaviours.raw() as conn:
        conn.send(b"GET /none HTTP/1.1\r\nHost: h\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
        first = conn.read_response()
        second = conn.read_response()
    assert first.status == 204 and first.body == b""
    assert second.status == 200 and second.json() == {"ok": True}, second
