"""HTTP/1.1 behaviour: standard headers, request ids, HTTP/1.0, keep-alive, pipelining."""

import email.utils
import json

import pytest


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


def test_head_request_has_no_body(demo_server):
    with demo_server.raw() as conn:
        conn.send(b"HEAD /hello HTTP/1.1\r\nHost: h\r\n\r\nGET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
        head = conn.read_response(head_request=True)
        assert head.status in (200, 405), head
        follow = conn.read_response()
        # If HEAD leaked a body, it would be read here as the next status line.
        assert follow.status == 200 and follow.body == b"hello", follow
