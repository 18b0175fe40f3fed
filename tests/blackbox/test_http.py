"""HTTP/1.1 behaviour: standard headers, request ids, HTTP/1.0, keep-alive, pipelining."""

import email.utils
import json

import pytest

from gilgamesh_harness import APPS_DIR


@pytest.mark.parametrize("path", ["/hello", "/fib?n=5", "/no/such/path", "/healthz"])
def test_standard_headers(demo_server, path):
    r = demo_server.get(path)
    assert r.header("Server"), r
    date = r.header("Date")
    assert date and email.utils.parsedate_to_datetime(date) is not None, r
    assert r.header_count("Content-Length") == 1, r
    assert int(r.header("Content-Length")) == len(r.body), r


def test_request_id_is_echoed(demo_server):
    r = demo_server.get("/hello", headers={"X-Request-Id": "client-id-42"})
    assert r.status == 200
    assert r.header("X-Request-Id") == "client-id-42"


def test_request_id_is_echoed_in_error_body(demo_server):
    r = demo_server.get("/fib?n=nope", headers={"X-Request-Id": "trace-7f3a"})
    assert r.status == 400
    assert r.header("X-Request-Id") == "trace-7f3a"
    assert r.json()["request_id"] == "trace-7f3a"


def test_request_id_is_generated(demo_server):
    first = demo_server.get("/hello").header("X-Request-Id")
    second = demo_server.get("/hello").header("X-Request-Id")
    assert first and second and first != second


def test_generated_request_id_matches_error_body(demo_server):
    r = demo_server.get("/no/such/path")
    assert r.status == 404
    assert r.header("X-Request-Id") and r.json()["request_id"] == r.header("X-Request-Id")


def test_handler_sees_the_request_id(demo_server):
    # Handlers get request.request_id; an error raised in Python carries the same id.
    r = demo_server.get("/sleep?ms=x", headers={"X-Request-Id": "from-python"})
    assert r.json()["request_id"] == "from-python"


def test_http10_answered_then_closed(demo_server):
    with demo_server.raw() as conn:
        r = conn.request("GET", "/hello", version="HTTP/1.0")
        assert r.status == 200 and r.body == b"hello", r
        rest, closed = conn.read_until_closed(5.0)
        assert closed and rest == b"", "HTTP/1.0 connection left open after the response"


def test_http10_keep_alive_when_asked(demo_server):
    with demo_server.raw() as conn:
        for n in (3, 4):
            r = conn.request("GET", "/fib?n=%d" % n, headers={"Connection": "keep-alive"},
                             version="HTTP/1.0")
            assert r.status == 200, r
            assert r.json()["n"] == n
            assert (r.header("Connection") or "").lower() == "keep-alive", r


def test_keep_alive_serves_several_requests(demo_server):
    with demo_server.raw() as conn:
        for n in range(6):
            r = conn.request("GET", "/fib?n=%d" % n)
            assert r.status == 200 and r.json()["n"] == n, r
        r = conn.request("POST", "/json", body=b'{"k": [1]}')
        assert r.status == 200 and r.json()["received"] == {"k": [1]}
        r = conn.request("GET", "/nope")  # an error does not end the connection
        assert r.status == 404
        assert conn.request("GET", "/hello").body == b"hello"


def test_connection_close_is_honoured(demo_server):
    with demo_server.raw() as conn:
        r = conn.request("GET", "/hello", headers={"Connection": "close"})
        assert r.status == 200
        _, closed = conn.read_until_closed(5.0)
        assert closed


def test_pipelining_keeps_order(demo_server):
    paths = ["/fib?n=20", "/hello", "/fib?n=2", "/nope", "/sleep?ms=10"]
    wire = b"".join(
        b"GET " + p.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: pipe-%d\r\n\r\n" % i
        for i, p in enumerate(paths))
    with demo_server.raw() as conn:
        conn.send(wire)
        responses = [conn.read_response() for _ in paths]
    assert [r.header("X-Request-Id") for r in responses] == ["pipe-%d" % i for i in range(5)]
    assert [r.status for r in responses] == [200, 200, 200, 404, 200]
    assert responses[0].json() == {"n": 20, "value": 6765}
    assert responses[1].body == b"hello"
    assert responses[2].json() == {"n": 2, "value": 1}
    assert responses[3].json()["request_id"] == "pipe-3"
    assert responses[4].json() == {"slept_ms": 10}


def test_pipelined_post_bodies(demo_server):
    bodies = [json.dumps({"i": i, "pad": "x" * (i * 100)}).encode() for i in range(4)]
    wire = b"".join(b"POST /json HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(b), b) for b in bodies)
    with demo_server.raw() as conn:
        conn.send(wire)
        got = [conn.read_response().json()["received"]["i"] for _ in bodies]
    assert got == [0, 1, 2, 3]


def test_chunked_request_body(demo_server):
    payload = b'{"chunked": true, "n": [1, 2, 3]}'
    wire = (b"POST /json HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (10, payload[:10])
            + b"%x\r\n%s\r\n" % (len(payload) - 10, payload[10:])
            + b"0\r\n\r\n")
    with demo_server.raw() as conn:
        conn.send(wire)
        r = conn.read_response()
    assert r.status == 200, r
    assert r.json()["received"] == {"chunked": True, "n": [1, 2, 3]}


def test_query_string_is_percent_decoded(demo_server):
    r = demo_server.get("/fib?n=%31%32")  # "12"
    assert r.status == 200 and r.json() == {"n": 12, "value": 144}, r


def test_last_repeated_query_parameter_wins(demo_server):
    assert demo_server.get("/fib?n=3&n=7").json() == {"n": 7, "value": 13}


@pytest.mark.parametrize("path", ["/hello", "/fib?n=10", "/healthz", "/"])
def test_head_wherever_get_is_routed(demo_server, path):
    # docs/operating.md: HEAD wherever GET is routed. The answer is the GET answer's head: same
    # status and Content-Length, no body.
    get = demo_server.get(path)
    assert get.status == 200, get
    with demo_server.raw() as conn:
        conn.send(b"HEAD " + path.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n"
                  b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
        head = conn.read_response(head_request=True)
        # If HEAD leaked a body, it would be read here as the next status line.
        follow = conn.read_response()
    assert head.status == 200, head
    assert head.header("Content-Type") == get.header("Content-Type"), (head, get)
    assert head.header("Content-Length") == str(len(get.body)), (head, get)
    assert follow.status == 200 and follow.body == b"hello", follow


def test_head_on_a_post_only_route_is_405(demo_server):
    with demo_server.raw() as conn:
        conn.send(b"HEAD /json HTTP/1.1\r\nHost: h\r\n\r\n")
        r = conn.read_response(head_request=True)
    assert r.status == 405, r
    assert r.header("Allow") == "POST", r


def test_expect_100_continue(demo_server):
    body = b'{"continued": [1, 2]}'
    with demo_server.raw(timeout=10) as conn:
        conn.send(b"POST /json HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        # The body is not sent before the server asks for it: no 100, no answer at all.
        interim = conn.read_response()
        assert interim.status == 100, interim
        conn.send(body)
        r = conn.read_response()
        assert r.status == 200, r
        assert r.json()["received"] == {"continued": [1, 2]}, r
        # The connection stays usable.
        assert conn.request("GET", "/hello").body == b"hello"


SANE_IDS = ["a", "trace-7f3a", "0123456789abcdef0123456789abcdef", "x" * 200,
            "~!#$%&'*+-.^_`|:;/=?@[]{}()<>,\""]
INSANE_IDS = ["x" * 201, "two words", "tab\there", "caf\xe9"]


@pytest.mark.parametrize("rid", SANE_IDS)
def test_sane_request_id_is_reused(demo_server, rid):
    # Printable ASCII without spaces, 1..200 characters: echoed as sent, in the header and
    # the error body.
    r = demo_server.get("/no/such/path", headers={"X-Request-Id": rid})
    assert r.status == 404, r
    assert r.header("X-Request-Id") == rid, r
    assert r.json()["request_id"] == rid, r


def assert_fresh_id(r, sent):
    rid = r.header("X-Request-Id")
    assert rid and rid != sent.strip(), r
    assert len(rid) <= 200 and all(0x21 <= ord(c) <= 0x7e for c in rid), rid
    assert r.json()["request_id"] == rid, r
    return rid


@pytest.mark.parametrize("rid", INSANE_IDS)
def test_other_request_ids_are_replaced(demo_server, rid):
    with demo_server.raw() as conn:
        wire = ("GET /no/such/path HTTP/1.1\r\nHost: h\r\nX-Request-Id: %s\r\n\r\n" % rid)
        conn.send(wire.encode("latin-1"))
        r = conn.read_response()
        assert r.status == 404, r
        first = assert_fresh_id(r, rid)
        conn.send(wire.encode("latin-1"))
        second = assert_fresh_id(conn.read_response(), rid)
    assert first != second  # a new id per request, not a fixed stand-in


def test_empty_request_id_is_replaced(demo_server):
    with demo_server.raw() as conn:
        r = conn.request("GET", "/no/such/path", headers={"X-Request-Id": ""})
    assert r.status == 404, r
    assert_fresh_id(r, "")


def test_default_headers_and_no_server_header(start_server):
    """uvicorn's --header and --no-server-header: defaults on every answer (the app's own, the
    server's errors, the built-ins, the event stream) unless the answer sets that field itself."""
    server = start_server(workers=1, app="behaviours", args=[
        "--pythonpath", str(APPS_DIR), "--no-server-header", "--header", "X-Frame-Options: DENY",
        "--header", "X-Custom:default", "--header", "X-Custom:second"])
    for path in ("/ok", "/no/such/path", "/healthz"):
        r = server.get(path)
        assert r.header("Server") is None and r.header("Date") and r.header("X-Request-Id"), (path, r)
        assert r.header("X-Frame-Options") == "DENY", (path, r)
        assert [v for k, v in r.header_pairs if k.lower() == "x-custom"] == ["default", "second"], (path, r)
    custom = server.get("/custom")  # the app sets X-Custom: 1, which replaces both defaults
    assert custom.status == 201 and [v for k, v in custom.header_pairs if k.lower() == "x-custom"] == ["1"], custom
    assert custom.header("X-Frame-Options") == "DENY"
    with server.raw() as conn:
        conn.send(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.sock.recv(4096)
            assert chunk, "the server closed GET /events before its head: %r" % head
            head += chunk
    head = head.split(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert "x-frame-options: deny" in head and "\nserver:" not in head, head
