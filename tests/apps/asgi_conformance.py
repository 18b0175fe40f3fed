"""Test app: a raw ASGI 3 application, no framework (tests/blackbox/test_asgi.py).
`--asgi asgi_conformance:app` (or the factory `asgi_conformance:create_app()`).

It reports what the server gives it (the scope, the request body's messages) and breaks the
protocol one way per route, so that the test sees the server's reaction to each rule.

Routes (by scope["path"], with scope["root_path"] taken off the front when it is there):
  /hello                         b"hello" with a Content-Length
  /whoami                        JSON: pid, thread, loop (id of the running loop), worker (the
                                 lifespan's id for this worker, None without lifespan)
  /scope[/anything]              JSON: {"scope": describe(scope), "body_length": N} (the body is
                                 read to its end first)
  /body?echo=0                   reads every http.request message; JSON: messages, more_body
                                 (each message's flag), sizes, length, sha256, body_types, keys;
                                 echo=1: the body itself, with a Content-Length
  /stream?chunks=N&delay_ms=D&size=B&token=T&length=0&raise_after=-1
                                 N chunks (chunk(i, B) of tests/apps/stream_parts.py) with
                                 more_body=True, D ms apart (none before the first), then an empty
                                 body with more_body=False; length=1: with a Content-Length;
                                 raise_after=K: raises after K chunks. Logs "stream T <produced>
                                 <how>" when it ends (how: finished, cancelled, oserror, or the
                                 exception's type name)
  /big?mib=N&token=T             N MiB (default 256) in 64 KiB chunks, no Content-Length; logs
                                 "big-progress T <chunks produced>" after each MiB sent, and
                                 "big T <chunks produced> <how>" when it ends
  /sleep?s=1&token=T             logs "sleep-start T <worker>", await asyncio.sleep(s), then JSON
                                 as /whoami plus s and slept; cancelled: logs "cancelled T
                                 <seconds since the start>" and re-raises
  /wait-disconnect?token=T       reads the body, logs "waiting T", awaits receive() again and logs
                                 "received T <message type> <seconds waited>", then tries to
                                 answer and logs "send-after-disconnect T <ok|OSError|name>
                                 <spec_version>"
  /after-response?token=T        answers b"ok", then awaits receive() (5 s at most) and logs
                                 "after-response T <message type|timeout>"
  /spin?s=30&token=T             logs "spin-start T <worker>", then a pure-Python busy loop of s
                                 seconds on the event loop; stopped by an exception, logs
                                 "spin-stopped T <exception type name>" and re-raises
  /block?s=30&token=T            logs "block-start T <worker> <pid>", then time.sleep(s) on the event
                                 loop: blocked in C, where no HandlerTimeout reaches it
  /state?token=T                 JSON about scope["state"]: has_state, type, keys, worker, pid,
                                 pid_now, hits (the length of the shared list after appending),
                                 leaked (what an earlier request set at the top level: must be
                                 None, the state is a copy); then sets state["leaked"] = T
  /ext/trailers                  with http.response.trailers (only if the server advertises it)
  /ext/pathsend?path=P&length=auto&token=T
                                 with http.response.pathsend (only if the server advertises it);
                                 length=auto: a Content-Length of the file's size, none: no
                                 Content-Length, N: a Content-Length of N; then=body: an
                                 http.response.body after it. Logs "pathsend T <ok|the exception's
                                 type name>" after the send
  /violation/<name>              breaks one rule: body-before-start, start-twice, after-end,
                                 body-not-bytes, raise-before-start, raise-after-start,
                                 no-response, incomplete, unknown-type, status-999,
                                 status-not-int, header-crlf, header-not-bytes

Lifespan: startup stores in scope["state"]: worker (a fresh id), pid, hits (a list), and logs
"startup <worker> <pid> <json of describe(lifespan scope), its state as a type name>"; shutdown logs
"shutdown <worker> <pid>". ASGI_TEST_STARTUP_FAIL (environment), when set: startup answers
lifespan.startup.failed with that text as the message. ASGI_TEST_SHUTDOWN_LINGER=S: shutdown
starts a thread that never ends (named "lingers-after-shutdown"), then takes S seconds.

Other apps here: `lifespan_raises` raises after it received lifespan.startup; `no_lifespan`
does not support lifespan (raises on a scope that is not http, before calling receive()).

ASGI_TEST_EVENTS (environment): the file the lines above are appended to (one line each), so
the test sees them whatever worker (thread, interpreter or process) wrote them.
"""

import asyncio
import hashlib
import json
import os
import threading
import time
import uuid
from urllib.parse import parse_qs

try:
    import gilgamesh  # noqa: F401  (in the server; the app also runs under uvicorn)
except ImportError:
    gilgamesh = None

from stream_parts import MIB_CHUNK, chunk

EVENTS = os.environ.get("ASGI_TEST_EVENTS", "")


def event(*parts):
    """Appends one line to the events file (a no-op without ASGI_TEST_EVENTS)."""
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(" ".join(str(p) for p in parts) + "\n")


def describe(value):
    """The value with its types, as JSON: [type name, value], recursively; bytes as latin-1
    text; lists, tuples and dicts item by item; anything else as its repr."""
    name = type(value).__name__
    if value is None or isinstance(value, (bool, int, float, str)):
        return [name, value]
    if isinstance(value, (bytes, bytearray)):
        return [name, bytes(value).decode("latin-1")]
    if isinstance(value, (list, tuple)):
        return [name, [describe(v) for v in value]]
    if isinstance(value, dict):
        return [name, {str(k): describe(v) for k, v in value.items()}]
    return [name, repr(value)]


def query(scope):
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}


def route_path(scope):
    """scope["path"] with scope["root_path"] taken off the front when it is there."""
    path = scope["path"]
    root = scope.get("root_path") or ""
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")):] or "/"
    return path


def worker_of(scope):
    state = scope.get("state")
    return state.get("worker") if isinstance(state, dict) else None


def whoami(scope):
    return {"pid": os.getpid(), "thread": threading.get_ident(),
            "loop": id(asyncio.get_running_loop()), "worker": worker_of(scope)}


async def respond(send, status, body, content_type=b"text/plain", headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, value, status=200):
    await respond(send, status, json.dumps(value).encode(), b"application/json")


async def read_body(receive):
    """(body, [messages without their body], disconnected)."""
    parts, seen = [], []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts), seen, True
        body = message.get("body", b"")
        seen.append({"more_body": message.get("more_body", False), "size": len(body),
                     "body_type": type(body).__name__, "keys": sorted(message)})
        parts.append(bytes(body))
        if not message.get("more_body", False):
            return b"".join(parts), seen, False


# --- routes -----------------------------------------------------------------------------

async def r_hello(scope, receive, send, q):
    await respond(send, 200, b"hello")


async def r_whoami(scope, receive, send, q):
    await respond_json(send, whoami(scope))


async def r_loop(scope, receive, send, q):
    """The running event loop's class (--loop)."""
    loop = type(asyncio.get_running_loop())
    await respond_json(send, {"loop": "%s.%s" % (loop.__module__, loop.__qualname__)})


async def r_scope(scope, receive, send, q):
    described = describe(scope)  # before anything else touches it
    body, _, _ = await read_body(receive)
    await respond_json(send, {"scope": described, "body_length": len(body)})


async def r_body(scope, receive, send, q):
    body, seen, disconnected = await read_body(receive)
    if disconnected:
        event("body-disconnected", q.get("token", ""), len(body))
        return
    if q.get("echo") == "1":
        await respond(send, 200, body, b"application/octet-stream")
        return
    await respond_json(send, {
        "messages": len(seen), "more_body": [m["more_body"] for m in seen],
        "sizes": [m["size"] for m in seen], "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "body_types": sorted({m["body_type"] for m in seen}),
        "keys": sorted({k for m in seen for k in m["keys"]})})


async def r_stream(scope, receive, send, q):
    chunks, size = int(q.get("chunks", "5")), int(q.get("size", "32"))
    delay = int(q.get("delay_ms", "0")) / 1000.0
    raise_after = int(q.get("raise_after", "-1"))
    token = q.get("token", "")
    headers = [(b"content-type", b"application/octet-stream")]
    if q.get("length") == "1":
        headers.append((b"content-length", b"%d" % (chunks * size)))
    produced, how = 0, "finished"
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            if 0 <= raise_after <= i:
                raise RuntimeError("asgi stream failed after %d chunks on purpose" % i)
            await send({"type": "http.response.body", "body": chunk(i, size), "more_body": True})
            produced += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    except OSError:  # the client left (ASGI HTTP spec 2.4): clean up and return
        how = "oserror"
    except BaseException as e:
        how = type(e).__name__
        raise
    finally:
        event("stream", token, produced, how)


async def r_big(scope, receive, send, q):
    mib = int(q.get("mib", "256"))
    token = q.get("token", "")
    produced, how = 0, "finished"
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(mib * 16):
            await send({"type": "http.response.body", "body": MIB_CHUNK, "more_body": True})
            produced += 1
            if token and produced % 16 == 0:
                event("big-progress", token, produced)
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    except OSError:
        how = "oserror"
    except BaseException as e:
        how = type(e).__name__
        raise
    finally:
        event("big", token, produced, how)


async def r_sleep(scope, receive, send, q):
    s = float(q.get("s", "1"))
    token = q.get("token", "")
    started = time.monotonic()
    event("sleep-start", token, worker_of(scope))
    try:
        await asyncio.sleep(s)
    except asyncio.CancelledError:
        event("cancelled", token, "%.3f" % (time.monotonic() - started))
        raise
    await respond_json(send, dict(whoami(scope), s=s, slept=time.monotonic() - started))


async def r_wait_disconnect(scope, receive, send, q):
    token = q.get("token", "")
    _, _, disconnected = await read_body(receive)
    if disconnected:
        event("received", token, "http.disconnect-before-body-end", 0)
        return
    event("waiting", token)
    started = time.monotonic()
    message = await receive()
    event("received", token, message["type"], "%.3f" % (time.monotonic() - started))
    try:
        await respond(send, 200, b"too late")
        result = "ok"
    except OSError:
        result = "OSError"
    except Exception as e:
        result = type(e).__name__
    event("send-after-disconnect", token, result, scope.get("asgi", {}).get("spec_version"))


async def r_after_response(scope, receive, send, q):
    token = q.get("token", "")
    await read_body(receive)
    await respond(send, 200, b"ok")
    try:
        message = await asyncio.wait_for(receive(), 5)
        event("after-response", token, message["type"])
    except asyncio.TimeoutError:
        event("after-response", token, "timeout")


async def r_spin(scope, receive, send, q):
    s = float(q.get("s", "30"))
    token = q.get("token", "")
    event("spin-start", token, worker_of(scope))
    deadline = time.monotonic() + s
    n = 0
    try:
        while time.monotonic() < deadline:  # never yields to the loop
            n += 1
    except BaseException as e:
        event("spin-stopped", token, type(e).__name__)
        raise
    await respond_json(send, dict(whoami(scope), spun_s=s, loops=n))


async def r_block(scope, receive, send, q):
    s = float(q.get("s", "30"))
    token = q.get("token", "")
    event("block-start", token, worker_of(scope), os.getpid())
    time.sleep(s)  # blocks the loop in C: no exception can be raised until it returns
    event("block-end", token)
    await respond_json(send, dict(whoami(scope), blocked_s=s))


async def r_state(scope, receive, send, q):
    state = scope.get("state")
    out = {"has_state": "state" in scope, "type": type(state).__name__, "pid_now": os.getpid()}
    if isinstance(state, dict):
        out.update(keys=sorted(state), worker=state.get("worker"), pid=state.get("pid"),
                   leaked=state.get("leaked"))
        hits = state.get("hits")
        if isinstance(hits, list):
            hits.append(q.get("token", ""))  # the list is shared: a shallow copy keeps it
            out["hits"] = len(hits)
        state["leaked"] = q.get("token", "")  # the top level is a copy: the next must not see it
    await respond_json(send, out)


async def r_ext(scope, receive, send, q):
    kind = route_path(scope).split("/")[2] if route_path(scope).count("/") >= 2 else ""
    extensions = scope.get("extensions") or {}
    if kind == "trailers" and "http.response.trailers" in extensions:
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum")]})
        await send({"type": "http.response.body", "body": b"with trailers"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")],
                    "more_trailers": False})
    elif kind == "pathsend" and "http.response.pathsend" in extensions:
        path, length = q["path"], q.get("length", "auto")
        headers = [(b"content-type", b"application/octet-stream")]
        if length != "none":
            headers.append((b"content-length", b"%d" % os.path.getsize(path) if length == "auto" else length.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            await send({"type": "http.response.pathsend", "path": path})
            if q.get("then") == "body":
                await send({"type": "http.response.body", "body": b"more"})
        except Exception as exc:
            event("pathsend", q.get("token", ""), type(exc).__name__)
            raise
        event("pathsend", q.get("token", ""), "ok")
    else:
        await respond(send, 404, b"extension not advertised: " + kind.encode())


# --- protocol violations: each breaks one rule ---------------------------------------------

START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/plain")]}


async def v_body_before_start(send):
    await send({"type": "http.response.body", "body": b"too early"})


async def v_start_twice(send):
    await send(START)
    await send(START)
    await send({"type": "http.response.body", "body": b"twice"})


async def v_after_end(send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"done"})
    await send({"type": "http.response.body", "body": b"more"})


async def v_body_not_bytes(send):
    await send(START)
    await send({"type": "http.response.body", "body": "a str, not bytes"})


async def v_raise_before_start(send):
    raise ValueError("asgi app failed on purpose before the start")


async def v_raise_after_start(send):
    await send(START)
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    await asyncio.sleep(0.3)
    raise RuntimeError("asgi app failed on purpose after the start")


async def v_no_response(send):
    return


async def v_incomplete(send):
    await send(START)
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


async def v_unknown_type(send):
    await send({"type": "http.response.bogus"})


async def v_status_999(send):
    await send({"type": "http.response.start", "status": 999, "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


async def v_status_not_int(send):
    await send({"type": "http.response.start", "status": "200 OK", "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


async def v_header_crlf(send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-evil", b"a\r\nset-cookie: injected=1")]})
    await send({"type": "http.response.body", "body": b"x"})


async def v_header_not_bytes(send):
    await send({"type": "http.response.start", "status": 200, "headers": [("x-str", "text")]})
    await send({"type": "http.response.body", "body": b"x"})


VIOLATIONS = {
    "body-before-start": v_body_before_start, "start-twice": v_start_twice,
    "after-end": v_after_end, "body-not-bytes": v_body_not_bytes,
    "raise-before-start": v_raise_before_start, "raise-after-start": v_raise_after_start,
    "no-response": v_no_response, "incomplete": v_incomplete, "unknown-type": v_unknown_type,
    "status-999": v_status_999, "status-not-int": v_status_not_int,
    "header-crlf": v_header_crlf, "header-not-bytes": v_header_not_bytes,
}


async def r_violation(scope, receive, send, q):
    name = route_path(scope).split("/", 2)[2] if route_path(scope).count("/") >= 2 else ""
    if name not in VIOLATIONS:
        await respond(send, 404, b"no such violation")
        return
    await VIOLATIONS[name](send)


ROUTES = {
    "hello": r_hello, "whoami": r_whoami, "scope": r_scope, "body": r_body, "stream": r_stream,
    "big": r_big, "sleep": r_sleep, "wait-disconnect": r_wait_disconnect,
    "after-response": r_after_response, "spin": r_spin, "block": r_block, "state": r_state, "ext": r_ext,
    "violation": r_violation, "loop": r_loop,
}


# --- lifespan -----------------------------------------------------------------------------

async def lifespan(scope, receive, send):
    message = await receive()
    assert message["type"] == "lifespan.startup", message
    failure = os.environ.get("ASGI_TEST_STARTUP_FAIL")
    if failure:
        event("startup-failed", os.getpid())
        await send({"type": "lifespan.startup.failed", "message": failure})
        return
    worker = uuid.uuid4().hex[:12]
    # The lifespan scope, its state given by type only (the state is filled in below).
    described = describe({k: (type(v).__name__ if k == "state" else v) for k, v in scope.items()})
    state = scope.get("state")
    if isinstance(state, dict):
        state.update(worker=worker, pid=os.getpid(), hits=[], started_at=time.time())
    event("startup", worker, os.getpid(), json.dumps(described, separators=(",", ":")))
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown", message
    linger = float(os.environ.get("ASGI_TEST_SHUTDOWN_LINGER") or 0)
    if linger:
        threading.Thread(target=threading.Event().wait, name="lingers-after-shutdown").start()
        await asyncio.sleep(linger)
    event("shutdown", worker, os.getpid())
    await send({"type": "lifespan.shutdown.complete"})


# --- the apps ---------------------------------------------------------------------------

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    if scope["type"] != "http":
        raise ValueError("asgi_conformance serves http, not %r" % scope["type"])
    path = route_path(scope)
    handler = ROUTES.get(path.split("/")[1] if path.startswith("/") else "")
    if handler is None:
        await respond(send, 404, b"no such test route")
        return
    await handler(scope, receive, send, query(scope))


def create_app():
    """The factory form: `--asgi asgi_conformance:create_app()`."""
    return app


async def lifespan_raises(scope, receive, send):
    """Raises in lifespan startup, after it received lifespan.startup: a startup failure."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("lifespan startup raised on purpose: settings missing")
    await app(scope, receive, send)


async def no_lifespan(scope, receive, send):
    """An app that does not support lifespan, as many raw apps: it raises on the lifespan
    scope before calling receive(). Served anyway under --lifespan auto."""
    if scope["type"] != "http":
        raise ValueError("no_lifespan serves http only, not %r" % scope["type"])
    await app(scope, receive, send)
