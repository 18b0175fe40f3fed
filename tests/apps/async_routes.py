"""Test app: `async def` route handlers under @gilgamesh.route, next to a synchronous one
(tests/blackbox/test_asgi.py). `--app async_routes`.

Routes:
  /sync/hello                "hello" from a plain def (today's path)
  /async/hello               "hello" from an async def
  /async/json                a dict from an async def (JSON)
  /async/sleep?s=1           await asyncio.sleep(s), then JSON: s, slept, pid, thread, loop (id of
                             the running loop), worker_info
  /async/items/<int:item_id> path parameters reach an async handler
  /async/echo (POST)         the request body back, from an async def
  /async/teapot              raises gilgamesh.HTTPError(418) from an async def
  /async/raise               raises RuntimeError from an async def (the generic 500)
"""

import asyncio
import os
import threading
import time

import gilgamesh


@gilgamesh.route("/sync/hello")
def sync_hello(request):
    return "hello"


@gilgamesh.route("/async/hello")
async def async_hello(request):
    await asyncio.sleep(0)
    return "hello"


@gilgamesh.route("/async/json")
async def async_json(request):
    await asyncio.sleep(0)
    return {"async": True, "running_loop": asyncio.get_running_loop() is not None}


@gilgamesh.route("/async/sleep")
async def async_sleep(request):
    s = float(request.query.get("s", "1"))
    started = time.monotonic()
    await asyncio.sleep(s)
    return {"s": s, "slept": time.monotonic() - started, "pid": os.getpid(),
            "thread": threading.get_ident(), "loop": id(asyncio.get_running_loop()),
            "worker_info": gilgamesh.worker_info()}


@gilgamesh.route("/async/items/<int:item_id>")
async def async_item(request, item_id):
    await asyncio.sleep(0)
    return {"item_id": item_id, "type": type(item_id).__name__}


@gilgamesh.route("/async/echo", methods=("POST",))
async def async_echo(request):
    await asyncio.sleep(0)
    return gilgamesh.Response(request.body, content_type="application/octet-stream")


@gilgamesh.route("/async/teapot")
async def async_teapot(request):
    await asyncio.sleep(0)
    raise gilgamesh.HTTPError(418, "short and stout")


@gilgamesh.route("/async/raise")
async def async_raise(request):
    await asyncio.sleep(0)
    raise RuntimeError("async route failed on purpose")
