"""WSGI apps on every strategy: a wsgiref.validate-wrapped app with its warnings
turned into errors (tests/apps/wsgi_validated.py), an app that breaks the
protocol one way per path (wsgi_broken.py), Flask unchanged (flask_app.py),
and the start-up refusals."""

import hashlib
import json
import os
import shutil
import time
import uuid

import pytest

from gilgamesh_harness import (APPS_DIR, TIME_SCALE, GilgameshServer, find_trixie_site, free_port, run_cli,
                               scaled)

# The sanitized pass runs this module on these two (the in-process and the cross-process
# paths): test_asgi, test_websockets and test_wsgi take 8.3 minutes under ASan on all four
# strategies, about 4.5 on these two. conftest.py deselects the rest there.
SANITIZED_STRATEGIES = ("subinterpreters", "processes")

PATTERN_UNIT = bytes(range(256)) * 64


def pattern(size):
    return (PATTERN_UNIT * (size // len(PATTERN_UNIT) + 1))[:size]


def assert_json_error(response, status=500):
    assert response.status == status, response
    assert response.header("Content-Type", "").startswith("application/json"), response
    body = response.json()
    assert body.get("request_id") == response.header("X-Request-Id"), response
    return body


def wait_for(condition, timeout=10.0, what="condition"):
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)  # polling interval
    raise AssertionError("%s not met within %.0f s" % (what, timeout))


def serve(strategy, wsgi, markers=None, args=(), workers=2, pythonpath=(APPS_DIR,)):
    paths = [a for p in pythonpath for a in ("--pythonpath", str(p))]
    env = {"GILGAMESH_TEST_MARKERS": str(markers)} if markers else None
    return GilgameshServer(strategy, workers=workers, wsgi=wsgi, args=paths + list(args),
                           env=env).start()


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def validated(gilgamesh_bin, strategy, markers):
    server = serve(strategy, "wsgi_validated:application", markers)
    yield server
    code = server.stop()
    assert code == 0, "server exited with %r\n%s" % (code, server.log()[-4000:])
    log = server.log()
    assert "WSGIWarning" not in log and "AssertionError" not in log, log[-4000:]


# --- the validated app -------------------------------------------------------

def test_get(validated):
    r = validated.get("/hello")
    assert r.status == 200 and r.body == b"hello", r
    assert r.header("Content-Type") == "text/plain"
    assert r.header("Content-Length") == "5"


def test_environ_is_complete(validated, strategy):
    with validated.raw() as conn:
        conn.send(b"GET /environ/caf%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: example.test:81\r\n"
                  b"X-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\nX_Under: smuggled\r\n"
                  b"X-Latin: caf\xe9\r\n\r\n")
        r = conn.read_response()
    assert r.status == 200, r
    env = r.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/caf\u00c3\u00a9"  # the UTF-8 bytes, as latin-1
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["REQUEST_URI"] == env["RAW_URI"] == "/environ/caf%C3%A9?x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(validated.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"].isdigit()
    assert env["HTTP_HOST"] == "example.test:81"
    assert env["HTTP_X_A"] == "1, 2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_LATIN"] == "caf\u00e9"
    assert not any(k.startswith("HTTP_X_UNDER") for k in env), "a header with '_' must be dropped"
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    assert env["gilgamesh.request_id"] == r.header("X-Request-Id")
    assert env["wsgi.version"] == [1, 0] and env["wsgi.url_scheme"] == "http"
    shared = strategy in ("threads", "free-threaded")
    assert env["wsgi.multithread"] is shared, env
    assert env["wsgi.multiprocess"] is (not shared), env
    assert env["wsgi.run_once"] is False and env["wsgi.input_terminated"] is True
    assert env["file_wrapper"] is True
    if strategy == "processes":
        assert env["pid"] != validated.process.pid
    else:
        assert env["pid"] == validated.process.pid


def test_http_10_request(validated):
    with validated.raw() as conn:
        r = conn.request("GET", "/environ", version="HTTP/1.0")
    assert r.status == 200, r
    assert r.json()["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_post_with_body(validated):
    body = b"name=value&other=\x00\xff"
    r = validated.post("/echo", body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200, r
    assert r.body == body
    assert r.header("X-Sha256") == hashlib.sha256(body).hexdigest()
    assert r.header("X-After-Body") == "0", "wsgi.input read past the body"
    env = validated.post("/environ", body, headers={"Content-Type": "text/plain"}).json()
    assert env["CONTENT_LENGTH"] == str(len(body)) and env["CONTENT_TYPE"] == "text/plain"
    assert env["REQUEST_METHOD"] == "POST"


def test_chunked_request_body_has_a_content_length(validated):
    with validated.raw() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = conn.read_response()
    assert r.status == 200 and r.body == b"hello world", r


def test_large_bodies_both_ways(validated):
    body = os.urandom(900_000)
    r = validated.post("/echo", body)
    assert r.status == 200 and r.body == body, r.status
    size = 20_000_000
    r = validated.get("/big?size=%d&chunk=65536" % size, timeout=60)  # a generator: streams
    assert r.status == 200, r
    assert r.header("Content-Length") is None and r.header("Transfer-Encoding") == "chunked", r.header_pairs
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(pattern(size)).digest()
    r = validated.get("/list?size=%d" % size, timeout=60)  # a list: collected, with its length
    assert r.status == 200, r
    assert int(r.header("Content-Length")) == size
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(pattern(size)).digest()


def test_readline_readlines_and_iteration_stop_at_the_body(validated):
    r = validated.post("/lines", b"a\nbbbb\nccc\nd")
    assert r.status == 200, r
    assert r.json() == {"first": "a\n", "limited": "bb", "rest_of_line": "bb\n",
                        "remaining": ["ccc\n", "d"], "after": "", "iterated": None}
    r = validated.post("/iterate", b"one\ntwo\nthree")
    assert r.json() == {"lines": ["one\n", "two\n", "three"]}
    # The next request's bytes on the same connection are not the app's to read.
    with validated.raw() as conn:
        conn.send(b"POST /lines HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nx\ny\n"
                  b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
        first = conn.read_response()
        second = conn.read_response()
    assert first.json() == {"first": "x\n", "limited": "y\n", "rest_of_line": "", "remaining": [],
                            "after": "", "iterated": None}
    assert second.status == 200 and second.body == b"hello"


def test_iterable_close_is_called(validated, markers):
    token = uuid.uuid4().hex
    r = validated.get("/close?token=" + token)
    assert r.status == 200 and r.body == b"abc", r
    assert (markers / ("closed-" + token)).exists()


def _cut_short(server, path):
    """GET `path`, whose app raises after its first body bytes went out: the head (200,
    chunked) and those bytes arrive, then the connection closes without the last chunk.
    Returns (request id, body bytes received)."""
    with server.raw() as conn:
        conn.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
        data, closed = conn.read_until_closed(10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:300]
    assert b"transfer-encoding: chunked" in head.lower(), head
    assert closed, "the connection stays open after the app raised mid-body"
    assert not body.endswith(b"0\r\n\r\n"), "a failed body ended as if it were whole: %r" % body
    rid = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
           if line.lower().startswith(b"x-request-id:")][0]
    return rid, body


def test_close_is_called_when_the_iterable_fails(validated, markers):
    token = uuid.uuid4().hex
    rid, body = _cut_short(validated, "/fail-midway?token=" + token)
    assert b"first" in body and b"second" not in body, body
    wait_for(lambda: (markers / ("closed-" + token)).exists(), what="close() of the failed iterable")
    wait_for(lambda: "request %s" % rid in validated.log(), what="the traceback logged with the request id")
    assert "failed midway on purpose" in validated.log()
    assert validated.get("/hello").status == 200


def test_close_is_called_when_the_client_leaves(validated, markers):
    token = uuid.uuid4().hex
    with validated.raw() as conn:
        conn.send(b"GET /slow?ms=300&token=%s HTTP/1.1\r\nHost: h\r\n\r\n" % token.encode())
    wait_for(lambda: (markers / ("closed-" + token)).exists(), what="close() after the client left")


def test_write_callable(validated):
    r = validated.get("/write")
    assert r.status == 200 and r.body == b"written then iterated", r


def test_exc_info_before_the_body_replaces_the_status(validated):
    r = validated.get("/exc-before-body")
    assert r.status == 503 and r.body == b"error page", r


def test_exc_info_after_the_body_is_reraised(validated):
    # write() streamed "partial body" already: the status cannot change, the exception is
    # re-raised, the body is cut short and the traceback logged.
    rid, body = _cut_short(validated, "/exc-after-body")
    assert b"partial body" in body and b"never sent" not in body, body
    wait_for(lambda: "request %s" % rid in validated.log(), what="traceback logged")
    assert "went wrong after the body began" in validated.log()
    assert validated.get("/hello").status == 200  # the worker keeps serving


def test_wsgi_errors_go_to_the_server_log(validated):
    line = uuid.uuid4().hex
    r = validated.get("/errors?line=" + line)
    assert r.status == 200, r
    rid = r.header("X-Request-Id")
    wait_for(lambda: "request %s: wsgi.errors says: %s" % (rid, line) in validated.log(), what="log line")
    log = validated.log()
    assert "request %s: two parts" % rid in log
    assert "request %s: unterminated" % rid in log


def test_file_wrapper(validated):
    r = validated.get("/file?size=3000000", timeout=60)
    assert r.status == 200 and r.body == pattern(3_000_000), r.status


def test_head_keeps_the_get_length(validated):
    with validated.raw() as conn:
        r = conn.request("HEAD", "/hello")
    assert r.status == 200 and r.body == b"" and r.header("Content-Length") == "5", r


def test_stats_show_the_app_as_one_route(validated):
    validated.get("/hello")
    stats = validated.get("/stats").json()
    assert stats["app"] == "wsgi_validated:application"
    assert list(stats["routes"]) == ["*"], stats["routes"]
    assert stats["routes"]["*"]["count"] >= 1
    root = validated.get("/")  # "/" is the app's, not the route index
    assert root.status == 404 and root.body == b"no such test route", root
    assert validated.get("/healthz").status == 200
    metrics = validated.get("/metrics").text
    assert 'gilgamesh_route_requests_total{route="*"}' in metrics


def test_root_path_sets_script_name(gilgamesh_bin, strategy):
    server = serve(strategy, "wsgi_validated:application", args=["--root-path", "/app/"], workers=1)
    try:
        env = server.get("/app/environ/x?q=1").json()
        assert env["SCRIPT_NAME"] == "/app" and env["PATH_INFO"] == "/environ/x", env
        assert env["QUERY_STRING"] == "q=1"
        env = server.get("/environ").json()  # a proxy that strips the prefix
        assert env["SCRIPT_NAME"] == "/app" and env["PATH_INFO"] == "/environ", env
        env = server.get("/application/environ").json()  # not under the prefix: kept
        assert env["PATH_INFO"] == "/application/environ", env
    finally:
        assert server.stop() == 0


def test_max_response_is_500_with_a_log_line(gilgamesh_bin, strategy):
    # The app without wsgiref's validator around it: its lists stay lists (collected whole).
    server = serve(strategy, "wsgi_validated:app", args=["--max-response", "100000"], workers=1)
    try:
        assert server.get("/list?size=100000").status == 200
        r = server.get("/list?size=100001")  # collected whole: capped
        body = assert_json_error(r, 500)
        assert "100000" in body["error"]
        rid = r.header("X-Request-Id")
        wait_for(lambda: "request %s" % rid in server.log(), what="log line")
        assert "over --max-response 100000" in server.log()
        # A streamed body is never held whole: not capped (the client's pace bounds it).
        r = server.get("/big?size=200000&chunk=1000")
        assert r.status == 200 and len(r.body) == 200000, r
        assert server.get("/file?size=200000").status == 200
        assert server.get("/hello").status == 200
    finally:
        assert server.stop() == 0


# --- an app that breaks the protocol -----------------------------------------

@pytest.fixture(scope="module")
def broken(gilgamesh_bin, strategy, markers):
    server = serve(strategy, "wsgi_broken:app", markers)
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("path,logged", [
    ("/no-start-response", "before calling start_response"),
    ("/no-start-response-empty", "without calling start_response"),
    ("/twice", "a second time without exc_info"),
    ("/str-write", "write() takes bytes, not str"),
    ("/raise", "ValueError: the app failed"),
    ("/bad-status-text", "such as '200 OK'"),
    ("/status-not-str", "the status must be a str"),
    ("/status-1xx", "status 103 is outside 200..599"),
    ("/status-999", "status 999 is outside 200..599"),
    ("/header-crlf", "control character"),
    ("/header-nul", "control character"),
    ("/header-bad-name", "not an HTTP token"),
    ("/header-not-latin1", "outside latin-1"),
    ("/header-not-tuple", "must be a (name, value) tuple"),
    ("/headers-not-list", "must be a list"),
    ("/content-type-crlf", "control character"),
    ("/huge-headers", "exceed"),
    ("/not-iterable", "TypeError"),
])
def test_a_broken_app_gets_500_and_the_worker_keeps_serving(broken, path, logged):
    r = broken.get(path)
    assert_json_error(r, 500)
    assert not r.header("Set-Cookie") and not r.header("X-Injected") and not r.header("X-Evil"), r
    rid = r.header("X-Request-Id")
    wait_for(lambda: rid in broken.log(), what="a log line for %s" % path)
    tail = broken.log()[broken.log().index(rid):]
    assert logged in tail, tail[:3000]
    assert broken.get("/ok").body == b"ok"


@pytest.mark.parametrize("path,logged", [
    ("/str-chunk", "yielded str, not bytes"),
    ("/raise-in-iterable", "KeyError"),
    ("/close-raises", "close failed"),
])
def test_a_broken_app_after_its_first_bytes_cuts_the_body_short(broken, path, logged):
    # The head and the first bytes went out already (the body streams): the status cannot
    # change any more, so the connection closes with the body cut short, and the log says why.
    rid, _body = _cut_short(broken, path)
    wait_for(lambda: rid in broken.log(), what="a log line for %s" % path)
    tail = broken.log()[broken.log().index(rid):]
    assert logged in tail, tail[:3000]
    assert broken.get("/ok").body == b"ok"


def test_a_str_chunk_still_closes_the_iterable(broken, markers):
    (markers / "closed-str-chunk").unlink(missing_ok=True)
    _cut_short(broken, "/str-chunk")
    wait_for(lambda: (markers / "closed-str-chunk").exists(), what="close() of the iterable")


# --- Flask, unchanged ----------------------------------------------------------

@pytest.fixture(scope="module")
def flask_deps():
    """Debian trixie's Flask 3.1 and what it imports, as shipped (MarkupSafe's speedups too)."""
    return find_trixie_site(["python3-flask"])


@pytest.fixture(scope="module")
def flask_server(gilgamesh_bin, strategy, flask_deps):
    server = serve(strategy, "flask_app:app", pythonpath=(APPS_DIR, flask_deps))
    yield server
    assert server.stop() == 0


def test_flask_routes(flask_server):
    r = flask_server.get("/")
    assert r.status == 200 and r.body == b"hello from flask", r
    assert r.header("Content-Type") == "text/html; charset=utf-8"
    r = flask_server.get("/fib/20")
    assert r.status == 200 and r.json() == {"n": 20, "value": 6765}, r
    assert flask_server.get("/fib/x").status == 404  # Flask's own converter says no
    assert flask_server.get("/fib/31").status == 400
    assert flask_server.get("/nowhere").status == 404


def test_a_streaming_flask_route_sends_its_first_chunk_at_once(flask_server):
    delay = 0.5 * TIME_SCALE  # between 3 lines: the handler runs 1 s in all (stretched when sanitized)
    with flask_server.raw() as conn:
        started = time.monotonic()
        conn.send(b"GET /stream?chunks=3&delay_ms=%d HTTP/1.1\r\nHost: h\r\n\r\n" % (delay * 1000))
        first = b""
        while b"line 0" not in first:
            got = conn.sock.recv(65536)
            assert got, "closed before the first line: %r" % first
            first += got
        first_at = time.monotonic() - started
        conn.buffer = first
        r = conn.read_response()
    took = time.monotonic() - started
    assert r.status == 200, r
    assert r.header("Transfer-Encoding") == "chunked" and r.header("Content-Length") is None, r.header_pairs
    assert r.body == b"line 0 of /stream\nline 1 of /stream\nline 2 of /stream\n", r.body
    assert took >= 2 * delay * 0.9, took
    assert first_at < delay, (
        "the first line came %.2f s after the request, the handler ended at %.2f s: collected, "
        "not streamed" % (first_at, took))


def test_flask_json_query_and_upload(flask_server):
    r = flask_server.request("POST", "/echo?a=1&b=two", body={"k": [1, 2]})
    assert r.status == 200, r
    assert r.json() == {"json": {"k": [1, 2]}, "args": {"a": "1", "b": "two"},
                        "content_type": "application/json", "length": 13}
    boundary = "XyZ"
    body = ("--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\x00" * 100000 + \
        b"\r\n--XyZ--\r\n"
    r = flask_server.post("/upload", body,
                          headers={"Content-Type": "multipart/form-data; boundary=" + boundary})
    assert r.status == 200, r
    assert r.json() == {"filename": "a.bin", "size": 100000, "form": {"field": "value"}}


def test_forwarded_headers_reach_the_environ(validated):
    r = validated.get("/environ/x", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "2001:db8::7"})
    env = r.json()
    assert env["wsgi.url_scheme"] == "https", env  # wsgiref.validate accepts it
    assert env["REMOTE_ADDR"] == "2001:db8::7" and env["REMOTE_PORT"] == "0", env
    assert env["HTTP_X_FORWARDED_FOR"] == "2001:db8::7", env  # the headers stay for the app


def test_flask_cookies_url_and_head(flask_server):
    r = flask_server.get("/cookie", headers={"Cookie": "flavour=ginger"})
    assert r.json() == {"seen": "ginger"} and "flavour=oatmeal" in r.header("Set-Cookie"), r
    url = flask_server.get("/url?x=1").json()
    assert url == {"url": "http://127.0.0.1:%d/url?x=1" % flask_server.port, "script_root": "",
                   "path": "/url", "remote_addr": "127.0.0.1"}, url
    with flask_server.raw() as conn:
        r = conn.request("HEAD", "/")
    assert r.status == 200 and r.body == b"" and r.header("Content-Length") == "16", r


def test_flask_send_file_whole_and_a_range(flask_server):
    source = (APPS_DIR / "flask_app.py").read_bytes()
    r = flask_server.get("/download")
    assert r.status == 200 and r.body == source, r
    assert r.header("Content-Type", "").startswith("text/x-python"), r
    assert r.header("Content-Length") == str(len(source)), r
    r = flask_server.get("/download", headers={"Range": "bytes=10-99"})
    assert r.status == 206 and r.body == source[10:100], r
    assert r.header("Content-Range") == "bytes 10-99/%d" % len(source), r


def test_flask_behind_a_trusted_proxy_sees_the_client_and_https(flask_server):
    """Behind nginx on the same host (docker/nginx/gilgamesh.conf sets both headers): the peer
    is loopback, which --forwarded-allow-ips trusts by default. Flask builds https URLs and
    sees the client's address: the first address from the right that is not a trusted proxy."""
    r = flask_server.get("/url?x=1", headers={"Host": "shop.example", "X-Forwarded-Proto": "https",
                                               "X-Forwarded-For": "198.51.100.1, 203.0.113.7, 127.0.0.1"})
    assert r.json() == {"url": "https://shop.example/url?x=1", "script_root": "", "path": "/url",
                        "remote_addr": "203.0.113.7"}, r


def test_flask_error_handling_goes_to_the_log(flask_server):
    r = flask_server.get("/boom")
    assert r.status == 500, r  # Flask's own error page
    wait_for(lambda: "flask handler failed" in flask_server.log(), what="Flask's log line")
    assert flask_server.get("/").status == 200


# --- start-up ------------------------------------------------------------------

def base_args(strategy="threads"):
    return ["--strategy", strategy, "--workers", "2", "--host", "127.0.0.1", "--port", str(free_port()),
            "--pythonpath", str(APPS_DIR)]


def test_app_that_cannot_load_in_subinterpreters_is_refused(gilgamesh_bin):
    result = run_cli(["--wsgi", "wsgi_single_phase:app"] + base_args("subinterpreters"), timeout=60)
    assert result.returncode not in (0, None) and result.returncode > 0, result
    assert "wsgi_single_phase" in result.stderr, result.stderr
    assert "--strategy processes" in result.stderr, result.stderr


def test_that_app_is_served_under_threads(gilgamesh_bin):
    server = serve("threads", "wsgi_single_phase:app")
    try:
        r = server.get("/")
        assert r.status == 200 and r.body, r
    finally:
        assert server.stop() == 0


def test_pth_files_in_a_pythonpath_dir_are_read(gilgamesh_bin, tmp_path):
    """An editable install in a venv is a .pth file in site-packages naming the source tree."""
    site, src = tmp_path / "site-packages", tmp_path / "src"
    site.mkdir()
    src.mkdir()
    (src / "editable_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from a .pth path']\n")
    (site / "__editable__.editable_app.pth").write_text(str(src) + "\n")
    server = serve("threads", "editable_app:app", pythonpath=(site,), workers=1)
    try:
        assert server.get("/").body == b"from a .pth path"
    finally:
        assert server.stop() == 0


def test_extension_built_for_another_python_is_named(gilgamesh_bin, tmp_path):
    ext = tmp_path / "foreignext.cpython-311-x86_64-linux-gnu.so"
    ext.write_bytes(b"\x7fELF not really, and never loaded")
    (tmp_path / "uses_foreign.py").write_text("import foreignext\n\ndef app(e, s):\n    return []\n")
    pkg = tmp_path / "fastpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from ._speedups import run\n")
    shutil.copy(ext, pkg / "_speedups.cpython-311-x86_64-linux-gnu.so")
    (tmp_path / "uses_pkg.py").write_text("import fastpkg\n\ndef app(e, s):\n    return []\n")
    for module, named in (("uses_foreign", "foreignext.cpython-311"),
                          ("uses_pkg", "_speedups.cpython-311")):
        result = run_cli(["--wsgi", module + ":app"] + base_args() + ["--pythonpath", str(tmp_path)])
        assert result.returncode == 1, result
        assert named in result.stderr and "built for CPython 3.11" in result.stderr, result.stderr
        assert "embeds Python 3.13" in result.stderr, result.stderr


@pytest.mark.parametrize("spec,mentions", [
    ("wsgi_broken:nope", "has no attribute 'nope'"),
    ("wsgi_broken:MARKERS", "not a WSGI callable"),
    ("wsgi_broken:app.x-y", "not an attribute name"),
    ("no_such_wsgi_module:app", "no_such_wsgi_module"),
])
def test_a_missing_or_wrong_callable_is_named(gilgamesh_bin, spec, mentions):
    result = run_cli(["--wsgi", spec] + base_args())
    assert result.returncode == 1, result
    assert spec in result.stderr and mentions in result.stderr, result.stderr


def test_a_factory_is_called(gilgamesh_bin, strategy):
    server = serve(strategy, "wsgi_broken:create_app()", workers=1)
    try:
        assert server.get("/ok").body == b"ok"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("args,mentions", [
    (["--app", "handlers.demo", "--wsgi", "flask_app:app"], "exclusive"),
    (["--app", "flask_app:app"], "use --wsgi flask_app:app"),
    (["--wsgi", ":app"], "MODULE:CALLABLE"),
    (["--wsgi", "flask_app:"], "MODULE:CALLABLE"),
    (["--wsgi", "x:y", "--root-path", "api"], "--root-path"),
    (["--max-response", "0"], "max-response"),
])
def test_bad_wsgi_flags_exit_2_with_one_line(gilgamesh_bin, args, mentions):
    result = run_cli(args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and mentions in lines[0], result.stderr


def test_help_lists_the_wsgi_flags(gilgamesh_bin):
    out = run_cli(["--help"]).stdout
    for flag in ("--wsgi", "--root-path", "--max-response"):
        assert flag in out, out


def test_the_readme_flask_example(gilgamesh_bin, flask_deps):
    """docs/wsgi.md, "Your dependencies": handlers/flask_example.py on sub-interpreters."""
    server = GilgameshServer("subinterpreters", workers=2, wsgi="handlers.flask_example:app",
                             args=["--pythonpath", str(flask_deps)]).start()
    try:
        r = server.get("/fib/25")
        assert r.status == 200 and r.json() == {"n": 25, "value": 75025}, r
        assert server.get("/fib/33").status == 400
    finally:
        assert server.stop() == 0
