"""Answers that are files: a WSGI app's wsgi.file_wrapper over a real file (Django's
FileResponse, Flask's send_file) and a route handler's open binary file. The server reads
the file itself, on the connection's I/O thread, from the file's position on, and the worker
is free as soon as the app returned (pyworkers/apps/wsgi_app.cpp `_sendfile`,
route_app.cpp `send_file`, server/model/file_body.hpp). Under `processes` the worker process
passes the file's descriptor to the server with the answer's head (a `file` frame,
SCM_RIGHTS). What is not a real file is iterated by the worker, as any body.

The apps are tests/apps/wsgi_files.py and route_files.py; Django's own FileResponse is at
the end."""

import os
import subprocess
import time

import pytest

from gilgamesh_harness import APPS_DIR, REPO, GilgameshServer, scaled, strategies

# The sanitized pass: the in-process path and the descriptor passed from a worker process.
SANITIZED_STRATEGIES = ("subinterpreters", "processes")

BIG = 3 * 1024 * 1024 + 5          # streamed in pieces (over 256 KiB)
SLOW = 48 * 1024 * 1024            # more than loopback's socket buffers take from a client that does not read


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)  # polling interval
    raise AssertionError("%s not within %.0f s" % (what, scaled(timeout)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "small.bin").write_bytes(b"small file\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "site.css").write_bytes(b"body { margin: 0 }\n")
    with open(root / "slow.bin", "wb") as f:
        f.truncate(SLOW)  # sparse: no disk, read as zeros
    return root


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    return tmp_path_factory.mktemp("markers")


def serve(strategy, files, markers, workers=2):
    return GilgameshServer(strategy, workers=workers, wsgi="wsgi_files:app",
                           args=["--pythonpath", str(APPS_DIR)],
                           env={"GILGAMESH_TEST_FILES": str(files),
                                "GILGAMESH_TEST_MARKERS": str(markers)}).start()


@pytest.fixture(scope="module")
def server(gilgamesh_bin, strategy, files, markers):
    s = serve(strategy, files, markers)
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def test_a_real_file_goes_out_whole_and_the_app_closes_it(server, files, markers):
    data = (files / "big.bin").read_bytes()
    r = server.get("/file?name=big.bin&token=whole", timeout=60)
    assert r.status == 200 and r.body == data, (r.status, len(r.body))
    # Read by the server: its length is known, nothing is chunked.
    assert r.header("Content-Length") == str(BIG) and r.header("Transfer-Encoding") is None, r
    wait_for(lambda: (markers / "closed-whole").exists(), 10, "the app's file closed")
    for name in ("small.bin", "empty.bin"):
        r = server.get("/file?name=" + name)
        assert r.status == 200 and r.body == (files / name).read_bytes(), r


def test_the_file_is_sent_from_where_the_app_left_it(server, files):
    data = (files / "big.bin").read_bytes()
    for skip in (1, 70_000, BIG):  # 70,000: past the reader's own buffer, so tell() matters
        r = server.get("/file?name=big.bin&skip=%d" % skip, timeout=60)
        assert r.status == 200 and r.body == data[skip:], (skip, r.status, len(r.body))


def test_the_apps_content_length_is_kept_or_its_rule_applies(server, files):
    data = (files / "big.bin").read_bytes()
    r = server.get("/file?name=big.bin&skip=100&length=rest", timeout=60)
    assert r.status == 200 and r.header("Content-Length") == str(BIG - 100) and r.body == data[100:], r.status
    # A Content-Length that is not what the file holds: the iterated body's rule, on every strategy.
    r = server.get("/file?name=small.bin&length=4")
    assert r.status == 500 and b"internal server error" in r.body.lower(), r
    assert "its Content-Length says 4 bytes, its body has 11" in server.log()


def test_head_sends_the_length_and_no_body(server):
    with server.raw() as conn:
        r = conn.request("HEAD", "/file?name=big.bin", headers={"Host": "t"})
        assert r.status == 200 and r.body == b"" and r.header("Content-Length") == str(BIG), r
        assert conn.request("GET", "/hello", headers={"Host": "t"}).body == b"hello"  # the connection goes on


def test_what_is_not_a_regular_file_is_iterated(server):
    r = server.get("/pipe?size=300000", timeout=60)
    assert r.status == 200 and r.body == bytes(range(256)) * (300000 // 256), (r.status, len(r.body))
    # A text file's reads give str: the app broke WSGI, as the iteration says, everywhere.
    r = server.get("/text?name=small.bin")
    assert r.status == 500, r
    assert "yielded str, not bytes" in server.log()


def test_slow_downloads_leave_the_worker_free(gilgamesh_bin, strategy, files, markers):
    """Three clients that take nothing of a 48 MiB file, on one worker: another request is
    answered at once. Iterated in the worker (before session 34), the first download held the
    worker until the client read it all."""
    s = serve(strategy, files, markers, workers=1)
    try:
        fds_before = s.get("/stats").json()["open_fds"]
        slow = [s.raw() for _ in range(3)]
        for conn in slow:
            conn.send(b"GET /file?name=slow.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        for conn in slow:
            head = conn.sock.recv(200)
            assert head.startswith(b"HTTP/1.1 200"), head
        r = s.get("/hello", timeout=5)
        assert r.status == 200 and r.body == b"hello", r
        stats = s.get("/stats").json()
        assert stats["busy_workers"] == 0, stats
        for conn in slow:
            conn.close()
        # Each download's file descriptor and connection are gone once its client is.
        wait_for(lambda: s.get("/stats").json()["open_fds"] <= fds_before, 10, "the descriptors closed")
        assert s.get("/hello").body == b"hello"
        assert "error" not in s.log().lower(), s.log()[-2000:]
    finally:
        assert s.stop() == 0, s.log()[-3000:]


def test_a_file_that_shrinks_while_sent_cuts_the_body_and_says_why(gilgamesh_bin, strategy, files, markers,
                                                                   tmp_path):
    size = 16 * 1024 * 1024
    path = files / "shrinks.bin"
    path.write_bytes(b"x" * size)
    s = serve(strategy, files, markers, workers=1)
    try:
        with s.raw() as conn:
            conn.send(b"GET /file?name=shrinks.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            conn.sock.recv(100)
            os.truncate(path, 1024 * 1024)
            received, closed = conn.read_until_closed(20)
        assert closed and len(received) < size, len(received)
        assert "the file the app answered with ended or could not be read at byte" in s.log(), s.log()[-2000:]
        assert s.get("/hello").body == b"hello"
    finally:
        assert s.stop() == 0, s.log()[-3000:]


def test_djangos_file_response(gilgamesh_bin):
    """Django's FileResponse, served unchanged: Django hands its file to wsgi.file_wrapper."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "fetch-trixie-site.sh"), "--print-path",
                             "python3-django"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip("Debian trixie's python3-django is not fetched: run `make trixie-site`")
    site = result.stdout.strip()
    s = GilgameshServer(strategies()[0], workers=1, wsgi="django_site.wsgi:application",
                        args=["--pythonpath", str(APPS_DIR), "--pythonpath", site]).start()
    try:
        source = (APPS_DIR / "django_site" / "views.py").read_bytes()
        r = s.get("/download/")
        assert r.status == 200 and r.body == source, r
        assert r.header("Content-Length") == str(len(source)), r
        assert r.header("Content-Type", "").startswith("text/x-python"), r
    finally:
        assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def routes(gilgamesh_bin, strategy, files, markers):
    s = GilgameshServer(strategy, workers=2, app="route_files", args=["--pythonpath", str(APPS_DIR)],
                        env={"GILGAMESH_TEST_FILES": str(files), "GILGAMESH_TEST_MARKERS": str(markers)}).start()
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def test_a_route_handlers_file_goes_out_with_its_length_and_type(routes, files, markers):
    data = (files / "big.bin").read_bytes()
    r = routes.get("/file?name=big.bin&token=route&skip=70000", timeout=60)
    assert r.status == 200 and r.body == data[70000:], (r.status, len(r.body))
    assert r.header("Content-Length") == str(BIG - 70000) and r.header("Transfer-Encoding") is None, r
    assert r.header("Content-Type") == "application/octet-stream", r
    wait_for(lambda: (markers / "closed-route").exists(), 10, "the handler's file closed")
    r = routes.get("/file?name=site.css")
    assert r.status == 200 and r.body == b"body { margin: 0 }\n", r
    assert r.header("Content-Type") == "text/css; charset=utf-8", r  # by the file's name
    with routes.raw() as conn:
        r = conn.request("HEAD", "/file?name=big.bin", headers={"Host": "t"})
        assert r.status == 200 and r.body == b"" and r.header("Content-Length") == str(BIG), r
        assert conn.request("GET", "/file?name=small.bin", headers={"Host": "t"}).body == b"small file\n"


def test_a_responses_file_body_keeps_its_status_type_and_headers(routes, files):
    r = routes.get("/typed?name=small.bin")
    assert r.status == 203 and r.body == b"small file\n", r
    assert r.header("Content-Type") == "application/pdf" and r.header("X-Report") == "yes", r
    assert r.header("Content-Length") == "11", r


def test_an_async_handlers_file_is_collected(routes, files):
    r = routes.get("/async?name=big.bin", timeout=60)
    assert r.status == 200 and r.body == (files / "big.bin").read_bytes(), (r.status, len(r.body))
