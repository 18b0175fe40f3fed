"""Hostile handlers (tests/apps/hostile.py), on every strategy: a response that
breaks a rule (status, header names and values, content type, header size)
becomes a 500 with the JSON error and a log line naming the rule and the
route, and none of its bytes reach the wire; strings that are not valid UTF-8
never break /, /stats, /metrics or an error body; the worker keeps serving."""

import json
import re
import time

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, build_request, free_port, run_cli

# The routes of tests/apps/hostile.py, with the words the log line must hold.
BAD = {
    "status-99": "status",
    "status-100": "status",
    "status-600": "status",
    "status-1000": "status",
    "status-negative": "status",
    "name-nul": "not an HTTP token",
    "name-space": "not an HTTP token",
    "name-colon": "not an HTTP token",
    "name-crlf": "not an HTTP token",
    "name-empty": "not an HTTP token",
    "name-non-ascii": "not an HTTP token",
    "value-crlf": "control character",
    "value-lf": "control character",
    "value-cr": "control character",
    "value-nul": "control character",
    "value-control": "control character",
    "value-del": "control character",
    "content-type-crlf": "control character",
    "content-type-nul": "control character",
    "header-70k": "exceed",
    "headers-over-64k": "exceed",
}

# Nothing of a refused response may be on the wire.
FORBIDDEN = [b"evil", b"Set-Cookie", b"set-cookie", b"X-Bad", b"X-Big", b"X-H1:", b"X-A:", b"\x00", b"\x1b",
             b"\x7f", b"text/html"]


@pytest.fixture(scope="module")
def hostile(gilgamesh_bin, strategy):
    server = GilgameshServer(strategy, workers=2, app="hostile", args=["--pythonpath", str(APPS_DIR)]).start()
    yield server
    code = server.stop()
    assert code == 0, "server exited with %r\n%s" % (code, server.log()[-4000:])


def wait_for_log(server, *words, timeout=5.0):
    """The first log line holding every one of `words` (polled: another thread writes the log)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log().splitlines():
            if all(w in line for w in words):
                return line
        if time.monotonic() > deadline:
            raise AssertionError("no log line with %r in:\n%s" % (words, server.log()[-4000:]))
        time.sleep(0.05)  # polling interval


def test_every_bad_route_is_tested(hostile):
    served = {r["path"] for r in hostile.get("/").json()["routes"]}
    assert {p[len("/bad/"):] for p in served if p.startswith("/bad/")} == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_response_is_500_and_never_reaches_the_wire(hostile, name):
    rid = "bad-%s-%d" % (name, time.monotonic_ns())
    # Kept alive: the 500, then the same connection (and worker pool) serves on.
    with hostile.raw() as conn:
        conn.send(build_request("GET", "/bad/" + name, headers={"X-Request-Id": rid}))
        r = conn.read_response()
        assert r.status == 500, r
        assert r.header("Content-Type") == "application/json", r
        assert r.json() == {"error": "internal server error", "request_id": rid}, r
        assert conn.request("GET", "/hello").body == b"hello"
    line = wait_for_log(hostile, rid, "/bad/" + name, "breaks a rule")
    assert BAD[name] in line, line
    # The exact bytes of one such exchange, to the end of the connection.
    with hostile.raw() as conn:
        conn.send(build_request("GET", "/bad/" + name, headers={"Connection": "close"}))
        wire, closed = conn.read_until_closed(10.0)
    assert closed and wire.startswith(b"HTTP/1.1 500 "), wire[:300]
    assert wire.count(b"HTTP/1.1 ") == 1, wire
    for forbidden in FORBIDDEN:
        assert forbidden not in wire, (forbidden, wire)


def test_every_worker_still_serves_after_the_bad_responses(hostile):
    for name in BAD:
        assert hostile.get("/bad/" + name).status == 500
    for _ in range(4 * hostile.workers):
        assert hostile.get("/hello").body == b"hello"
    assert hostile.alive()
    assert hostile.get("/stats").json()["responses"]["5xx"] >= len(BAD)


def test_what_the_rules_allow_goes_out(hostile):
    r = hostile.get("/fine-headers")
    assert r.status == 299 and r.body == b"ok", r
    assert r.header("X-Tab") == "a\tb", r
    assert r.header("X-Token!#$%&'*+-.^_`|~") == "1", r
    assert r.header("X-Latin").encode("latin-1").decode("utf-8") == "caf\u00e9", r


# --- strings that are not valid UTF-8 ------------------------------------------------

def utf8_json(response):
    assert response.status in (200, 400, 404, 500), response
    return json.loads(response.body.decode("utf-8"))  # strict: invalid UTF-8 fails here


def test_lone_surrogates_never_break_the_builtins(hostile):
    index = utf8_json(hostile.get("/"))
    docs = {r["path"]: r["doc"] for r in index["routes"]}
    assert docs["/surrogate-doc"] == "Unpaired ? in a docstring.", docs
    assert docs["/surrogate-doc-escaped"] == "Escaped byte \ufffd in a docstring.", docs
    assert utf8_json(hostile.get("/stats"))["routes"], "no routes in /stats"
    metrics = hostile.get("/metrics")
    assert metrics.status == 200
    metrics.body.decode("utf-8")
    assert hostile.get("/healthz").status == 200


def test_lone_surrogates_in_an_error_message_are_replaced(hostile):
    r = hostile.get("/surrogate-error")
    assert r.status == 400
    assert utf8_json(r)["error"] == "bad \ufffd value", r


def test_lone_surrogates_in_an_exception_go_to_the_log_only(hostile):
    r = hostile.get("/surrogate-exception")
    assert r.status == 500
    assert utf8_json(r) == {"error": "internal server error", "request_id": r.header("X-Request-Id")}
    wait_for_log(hostile, r.header("X-Request-Id"), "ValueError")


def test_a_request_path_that_is_not_utf8_gets_a_utf8_404(hostile):
    r = hostile.get("/caf%E9/%FF%FE")
    assert r.status == 404
    assert utf8_json(r)["error"] == "no route for /caf\ufffd/\ufffd\ufffd", r


def parse_prometheus(text):
    """{(name, frozenset(labels)): value} from the text format, unescaping label values."""
    out = {}
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = {}
        rest = m.group(2) or ""
        while rest:
            lm = label.match(rest)
            assert lm, "bad labels in %r" % line
            labels[lm.group(1)] = re.sub(r'\\(.)', lambda e: "\n" if e.group(1) == "n" else e.group(1),
                                         lm.group(2))
            rest = rest[lm.end():].lstrip(",")
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def test_metrics_escape_route_labels(hostile):
    path = '/we"ird\\path'
    r = hostile.get('/we%22ird%5Cpath')
    assert r.status == 200 and r.body == b"weird", r
    samples = parse_prometheus(hostile.get("/metrics").text)
    key = ("gilgamesh_route_requests_total", frozenset({("route", path), ("methods", "GET")}))
    assert samples.get(key, 0) >= 1, sorted(k for k in samples if k[0] == "gilgamesh_route_requests_total")


def test_a_route_path_with_a_lone_surrogate_is_refused_at_start(gilgamesh_bin, strategy, tmp_path):
    (tmp_path / "surrogate_route.py").write_text(
        "import gilgamesh\n\n@gilgamesh.route('/caf\\udce9')\ndef cafe(request):\n    return 'x'\n")
    result = run_cli(["--app", "surrogate_route", "--pythonpath", str(tmp_path), "--strategy", strategy,
                      "--workers", "1", "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.returncode == 1, result
    assert "lone surrogate" in result.stderr and "surrogate_route" in result.stderr, result.stderr
