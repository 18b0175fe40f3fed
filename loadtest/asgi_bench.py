"""The ASGI app of the load runner's ASGI workloads (asgi-hello, starlette-hello,
asgi-fib, asgi-sleep, ws-echo, ws-echo-64k), served the same way by gilgamesh (--asgi asgi_bench:app,
Python 3.13) and by the peers, uvicorn and Hypercorn (Debian's Python 3.11,
through asgi_demo.py).

  GET /hello              raw ASGI: "hello", text/plain
  GET /fib?n=N            raw ASGI: fib(N) in pure Python, 0 <= N <= 30: CPU-bound
  GET /sleep?ms=M         raw ASGI: await asyncio.sleep(M / 1000), 0 <= M <= 10000
  GET /starlette/hello    a Starlette route returning PlainTextResponse("hello")
  WebSocket /ws/echo      raw ASGI: accepts, then sends back every message as it came (text
                          as text, bytes as bytes) until the client leaves

One exact-path lookup picks the handler (a dict), so the raw routes pay nothing
for Starlette and the Starlette route pays one lookup and one call in front of
Starlette's own routing. Lifespan is answered (startup and shutdown complete).
Starlette must be importable: bookworm's pure-Python 0.26.1 (python3-starlette),
which the runner copies for 3.13 with scripts/pure_python_site.py.
"""

import asyncio
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


async def _answer(send, status, body):
    await send({"type": "http.response.start", "status": status,
                "headers": _TEXT + [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _int_query(scope, name, low, high):
    """The query parameter `name` as an int in low..high, or None."""
    for key, value in parse_qsl(scope["query_string"].decode("latin-1")):
        if key == name:
            if value.isdigit() and low <= int(value) <= high:
                return int(value)
            return None
    return None


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


async def hello(scope, receive, send):
    await _answer(send, 200, b"hello")


async def fib_route(scope, receive, send):
    n = _int_query(scope, "n", 0, 30)
    if n is None:
        await _answer(send, 400, b"n must be an integer 0..30\n")
        return
    await _answer(send, 200, b"%d\n" % fib(n))


async def sleep_route(scope, receive, send):
    ms = _int_query(scope, "ms", 0, 10_000)
    if ms is None:
        await _answer(send, 400, b"ms must be an integer 0..10000\n")
        return
    await asyncio.sleep(ms / 1000.0)
    await _answer(send, 200, b"slept %d ms\n" % ms)


async def _starlette_hello(request):
    return PlainTextResponse("hello")


starlette_app = Starlette(routes=[Route("/starlette/hello", _starlette_hello)])

ROUTES = {
    "/hello": hello,
    "/fib": fib_route,
    "/sleep": sleep_route,
    "/starlette/hello": starlette_app,
}


async def ws_echo(scope, receive, send):
    message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":  # websocket.disconnect
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


WS_ROUTES = {"/ws/echo": ws_echo}


async def _ws_not_found(scope, receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 1000})  # before accept: the server's 403


async def _not_found(scope, receive, send):
    await _answer(send, 404, b"not found\n")


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "http":
        await ROUTES.get(scope["path"], _not_found)(scope, receive, send)
    elif scope["type"] == "websocket":
        await WS_ROUTES.get(scope["path"], _ws_not_found)(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
