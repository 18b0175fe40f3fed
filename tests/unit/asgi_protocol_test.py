"""The Python half of the ASGI adapter (pyworkers/apps/gilgamesh_asgi.py), driven by a
fake mailbox in place of the C++ half: scope, receive(), send() and their rules,
backpressure, disconnects, deadlines, lifespan. WORK IN PROGRESS (issue 23): not in ctest
yet. Run: /usr/bin/python3 -m pytest -q tests/unit/asgi_protocol_test.py
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


class Mailbox:
    """What the C++ half would be: events in, calls out (recorded)."""

    def __init__(self):
        self.events = []
        self.calls = []
        self.lock = threading.Lock()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.push_results = []  # what push() answers next (default PUSH_OK)

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
    cut = record("cut")
    timed_out = record("timed_out")
    done = record("done")

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def request(path="/x", body=b"", method="GET"):
    return asgi.Request(method, path, path.encode(), b"a=1", [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2")],
                        body, "1.1", ("127.0.0.1", 5000), ("127.0.0.1", 8080), "rid-1")


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
