"""Test app: a raw ASGI 3 WebSocket application, no framework (tests/blackbox/test_websockets.py).
`--asgi asgi_websocket:app` under gilgamesh, `asgi_websocket:app` under uvicorn (the suite's
reference mode), so every line here keeps to the ASGI spec and assumes nothing of the server.

It reports what the server gives it and breaks the protocol one way per route, so that the
test sees the server's reaction to each rule. Every WebSocket route takes `token=T`, the key of
its lines in the events file.

WebSocket routes (by scope["path"], scope["root_path"] taken off the front when it is there):
  /echo?subprotocol=P&header=N:V  accepts (with subprotocol P and response header N: V when
                                  given), then sends back every message as it came (text as
                                  text, bytes as bytes) until the disconnect; logs
                                  "disconnect T <code> <reason or ->"
  /scope[/anything]               accepts, sends one text message: JSON {"scope": describe(scope),
                                  "connect": describe(the first message received)}, then echoes
                                  as /echo
  /deny                           websocket.close before accept (the server answers 403); logs
                                  "denied T"
  /close?code=C&reason=R          accepts, waits for one message, closes with C and R (absent
                                  when not given), then logs "after-close-send T <outcome>" for a
                                  websocket.send (outcome: ok, or the exception's type name) and
                                  "after-close-receive T <type> <code>" for a receive()
  /client-close                   accepts, receives until the disconnect, logs "disconnect T
                                  <code> <reason or -> <spec_version>", then tries a
                                  websocket.send and logs "after-disconnect-send T <outcome>
                                  <OSError|other>"
  /raise-before-accept            raises before anything was sent (500)
  /raise-after-accept             accepts, raises (the server closes the socket)
  /return-without-accept          returns without accept or close (500)
  /return-after-accept            accepts, returns (the server closes the socket, 1000)
  /slow-accept?s=S                receives websocket.connect, sleeps S s, accepts, then echoes;
                                  logs "slow-accept T cancelled" when cancelled
  /flood?mib=N&size=B             accepts, sends N MiB (default 64) in binary messages of B bytes
                                  (default 65536) without reading; logs "flood-progress T
                                  <messages>" after each MiB and "flood T <messages> <how>" at the
                                  end (how: finished, cancelled, or the exception's type name)
  /rule/<name>                    breaks one rule, catches what send() raised, then (accepting
                                  first if it had not) sends one text message: "raised <type>:
                                  <text>" or "no error", and closes with 1000. Rules:
                                  send-before-accept, accept-twice, text-and-bytes, neither,
                                  text-not-str, bytes-not-bytes, close-code-1005,
                                  http-response-extension, unknown-type, subprotocol-not-offered,
                                  accept-sets-protocol-header
  /whoami                         accepts, sends JSON {"pid", "worker"} (the lifespan's worker
                                  id, or None), then echoes as /echo

HTTP (any path): 200 "http ok" (the readiness poll of the reference server); /whoami: JSON
{"pid", "worker"}.

Lifespan: startup stores worker (a fresh id) and pid in scope["state"] when the server gives a
state, and logs "startup <worker> <pid>"; shutdown logs "shutdown <worker> <pid>".

ASGI_TEST_EVENTS (environment): the file the lines above are appended to (one line each), so
the test sees them whatever worker (thread, interpreter or process) wrote them.
"""

import asyncio
import json
import os
import uuid
from urllib.parse import parse_qs

from asgi_conformance import describe, route_path

EVENTS = os.environ.get("ASGI_TEST_EVENTS", "")


def event(*parts):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(" ".join(str(p) for p in parts) + "\n")


def query(scope):
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def outcome(exc):
    return "ok" if exc is None else type(exc).__name__


async def try_send(send, message):
    """None, or the exception send() raised."""
    try:
        await send(message)
    except Exception as e:  # what the server raised is the point
        return e
    return None


async def echo_until_disconnect(receive, send, token):
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            event("disconnect", token, message.get("code"), message.get("reason") or "-")
            return message
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def accept(send, q):
    message = {"type": "websocket.accept"}
    if q.get("subprotocol"):
        message["subprotocol"] = q["subprotocol"]
    if q.get("header"):
        name, _, value = q["header"].partition(":")
        message["headers"] = [(name.encode("latin-1"), value.encode("latin-1"))]
    await send(message)


def whoami(scope):
    state = scope.get("state") or {}
    return {"pid": os.getpid(), "worker": state.get("worker")}


# --- the rules, each broken once -----------------------------------------------------------

ACCEPT = {"type": "websocket.accept"}
RULES = {
    # name: (accept before breaking it, the message that breaks it)
    "send-before-accept": (False, {"type": "websocket.send", "text": "early"}),
    "accept-twice": (True, ACCEPT),
    "text-and-bytes": (True, {"type": "websocket.send", "text": "a", "bytes": b"a"}),
    "neither": (True, {"type": "websocket.send"}),
    "text-not-str": (True, {"type": "websocket.send", "text": 42}),
    "bytes-not-bytes": (True, {"type": "websocket.send", "bytes": 42}),
    "close-code-1005": (True, {"type": "websocket.close", "code": 1005}),
    "http-response-after-accept": (True, {"type": "websocket.http.response.start", "status": 401,
                                          "headers": []}),
    "unknown-type": (True, {"type": "websocket.bogus"}),
    "subprotocol-not-offered": (False, {"type": "websocket.accept", "subprotocol": "never-offered"}),
    "accept-sets-protocol-header": (False, {"type": "websocket.accept",
                                            "headers": [(b"sec-websocket-protocol", b"chat")]}),
}


async def break_rule(name, send):
    accept_first, message = RULES[name]
    if accept_first:
        await send(ACCEPT)
    raised = await try_send(send, message)
    if not accept_first and (raised is not None or message["type"] != "websocket.accept"):
        await send(ACCEPT)
    report = "no error" if raised is None else "raised %s: %s" % (type(raised).__name__, raised)
    await send({"type": "websocket.send", "text": report})
    await send({"type": "websocket.close", "code": 1000})


async def deny_http(scope, receive, send, q, token):
    """The denial response extension (websocket.http.response): the handshake answered with
    the app's own HTTP response. ?then=accept|close|return-early|raise tries one more thing
    after the start; the events say what each send raised and what receive() gave after."""
    extensions = scope.get("extensions") or {}
    event("deny-http", token, "advertised" if "websocket.http.response" in extensions else "not-advertised")
    raised = await try_send(send, {"type": "websocket.http.response.start", "status": int(q.get("status", "401")),
                                   "headers": [(b"content-type", b"text/plain"),
                                               (b"www-authenticate", b'Bearer realm="ws"')]})
    event("deny-http-start", token, outcome(raised))
    then = q.get("then", "")
    if then == "accept":
        event("deny-http-then", token, outcome(await try_send(send, ACCEPT)))
    elif then == "close":
        event("deny-http-then", token, outcome(await try_send(send, {"type": "websocket.close"})))
    elif then == "return-early":
        return
    elif then == "raise":
        raise RuntimeError("websocket app failed on purpose after websocket.http.response.start")
    await send({"type": "websocket.http.response.body", "body": b"who are ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"you?"})
    late = await try_send(send, {"type": "websocket.http.response.body", "body": b"late"})
    message = await asyncio.wait_for(receive(), 5)
    event("deny-http-after", token, outcome(late), message["type"], message.get("code"))


# --- the app ---------------------------------------------------------------------------------

async def websocket(scope, receive, send):
    path = route_path(scope)
    q = query(scope)
    token = q.get("token", "-")
    if path == "/raise-before-accept":
        raise RuntimeError("websocket app failed on purpose before accept")
    if path == "/return-without-accept":
        return
    connect = await receive()
    if path == "/deny":
        event("denied", token)
        await send({"type": "websocket.close", "code": 4003})
        return
    if path == "/slow-accept":
        try:
            await asyncio.sleep(float(q.get("s", "5")))
        except asyncio.CancelledError:
            event("slow-accept", token, "cancelled")
            raise
        await send(ACCEPT)
        await echo_until_disconnect(receive, send, token)
        return
    if path == "/deny-http":
        await deny_http(scope, receive, send, q, token)
        return
    if path.startswith("/rule/"):
        await break_rule(path[len("/rule/"):], send)
        return
    await accept(send, q)
    if path == "/echo":
        await echo_until_disconnect(receive, send, token)
    elif path == "/scope" or path.startswith("/scope/"):
        await send({"type": "websocket.send", "text": json.dumps({"scope": describe(scope),
                                                                  "connect": describe(connect)})})
        await echo_until_disconnect(receive, send, token)
    elif path == "/whoami":
        await send({"type": "websocket.send", "text": json.dumps(whoami(scope))})
        await echo_until_disconnect(receive, send, token)
    elif path == "/close":
        await receive()
        close = {"type": "websocket.close"}
        if "code" in q:
            close["code"] = int(q["code"])
        if "reason" in q:
            close["reason"] = q["reason"]
        await send(close)
        late = await try_send(send, {"type": "websocket.send", "text": "late"})
        event("after-close-send", token, outcome(late))
        message = await asyncio.wait_for(receive(), 5)
        event("after-close-receive", token, message["type"], message.get("code"))
    elif path == "/client-close":
        message = await echo_until_disconnect(receive, send, token)
        event("client-closed", token, message.get("code"), message.get("reason") or "-",
              scope.get("asgi", {}).get("spec_version", "2.0"))
        raised = await try_send(send, {"type": "websocket.send", "text": "after the disconnect"})
        event("after-disconnect-send", token, outcome(raised),
              "OSError" if isinstance(raised, OSError) else "other")
    elif path == "/raise-after-accept":
        raise RuntimeError("websocket app failed on purpose after accept")
    elif path == "/return-after-accept":
        return
    elif path == "/flood":
        await flood(send, q, token)
    else:
        await send({"type": "websocket.close", "code": 4004, "reason": "no such route"})


async def flood(send, q, token):
    mib, size = int(q.get("mib", "64")), int(q.get("size", "65536"))
    total, sent, how = mib << 20, 0, "finished"
    payload = os.urandom(size)
    try:
        while sent * size < total:
            await send({"type": "websocket.send", "bytes": payload})
            sent += 1
            if (sent * size) % (1 << 20) < size:
                event("flood-progress", token, sent)
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    except Exception as e:
        how = type(e).__name__
        raise
    finally:
        event("flood", token, sent, how)


async def http(scope, receive, send):
    if route_path(scope) == "/whoami":
        body = json.dumps(whoami(scope)).encode()
    else:
        body = b"http ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope, receive, send):
    worker = uuid.uuid4().hex[:12]
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if isinstance(scope.get("state"), dict):
                scope["state"].update(worker=worker, pid=os.getpid())
            event("startup", worker, os.getpid())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            event("shutdown", worker, os.getpid())
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "websocket":
        await websocket(scope, receive, send)
    elif kind == "http":
        await http(scope, receive, send)
    elif kind == "lifespan":
        await lifespan(scope, receive, send)
