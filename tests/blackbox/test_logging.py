"""What reaches the server log: a handler's traceback (docs/handlers.md, "Errors": its type,
text and traceback go to the server log and the worker keeps serving), and --access-log's one
line per request."""

import datetime
import re
import uuid

from gilgamesh_harness import APPS_DIR, wait_for


def test_handler_traceback_reaches_the_log(start_server):
    server = start_server(workers=2, app="behaviours", args=["--pythonpath", str(APPS_DIR)])
    rid = "tb-" + uuid.uuid4().hex
    r = server.get("/raise", headers={"X-Request-Id": rid})
    assert r.status == 500, r
    assert r.header("X-Request-Id") == rid, r
    # The log line names the request; the whole traceback follows it, down to the raise.
    traceback = re.compile(
        r"Traceback \(most recent call last\):\n"
        r".*File \"[^\"]*behaviours\.py\", line \d+, in raise_value_error\n"
        r"\s*raise ValueError\(\"boom from the handler\"\)\n"
        r"(.*\n)*?ValueError: boom from the handler$", re.M | re.S)
    wait_for(lambda: traceback.search(server.log().partition(rid)[2]),
             "the traceback of request %s in the log" % rid)
    # The worker keeps serving: every worker answers after the failure.
    for _ in range(2 * server.workers):
        ok = server.get("/ok")
        assert ok.status == 200 and ok.json() == {"ok": True}, ok


def access_line(method, target, status, length, rid, client=r"127\.0\.0\.1:[0-9]+"):
    """An access-log line: client, method, target, status, body size, time, request id."""
    return re.compile(r"\] %s %s %s %d %d [0-9.]+ms %s$" % (
        client, re.escape(method), re.escape(target), status, length, re.escape(rid)), re.M)


def test_access_log_writes_one_line_per_request(start_server):
    server = start_server(workers=1, args=["--access-log"])
    tag = uuid.uuid4().hex[:12]
    expected, statuses = [], []
    for method, target, body in (("GET", "/fib?n=10", None), ("GET", "/no/such/path", None),
                                 ("POST", "/json", b'{"a": 1}'), ("GET", "/healthz", None)):
        rid = "%s-%d" % (tag, len(expected))
        r = server.request(method, target, body=body, headers={"X-Request-Id": rid})
        statuses.append(r.status)
        expected.append(access_line(method, target, r.status, len(r.body), rid))
    assert statuses == [200, 404, 200, 200], statuses
    wait_for(lambda: all(p.search(server.log()) for p in expected), "every access-log line")
    log = server.log()
    for p in expected:
        assert len(p.findall(log)) == 1, (p.pattern, log[-3000:])


def test_access_log_names_the_client_a_trusted_proxy_forwards(start_server):
    # Loopback is trusted by default (--forwarded-allow-ips): the client nginx names is
    # the one logged, for a request the app answers and for one the server answers itself.
    server = start_server(workers=1, args=["--access-log"])
    tag = uuid.uuid4().hex[:12]
    expected = []
    for target, status, client in (("/fib?n=10", 200, "203.0.113.7"), ("/healthz", 200, "2001:db8::5"),
                                   ("/no/such/path", 404, "203.0.113.8")):
        rid = "%s-%d" % (tag, len(expected))
        r = server.get(target, headers={"X-Request-Id": rid, "X-Forwarded-For": "%s, 127.0.0.1" % client})
        assert r.status == status, r
        expected.append(access_line("GET", target, status, len(r.body), rid, re.escape(client)))
    wait_for(lambda: all(p.search(server.log()) for p in expected), "every access-log line")


COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def test_access_log_format_speaks_gunicorns_atoms(start_server):
    # Apache's combined format as gunicorn writes it, then the time, the response's request id
    # and a header the request lacks; --access-log-format alone turns the log on.
    fmt = COMBINED + ' %(m)s %(U)s %(q)s %(H)s %(B)s %(D)s %(L)s %({x-request-id}o)s %({x-absent}i)s 100%%'
    server = start_server(workers=1, args=["--access-log-format", fmt])
    tag = uuid.uuid4().hex[:12]
    rid = tag + "-fib"
    r = server.get("/fib?n=10", headers={
        "X-Request-Id": rid, "Authorization": "Basic YWxpY2U6czNjcmV0",  # alice:s3cret
        "Referer": "http://example.test/from", "User-Agent": "probe/1.0",
        "X-Forwarded-For": "203.0.113.7, 127.0.0.1"})
    assert r.status == 200, r
    fib = re.compile(
        r"\] 203\.0\.113\.7 - alice \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
        r'"GET /fib\?n=10 HTTP/1\.1" 200 %d "http://example\.test/from" "probe/1\.0" '
        r"GET /fib n=10 HTTP/1\.1 %d \d+ \d+\.\d{6} %s - 100%%$" % (len(r.body), len(r.body), re.escape(rid)), re.M)
    missing = server.get("/no/such/path", headers={"X-Request-Id": tag + "-404"})
    assert missing.status == 404, missing
    not_found = re.compile(r'\] 127\.0\.0\.1 - - \[[^]]+\] "GET /no/such/path HTTP/1\.1" 404 %d "-" "[^"]*" '
                           r"GET /no/such/path  HTTP/1\.1 %d \d+ [0-9.]+ %s - 100%%$"
                           % (len(missing.body), len(missing.body), re.escape(tag + "-404")), re.M)
    # An event stream's line comes when it ends: a stream's size is '-', as gunicorn's %(b)s.
    with server.raw() as conn:
        conn.send(b"GET /events HTTP/1.1\r\nHost: h\r\nUser-Agent: watcher/2\r\n\r\n")
        head = conn.read_response(head_request=True)
        assert head.status == 200, head
    stream = re.compile(r'\] 127\.0\.0\.1 - - \[[^]]+\] "GET /events HTTP/1\.1" 200 - "-" "watcher/2" ', re.M)
    wait_for(lambda: all(p.search(server.log()) for p in (fib, not_found, stream)),
             "the three access-log lines", timeout=15)


def test_no_access_log_without_the_flag(demo_server):
    rid = "quiet-" + uuid.uuid4().hex
    r = demo_server.get("/fib?n=10", headers={"X-Request-Id": rid})
    assert r.status == 200, r
    # The access-log line is written before the response is sent: had there been one,
    # it would be in the log now.
    assert rid not in demo_server.log(), demo_server.log()[-3000:]


def test_log_lines_keep_utc_when_the_app_moves_the_time_zone(start_server):
    # Django sets the process's TZ at import: in local time the lines after it went six
    # hours back (the processes strategy's zygote, which imports the app, as well).
    before = datetime.datetime.now(datetime.timezone.utc)
    server = start_server(workers=2, app="sets_timezone", args=["--pythonpath", str(APPS_DIR)])
    r = server.get("/tz")
    assert r.status == 200 and r.json() == {"tz": "CST"}, r
    server.stop()
    after = datetime.datetime.now(datetime.timezone.utc)
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})Z\]", server.log(), re.M)
    lines = [line for line in server.log().splitlines() if line.startswith("[")]
    assert len(stamps) == len(lines) >= 3, server.log()[-3000:]
    times = [datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
             for s in stamps]
    slack = datetime.timedelta(seconds=1)
    assert all(before - slack <= t <= after + slack for t in times), (before, after, stamps)
