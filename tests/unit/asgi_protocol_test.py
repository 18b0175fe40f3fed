"""The Python half of the ASGI adapter (pyworkers/apps/gilgamesh_asgi.py), driven by a
fake mailbox in place of the C++ half: scope, receive(), send() and their rules,
backpressure, disconnects, deadlines, lifespan, WebSockets, and a loop that pulls its
requests. Every test runs on asyncio's loop and again on uvloop's (--loop uvloop, a
worker process's loop), but those of a loop that pulls, which is asyncio's only.
ctest runs it as `asgi_protocol`; alone:
/usr/bin/python3 -m pytest -q tests/unit/asgi_protocol_test.py
"""

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pyworkers" / "apps"))
import gilgamesh_asgi as asgi  # noqa: E402
import uvloop  # noqa: E402  (Debian's python3-uvloop: scripts/install-deps.sh installs it)


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request, monkeypatch):
    """Each test on both loops: asgi.Worker makes uvloop's where it may (a loop that pulls
    needs asyncio's selector)."""
    if request.param == "uvloop":
        class OnUvloop(asgi.Worker):
            def __init__(self, *args, **kwargs):
                if not kwargs.get("pulls"):
                    kwargs.setdefault("loop", "uvloop")
                super().__init__(*args, **kwargs)
        monkeypatch.setattr(asgi, "Worker", OnUvloop)
    return request.param


class Mailbox:
    """What the C++ half would be: events in, calls out (recorded)."""

    def __init__(self):
        self.events = []
        self.calls = []
        self.lock = threading.Lock()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.push_results = []  # what push() answers next (default PUSH_OK)
        self.ws_send_results = []  # what ws_send() answers next (default PUSH_OK)
        self.inbound = {}  # rid -> [(is_text, data)]: what the client sent, read on ws_more()

    def ring(self, *events):
        with self.lock:
            self.events.extend(events)
        os.eventfd_write(self.fd, 1)

    def take(self):
        with self.lock:
            out, self.events = self.events, []
        return out

    def record(name):
        def call(self, *args):
            self.calls.append((name,) + args)
            if name == "push" and self.push_results:
                return self.push_results.pop(0)
            return 0 if name == "push" else True
        return call

    respond = record("respond")
    open = record("open")
    push = record("push")
    finish = record("finish")
    fail = record("fail")

    def sendfile(self, rid, status, headers, fd, size):
        """As the C++ half: takes a copy of the descriptor (recorded: what it reads)."""
        self.calls.append(("sendfile", rid, status, headers, os.pread(fd, size + 1, 0), size))
        return True

    cut = record("cut")
    timed_out = record("timed_out")
    left = record("left")
    done = record("done")
    ws_close = record("ws_close")

    def ws_accept(self, *args):
        """As the C++ half: completes the handshake, then reads the first message."""
        self.calls.append(("ws_accept",) + args)
        rid = args[0]
        if self.inbound.get(rid):
            self.ring(("ws_message", rid) + self.inbound[rid].pop(0))
        return True

    def ws_send(self, *args):
        self.calls.append(("ws_send",) + args)
        return self.ws_send_results.pop(0) if self.ws_send_results else asgi.PUSH_OK

    def ws_more(self, rid):
        """As the C++ half: reads the next message of `rid` (from `inbound`) only now."""
        self.calls.append(("ws_more", rid))
        if self.inbound.get(rid):
            self.ring(("ws_message", rid) + self.inbound[rid].pop(0))

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def request(path="/x", body=b"", method="GET"):
    return asgi.Request(method, path, path.encode(), b"a=1", [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2")],
                        body, "1.1", ("127.0.0.1", 5000), ("127.0.0.1", 8080), "rid-1", "http")


def serve(app, *events, seconds_left=5.0, lifespan="off", handler_timeout=None, during=None):
    """Serves the events' requests with `app`, then stops; returns the mailbox."""
    box = Mailbox()
    worker = asgi.Worker(app, box, lifespan=lifespan, root_path="/mnt", handler_timeout=handler_timeout)
    assert worker.startup() is None
    box.events.extend(events)
    if during is None:
        box.events.append(("stop",))
    else:
        threading.Thread(target=during, args=(box,), daemon=True).start()
    worker.serve(box.fd)
    worker.close()
    return box


def get(rid=1, **kw):
    return ("request", rid, request(**kw), 5.0)


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_a_one_message_answer_is_one_hand_off():
    box = serve(hello, get())
    assert box.named("respond") == [("respond", 1, 200, [(b"content-type", b"text/plain")], b"hello")]
    assert not box.named("open") and box.named("done") == [("done", 1)]


def test_a_loop_that_flushes_says_so_before_each_wait_and_after_the_done(loop_kind):
    """A worker process's loop (flushes=True): its C++ half holds the "done" frames back
    while callbacks run, and idle() is what sends them before the loop waits."""
    box = Mailbox()
    box.idle = lambda: box.calls.append(("idle",))
    worker = asgi.Worker(hello, box, lifespan="off", flushes=True)
    assert worker.startup() is None
    box.events.extend([get(1), get(2), ("stop",)])
    worker.serve(box.fd)
    assert isinstance(worker.loop, uvloop.Loop) == (loop_kind == "uvloop")
    worker.close()
    names = [c[0] for c in box.calls]
    assert names.count("done") == 2
    assert "idle" in names[names.index("done") + 1:], names  # the dones were flushed
    plain = serve(hello, get())  # a loop that does not flush never calls it (nor needs it)
    assert not plain.named("idle")


def test_the_scope_has_every_key_with_its_type():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        await hello(scope, receive, send)

    serve(app, get())
    assert seen["type"] == "http" and seen["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert seen["http_version"] == "1.1" and seen["method"] == "GET" and seen["scheme"] == "http"
    assert seen["path"] == "/x" and seen["raw_path"] == b"/x" and seen["query_string"] == b"a=1"
    assert seen["root_path"] == "/mnt"
    assert seen["headers"] == [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert seen["client"] == ("127.0.0.1", 5000) and seen["server"] == ("127.0.0.1", 8080)
    assert seen["state"] == {}
    assert seen["extensions"] == {"http.response.pathsend": {}}


def pathsend_app(path, headers=(), then=None):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.pathsend", "path": os.fspath(path) if isinstance(path, Path) else path})
        if then is not None:
            await send(then)
    return app


def descriptors_on(folder):
    """This process's descriptors open on `folder` or a file in it."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target == str(folder) or target.startswith(str(folder) + "/"):
            out.append(target)
    return out


def test_pathsend_hands_the_file_over_and_keeps_no_descriptor(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 1000)
    box = serve(pathsend_app(blob, [(b"content-length", b"1000")]), get())
    assert box.named("sendfile") == [("sendfile", 1, 200, [(b"content-length", b"1000")], b"x" * 1000, 1000)]
    assert not box.named("fail") and box.named("done") == [("done", 1)]
    assert descriptors_on(tmp_path) == []


@pytest.mark.parametrize("make, headers, then, text", [
    (lambda d: d / "missing", (), None, "FileNotFoundError"),
    (lambda d: d, (), None, "IsADirectoryError"),
    (lambda d: "relative/path", (), None, "must be absolute"),
    (lambda d: 7, (), None, "must be a str, not int"),
    (lambda d: d / "f", [(b"Content-Length", b"4")], None, "'4', but"),
    (lambda d: d / "f", (), {"type": "http.response.body", "body": b"x"}, "after the response ended"),
])
def test_pathsend_errors_are_the_apps_and_leave_no_descriptor(tmp_path, make, headers, then, text):
    (tmp_path / "f").write_bytes(b"abc")
    box = serve(pathsend_app(make(tmp_path), headers, then), get())
    fails = box.named("fail")
    assert len(fails) == 1 and text in fails[0][2], box.calls
    assert len(box.named("sendfile")) == (1 if then else 0)
    assert descriptors_on(tmp_path) == []


def test_pathsend_after_a_body_cuts_it():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})

    box = serve(app, get())
    cuts = box.named("cut")
    assert len(cuts) == 1 and "do not mix" in cuts[0][2] and not box.named("sendfile"), box.calls


def test_a_streamed_answer_opens_pushes_and_finishes():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        await send({"type": "http.response.body"})

    box = serve(app, get())
    assert [c[0] for c in box.calls] == ["open", "push", "push", "finish", "done"]
    assert box.named("push") == [("push", 1, b"a"), ("push", 1, b"b")]
    assert box.named("finish") == [("finish", 1, True)]


def test_a_large_body_arrives_in_several_messages_then_the_disconnect():
    got = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            got.append(message)
            if not message.get("more_body"):
                break
        await hello(scope, receive, send)
        got.append(await receive())

    body = os.urandom(1 << 20)
    serve(app, get(body=body, method="POST"))
    assert len(got) >= 3 and all(m["type"] == "http.request" for m in got[:-1])
    assert b"".join(m["body"] for m in got[:-1]) == body
    assert [m["more_body"] for m in got[:-1]] == [True] * (len(got) - 2) + [False]
    assert got[-1] == {"type": "http.disconnect"}


@pytest.mark.parametrize("messages, text", [
    ([{"type": "http.response.body", "body": b"x"}], "http.response.body before http.response.start"),
    ([{"type": "http.response.start", "status": 200}, {"type": "http.response.start", "status": 200}],
     "http.response.start twice"),
    ([{"type": "http.response.start", "status": "200"}], "the status must be an int"),
    ([{"type": "http.response.start", "status": 200, "headers": [("a", "b")]}], "must be bytes"),
    ([{"type": "http.response.start", "status": 200}, {"type": "http.response.body", "body": "str"}],
     "must be bytes"),
    ([{"type": "http.response.bogus"}], "unknown message type 'http.response.bogus'"),
    ([], "returned without sending http.response.start"),
    ([{"type": "http.response.start", "status": 200}], "returned before the response ended"),
])
def test_a_broken_rule_before_anything_went_out_is_a_500(messages, text):
    async def app(scope, receive, send):
        for m in messages:
            await send(m)

    box = serve(app, get())
    fails = box.named("fail")
    assert len(fails) == 1 and text in fails[0][2], box.calls
    assert not box.named("open") and not box.named("respond")


def test_a_failure_after_the_head_cuts_the_body():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        raise ValueError("on purpose")

    box = serve(app, get())
    cuts = box.named("cut")
    assert len(cuts) == 1 and cuts[0][2] == "ValueError: on purpose" and "Traceback" in cuts[0][3]


def test_send_after_the_end_is_logged_and_the_answer_stands():
    async def app(scope, receive, send):
        await hello(scope, receive, send)
        await send({"type": "http.response.body", "body": b"late"})

    box = serve(app, get())
    assert len(box.named("respond")) == 1
    assert "after the response ended" in box.named("fail")[0][2]


def test_a_full_buffer_holds_send_until_there_is_room():
    order = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"1", "more_body": True})
        order.append("sent 1")
        await send({"type": "http.response.body", "body": b"2"})

    def later(box):
        time.sleep(0.2)
        order.append("room")
        box.ring(("room", 1), ("stop",))

    box = Mailbox()
    box.push_results = [asgi.PUSH_FULL]
    worker = asgi.Worker(app, box, lifespan="off")
    box.events.append(get())
    threading.Thread(target=later, args=(box,), daemon=True).start()
    worker.serve(box.fd)
    assert order == ["room", "sent 1"], order
    assert box.named("finish") == [("finish", 1, True)]


def test_a_client_that_leaves_ends_receive_and_send_raises():
    seen = []

    async def app(scope, receive, send):
        await receive()
        seen.append(await receive())
        try:
            await send({"type": "http.response.start", "status": 200})
        except OSError as e:
            seen.append(type(e).__name__)
            raise

    box = serve(app, get(), during=lambda box: (time.sleep(0.1), box.ring(("gone", 1), ("stop",))))
    assert seen == [{"type": "http.disconnect"}, "ClientDisconnected"]
    assert not box.named("fail") and box.named("done") == [("done", 1)]
    assert box.named("left") == [("left", 1, None, None)]  # the C++ half counts a 499, not a 500


def leaves(box):
    time.sleep(0.1)
    box.ring(("gone", 1), ("stop",))


@pytest.mark.parametrize("how", ["returns", "catches-and-returns", "raises-its-own"])
def test_an_app_that_stops_because_the_client_left_broke_no_rule(how):
    async def app(scope, receive, send):
        await receive()
        assert (await receive())["type"] == "http.disconnect"
        if how == "returns":
            return
        try:
            await send({"type": "http.response.start", "status": 200})
        except OSError:
            if how == "raises-its-own":
                raise LookupError("the client went away")  # as Starlette's ClientDisconnect

    box = serve(app, get(), during=leaves)
    assert not box.named("fail") and not box.named("respond") and box.named("done") == [("done", 1)]
    (left,) = box.named("left")
    if how == "raises-its-own":
        assert left[:3] == ("left", 1, "LookupError: the client went away") and "LookupError" in left[3]
    else:
        assert left == ("left", 1, None, None)


def test_a_client_that_leaves_mid_stream_cuts_the_body_without_an_error():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        try:
            await send({"type": "http.response.body", "body": b"b", "more_body": True})
        except OSError:
            return  # before the response ended: the client left, no rule was broken

    box = Mailbox()
    box.push_results = [asgi.PUSH_OK, asgi.PUSH_GONE]
    worker = asgi.Worker(app, box, lifespan="off")
    box.events.extend([get(), ("stop",)])
    worker.serve(box.fd)
    assert box.named("open") and not box.named("cut") and not box.named("fail")
    assert box.named("left") == [("left", 1, None, None)] and box.named("done") == [("done", 1)]


def test_an_app_that_returns_early_while_the_client_is_there_still_breaks_the_rule():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})

    box = serve(app, get())
    assert not box.named("left") and "returned before the response ended" in box.named("cut")[0][2]


def test_the_deadline_cancels_the_task_and_the_connection_answers():
    seen = []

    async def app(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    box = serve(app, ("request", 1, request(), 0.1))
    assert seen == ["cancelled"] and box.named("timed_out") == [("timed_out", 1)]


def test_a_handler_timeout_ends_the_request_not_the_loop():
    class HandlerTimeout(BaseException):
        pass

    async def app(scope, receive, send):
        if scope["path"] == "/spin":
            raise HandlerTimeout()
        await hello(scope, receive, send)

    box = serve(app, ("request", 1, request("/spin"), 5.0), get(2), handler_timeout=HandlerTimeout)
    assert box.named("timed_out") == [("timed_out", 1)] and len(box.named("respond")) == 1


# --- lifespan ---

def lifespan_app(startup):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await startup(scope, receive, send)
            return
        await hello(scope, receive, send)
    return app


async def complete(scope, receive, send):
    assert (await receive())["type"] == "lifespan.startup"
    scope["state"]["db"] = "ready"
    await send({"type": "lifespan.startup.complete"})
    assert (await receive())["type"] == "lifespan.shutdown"
    await send({"type": "lifespan.shutdown.complete"})


def test_startup_state_reaches_each_request_as_a_copy():
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await complete(scope, receive, send)
        seen.append(dict(scope["state"]))
        scope["state"]["mine"] = 1  # the next request does not see it
        await hello(scope, receive, send)

    box = Mailbox()
    worker = asgi.Worker(app, box, lifespan="on")
    assert worker.startup() is None
    box.events.extend([get(1), get(2), ("stop",)])
    worker.serve(box.fd)
    assert seen == [{"db": "ready"}, {"db": "ready"}]
    assert worker.shutdown() is None
    worker.close()


def test_startup_failed_refuses_with_the_apps_message():
    async def failed(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    worker = asgi.Worker(lifespan_app(failed), Mailbox(), lifespan="auto")
    assert worker.startup() == "lifespan startup failed: no database"


def test_raising_after_the_startup_message_refuses_even_under_auto():
    async def raises(scope, receive, send):
        await receive()
        raise RuntimeError("cannot connect")

    worker = asgi.Worker(lifespan_app(raises), Mailbox(), lifespan="auto")
    assert worker.startup() == "lifespan startup raised RuntimeError: cannot connect"


@pytest.mark.parametrize("mode, refused", [("auto", False), ("on", True)])
def test_an_app_without_lifespan(mode, refused):
    async def app(scope, receive, send):
        assert scope["type"] == "http", "no lifespan here"
        await hello(scope, receive, send)

    why = asgi.Worker(app, Mailbox(), lifespan=mode).startup()
    assert (why is not None) == refused, why
    if refused:
        assert "does not support lifespan" in why and "no lifespan here" in why


# --- WebSockets ---

def upgrade(path="/ws", protocols=(b"chat, superchat", b"v2")):
    headers = [(b"host", b"h"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-version", b"13")]
    headers += [(b"sec-websocket-protocol", p) for p in protocols]
    return asgi.Request("GET", path, path.encode(), b"q=1", headers, b"", "1.1", ("127.0.0.1", 5001),
                        ("127.0.0.1", 8080), "rid-ws", "http")


def connect(rid=1, seconds_left=5.0, **kw):
    return ("ws_connect", rid, upgrade(**kw), seconds_left)


def serve_ws(app, *events, inbound=(), closed=None, seconds_left=5.0, handler_timeout=None):
    """Serves one WebSocket (rid 1) with `app`: the client sends `inbound` [(is_text, data)] as
    the C++ half would (one message per ws_more, the first after ws_accept), then closes with
    `closed` (code, reason) once the app read all of it. Returns the mailbox."""
    box = Mailbox()
    box.inbound[1] = list(inbound)
    worker = asgi.Worker(app, box, lifespan="off", root_path="/mnt", handler_timeout=handler_timeout)
    box.events.extend(events or [connect(seconds_left=seconds_left)])
    if closed is not None:
        def close_when_read():
            deadline = time.monotonic() + 5
            while (box.inbound[1] or not box.named("ws_accept")) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)
            box.ring(("ws_closed", 1) + tuple(closed))
        threading.Thread(target=close_when_read, daemon=True).start()
    box.events.append(("stop",))
    worker.serve(box.fd)
    worker.close()
    return box


async def echo(scope, receive, send):
    assert (await receive()) == {"type": "websocket.connect"}
    await send({"type": "websocket.accept", "subprotocol": "superchat", "headers": [(b"x-app", b"yes")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            scope["state"]["disconnect"] = message
            return
        await send(dict(message, type="websocket.send"))


def test_websocket_scope_has_every_key_with_its_type():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        await receive()
        await send({"type": "websocket.close"})

    serve_ws(app)
    assert set(seen) == {"type", "asgi", "http_version", "scheme", "path", "raw_path", "query_string",
                         "root_path", "headers", "client", "server", "subprotocols", "extensions", "state"}
    assert seen["extensions"] == {"websocket.http.response": {}}  # the denial response
    assert seen["type"] == "websocket" and seen["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert seen["http_version"] == "1.1" and seen["scheme"] == "ws"
    assert seen["path"] == "/ws" and seen["raw_path"] == b"/ws" and seen["query_string"] == b"q=1"
    assert seen["root_path"] == "/mnt" and seen["state"] == {}
    assert seen["headers"][1] == (b"upgrade", b"websocket") and len(seen["headers"]) == 7
    assert seen["client"] == ("127.0.0.1", 5001) and seen["server"] == ("127.0.0.1", 8080)
    # Every Sec-WebSocket-Protocol field, split at its commas, in order.
    assert seen["subprotocols"] == ["chat", "superchat", "v2"]


def test_websocket_echo_accept_messages_and_the_clients_close():
    state = {}

    async def app(scope, receive, send):
        scope["state"] = state  # where echo() leaves the disconnect
        await echo(scope, receive, send)

    box = serve_ws(app, inbound=[(True, "h\u00e9".encode()), (False, b"\x00\xff")], closed=(4000, "bye"))
    assert box.named("ws_accept") == [("ws_accept", 1, "superchat", [(b"x-app", b"yes")])]
    assert box.named("ws_send") == [("ws_send", 1, True, "h\u00e9".encode()),
                                    ("ws_send", 1, False, b"\x00\xff")]
    assert len(box.named("ws_more")) == 2, box.calls  # one per message, none before accept
    assert state["disconnect"] == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
    # The client closed: nothing more to close; the request's slot is free.
    assert not box.named("ws_close") and not box.named("fail") and box.named("done") == [("done", 1)]


def test_websocket_text_arrives_as_str_and_bytes_as_bytes_one_key_each():
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        got.append(await receive())
        await send({"type": "websocket.close"})

    serve_ws(app, inbound=[(True, b"text"), (False, b"bin")])
    assert got == [{"type": "websocket.receive", "text": "text"},
                   {"type": "websocket.receive", "bytes": b"bin"}]


def test_websocket_close_before_accept_refuses_the_handshake():
    after = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close", "code": 4003})
        after.append(await receive())

    box = serve_ws(app)
    assert box.named("ws_close") == [("ws_close", 1, 4003, "")]  # the C++ half answers 403
    assert not box.named("ws_accept") and not box.named("fail")
    assert after == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


def test_websocket_the_apps_close_with_code_and_reason_then_receive_says_disconnect():
    after = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "caf\u00e9"})
        after.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "late"})
        except RuntimeError as e:
            after.append(str(e))

    box = serve_ws(app, inbound=[(True, b"dropped: the app closed")])
    assert box.named("ws_close") == [("ws_close", 1, 4001, "caf\u00e9")]
    assert after == [{"type": "websocket.disconnect", "code": 4001, "reason": "caf\u00e9"},
                     "websocket.send after websocket.close"]
    assert not box.named("ws_send")


def test_websocket_a_close_without_a_code_is_1000_and_returning_after_accept_closes():
    async def closes(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": None, "reason": None})

    async def returns(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    assert serve_ws(closes).named("ws_close") == [("ws_close", 1, 1000, "")]
    box = serve_ws(returns)
    assert box.named("ws_close") == [("ws_close", 1, 1000, "")] and not box.named("fail")


ACCEPT = {"type": "websocket.accept"}
TEXT = {"type": "websocket.send", "text": "x"}
CLOSE = {"type": "websocket.close"}
DENY = {"type": "websocket.http.response.start", "status": 401}


@pytest.mark.parametrize("messages, text, decided", [
    ([TEXT], "websocket.send before websocket.accept", False),
    ([ACCEPT, ACCEPT], "websocket.accept twice", True),
    ([CLOSE, ACCEPT], "websocket.accept after websocket.close", True),
    ([ACCEPT, CLOSE, CLOSE], "websocket.close twice", True),
    ([ACCEPT, {"type": "websocket.send", "text": "a", "bytes": b"a"}], "exactly one of 'text' and 'bytes'",
     True),
    ([ACCEPT, {"type": "websocket.send"}], "exactly one of 'text' and 'bytes'", True),
    ([ACCEPT, {"type": "websocket.send", "text": b"x"}], "must be a str", True),
    ([ACCEPT, {"type": "websocket.send", "bytes": "x"}], "must be bytes", True),
    ([ACCEPT, {"type": "websocket.send", "text": "\ud800"}], "not valid Unicode", True),
    ([ACCEPT, {"type": "websocket.close", "code": 1005}], "close code 1005 may not be sent", True),
    ([ACCEPT, {"type": "websocket.close", "code": 2000}], "close code 2000 may not be sent", True),
    ([ACCEPT, {"type": "websocket.close", "code": "1000"}], "the close code must be an int", True),
    ([ACCEPT, {"type": "websocket.close", "reason": "x" * 124}], "more than 123", True),
    ([ACCEPT, {"type": "websocket.close", "reason": b"bye"}], "the close reason must be a str", True),
    ([{"type": "websocket.accept", "subprotocol": "nope"}], "'nope' was not offered", False),
    ([{"type": "websocket.accept", "subprotocol": b"chat"}], "must be a str or None", False),
    ([{"type": "websocket.accept", "headers": [(b"sec-websocket-protocol", b"chat")]}], "use 'subprotocol'",
     False),
    ([{"type": "websocket.accept", "headers": [("x-a", "1")]}], "must be bytes", False),
    ([ACCEPT, DENY], "websocket.http.response.start after websocket.accept", True),
    ([CLOSE, DENY], "websocket.http.response.start after websocket.close", True),
    ([DENY, DENY], "websocket.http.response.start twice", False),
    ([DENY, ACCEPT], "websocket.accept after websocket.http.response.start", False),
    ([DENY, CLOSE], "websocket.close after websocket.http.response.start", False),
    ([DENY, TEXT], "websocket.send after websocket.http.response.start", False),
    ([DENY], "returned before its websocket.http.response ended", False),
    ([{"type": "websocket.http.response.body"}], "websocket.http.response.body before websocket.http.response.start",
     False),
    ([dict(DENY, status=101)], "must be 200-599, not 101", False),
    ([dict(DENY, status="401")], "the status must be an int", False),
    ([{"type": "websocket.bogus"}], "unknown message type 'websocket.bogus'", False),
    ([], "returned without sending websocket.accept or websocket.close", False),
])
def test_websocket_a_broken_rule_is_a_500_before_the_handshake_and_a_1011_after(messages, text, decided):
    """`decided`: the app had accepted or refused the handshake before it broke the rule."""
    async def app(scope, receive, send):
        await receive()
        for m in messages:
            await send(m)

    box = serve_ws(app)
    reported, other = ("cut", "fail") if decided else ("fail", "cut")
    assert len(box.named(reported)) == 1 and text in box.named(reported)[0][2], box.calls
    assert "ProtocolError" in box.named(reported)[0][2] and "Traceback" in box.named(reported)[0][3]
    assert not box.named(other) and box.named("done") == [("done", 1)]
    assert len(box.named("ws_accept")) == (messages[:1] == [ACCEPT])


def test_websocket_denial_response_goes_out_as_the_handshakes_http_answer():
    seen = []

    async def app(scope, receive, send):
        await receive()
        await send(dict(DENY, status=403, headers=[(b"x-why", b"no")]))
        await send({"type": "websocket.http.response.body", "body": b"no", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"pe"})
        seen.append(await receive())
        try:
            await send({"type": "websocket.http.response.body", "body": b"late"})
        except asgi.ProtocolError as e:
            seen.append(str(e))

    box = serve_ws(app)
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""},
                    "websocket.http.response.body after the response ended"]
    # As an HTTP answer in pieces: the head, each piece, the end; no handshake, no error.
    assert [c[0] for c in box.calls if c[0] != "done"] == ["open", "push", "push", "finish"], box.calls
    assert box.named("open") == [("open", 1, 403, [(b"x-why", b"no")])]
    assert b"".join(c[2] for c in box.named("push")) == b"nope"
    assert box.named("done") == [("done", 1)]


def test_websocket_send_after_the_client_left_raises_an_oserror_and_is_not_logged():
    seen = []

    async def app(scope, receive, send):
        await receive()
        await send(ACCEPT)
        seen.append(await receive())
        try:
            await send(TEXT)
        except OSError as e:
            seen.append(type(e).__name__)
            raise

    box = serve_ws(app, closed=(1006, ""))
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}, "ClientDisconnected"]
    assert not box.named("fail") and not box.named("cut") and not box.named("ws_close")


def test_websocket_a_client_gone_before_accept_makes_accept_raise():
    seen = []

    async def app(scope, receive, send):
        await receive()
        await asyncio.sleep(0.2)
        try:
            await send(ACCEPT)
        except OSError as e:
            seen.append(type(e).__name__)

    box = Mailbox()
    worker = asgi.Worker(app, box, lifespan="off")
    box.events.extend([connect(), ("ws_closed", 1, 1006, ""), ("stop",)])
    worker.serve(box.fd)
    assert seen == ["ClientDisconnected"] and not box.named("ws_accept") and not box.named("fail")
    assert box.named("left") == [("left", 1, None, None)]  # a 499 for the handshake, not a 500


def test_websocket_a_full_buffer_holds_send_until_there_is_room_and_a_close_frees_it():
    order = []

    async def app(scope, receive, send):
        await receive()
        await send(ACCEPT)
        await send(TEXT)
        order.append("sent 1")
        await send(TEXT)
        order.append("sent 2")
        try:
            await send(TEXT)
        except OSError:
            order.append("gone")

    def later(box):
        time.sleep(0.2)
        order.append("room")
        box.ring(("room", 1))
        time.sleep(0.2)
        order.append("closed")
        box.ring(("ws_closed", 1, 1001, ""), ("stop",))

    box = Mailbox()
    box.ws_send_results = [asgi.PUSH_FULL, asgi.PUSH_OK, asgi.PUSH_FULL]
    worker = asgi.Worker(app, box, lifespan="off")
    box.events.append(connect())
    threading.Thread(target=later, args=(box,), daemon=True).start()
    worker.serve(box.fd)
    assert order == ["room", "sent 1", "sent 2", "closed", "gone"], order


def test_websocket_a_slow_app_stops_the_reading_and_gets_every_message_in_order():
    messages = [(False, bytes([i]) * 20000) for i in range(12)]  # 240 kB, the window is 64 KiB
    got, more_before = [], []

    async def app(scope, receive, send):
        await receive()
        await send(ACCEPT)
        await asyncio.sleep(0.3)  # receives nothing meanwhile
        more_before.append(len(box.named("ws_more")))
        for _ in messages:
            got.append((await receive())["bytes"])
        await send(CLOSE)

    box = Mailbox()
    box.inbound[1] = list(messages)
    worker = asgi.Worker(app, box, lifespan="off")
    box.events.extend([connect(), ("stop",)])
    worker.serve(box.fd)
    # The first read came with the accept; three more, then four messages (80 kB, past the
    # 64 KiB window) waited unread and the C++ half was told to read no more.
    assert more_before == [3], (more_before, asgi.WS_RECEIVE_WINDOW)
    assert got == [m[1] for m in messages]
    assert len(box.named("ws_more")) == len(messages)


def test_websocket_the_deadline_applies_until_accept_only():
    seen = []

    async def slow_accept(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    box = serve_ws(slow_accept, seconds_left=0.1)
    assert seen == ["cancelled"] and box.named("timed_out") == [("timed_out", 1)]

    async def accepted_then_idle(scope, receive, send):
        await receive()
        await send(ACCEPT)
        await asyncio.sleep(0.3)
        await send(TEXT)
        await send(CLOSE)

    box = serve_ws(accepted_then_idle, seconds_left=0.1)
    assert not box.named("timed_out") and len(box.named("ws_send")) == 1, box.calls


def test_websocket_an_exception_after_accept_is_cut_with_its_traceback():
    async def app(scope, receive, send):
        await receive()
        await send(ACCEPT)
        raise ValueError("on purpose")

    box = serve_ws(app)
    cuts = box.named("cut")
    assert len(cuts) == 1 and cuts[0][2] == "ValueError: on purpose" and "Traceback" in cuts[0][3]
    assert not box.named("ws_close")  # the C++ half closes with 1011


def test_websocket_a_handler_timeout_closes_an_accepted_socket_with_1011():
    class HandlerTimeout(BaseException):
        pass

    async def app(scope, receive, send):
        await receive()
        await send(ACCEPT)
        raise HandlerTimeout()

    box = serve_ws(app, handler_timeout=HandlerTimeout)
    assert box.named("ws_close") == [("ws_close", 1, 1011, "")] and not box.named("cut")


def test_websocket_and_http_share_the_loop():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            return await hello(scope, receive, send)
        await echo(scope, receive, send)

    box = serve_ws(app, connect(), get(rid=2), inbound=[(True, b"one")], closed=(1000, ""))
    assert len(box.named("respond")) == 1 and box.named("ws_send") == [("ws_send", 1, True, b"one")]
    assert sorted(box.named("done")) == [("done", 1), ("done", 2)]


# --- a Worker that pulls its requests (an in-process loop: the pool's queue, no lane) ---------

class PullingMailbox(Mailbox):
    """The C++ half of a loop that pulls: `queued` stands for the pool's queue; pull() hands
    over what is queued, else (asked to) parks until the doorbell, the eventfd, rings."""

    def __init__(self):
        super().__init__()
        self.queued = []
        self.parked = False

    def pull(self, park):
        with self.lock:
            self.calls.append(("pull", park))
            out, self.queued = self.queued, []
            self.parked = park and not out
        return out or None

    def unpark(self):
        with self.lock:
            self.calls.append(("unpark",))
            self.parked = False

    def enqueue(self, *events):
        """A push: the queue rings the loop if it is parked."""
        with self.lock:
            self.queued.extend(events)
            ring = self.parked
            self.parked = False
        if ring:
            os.eventfd_write(self.fd, 1)


def serve_pulling(app, during):
    """Serves with a pulling Worker while `during(box)` plays the pool (on a thread); the
    loop stops when it returns or fails (its failure is raised here)."""
    box = PullingMailbox()
    worker = asgi.Worker(app, box, lifespan="off", pulls=True)
    failed = []

    def pool():
        try:
            during(box)
        except BaseException as exc:  # noqa: B036 - reported by the test's thread
            failed.append(exc)
        finally:
            box.ring(("stop",))

    threading.Thread(target=pool, daemon=True).start()
    worker.serve(box.fd)
    worker.close()
    if failed:
        raise failed[0]
    return box


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_pulling_loop_takes_what_is_queued_parks_when_idle_and_wakes_for_the_next():
    def during(box):
        box.enqueue(get(1), get(2))
        wait_until(lambda: len(box.named("done")) == 2 and box.parked)
        box.enqueue(get(3))  # rings the parked loop
        wait_until(lambda: len(box.named("done")) == 3)

    box = serve_pulling(hello, during)
    assert [c[1] for c in box.named("respond")] == [1, 2, 3]
    assert box.named("unpark"), "a loop that waited parked must unpark once awake"
    assert all(c[1] is True for c in box.named("pull")), box.named("pull")


def test_a_pulling_loop_with_callbacks_ready_takes_nothing_until_they_ran():
    async def busy(scope, receive, send):
        for _ in range(200):  # 200 loop iterations with a callback ready in each
            await asyncio.sleep(0)
        await hello(scope, receive, send)

    def during(box):
        box.enqueue(get(1))
        wait_until(lambda: box.named("done"))

    box = serve_pulling(busy, during)
    assert box.named("respond")
    assert len(box.named("pull")) < 20, "the loop looked at the queue between ready callbacks"


def test_an_interrupt_is_let_in_only_while_a_task_runs():
    """may_interrupt(): the C++ half raises HandlerTimeout into a loop that stays busy past
    a deadline only while one of its tasks runs; between tasks (the loop waiting, or taking
    requests and starting their tasks) the exception would lose what the loop had taken.
    Asked from another thread holding the GIL, as the C++ half's helper does."""
    loop_thread = threading.get_ident()
    spinning = threading.Event()
    release = threading.Event()
    seen = {}

    async def app(scope, receive, send):
        if scope["path"] == "/spin":
            spinning.set()
            while not release.is_set():  # CPU, no await: the loop is blocked in this task
                pass
        await hello(scope, receive, send)

    def during(box):
        box.enqueue(get(1))
        wait_until(lambda: box.named("done") and box.parked)
        seen["waiting"] = asgi.may_interrupt(loop_thread)
        box.enqueue(get(2, path="/spin"))
        assert spinning.wait(5)
        seen["in the app"] = [asgi.may_interrupt(loop_thread) for _ in range(20)]
        release.set()
        wait_until(lambda: len(box.named("done")) == 2 and box.parked)
        seen["waiting again"] = asgi.may_interrupt(loop_thread)

    box = serve_pulling(app, during)
    assert [c[1] for c in box.named("respond")] == [1, 2]
    assert seen == {"waiting": False, "in the app": [True] * 20, "waiting again": False}
    # A thread that serves no loop (it left serve(), or never was one): nothing to protect.
    assert asgi.may_interrupt(loop_thread) is True
