"""Test app: a small Starlette application (Starlette 0.46 from Debian trixie, with
scripts/fetch-trixie-site.sh), for tests/blackbox/test_asgi.py. `--asgi asgi_starlette:app`.

Routes:
  GET  /                      JSON {"hello": "starlette"}
  GET  /items/{item_id:int}   JSON {"item_id": <int>, "q": <query q or None>}
  POST /echo                  JSON {"length": N, "sha256": hex} of the request body
  GET  /stream?chunks=N&delay_ms=D
                              a StreamingResponse of N lines "line <i>\\n", D ms apart
  GET  /state                 JSON: the lifespan's state as the request sees it (worker, pid)
  GET  /raise                 raises (Starlette answers its plain 500 and re-raises)
  GET  /visits                JSON {"visits": N, "worker": ...}: counts into the module
                              global VISITS; 500 without the lifespan's state
  GET  /sync                  a plain `def` endpoint: Starlette runs it on anyio's worker
                              threads, which the app starts inside the worker
  GET  /threadpool            run_in_threadpool(): JSON {"thread": <the worker thread's name>}
  GET  /file                  FileResponse of this module's own source (anyio threads read it)

Lifespan: startup puts worker (a fresh id) and pid into the state; startup and shutdown
append "starlette-startup <worker> <pid>" / "starlette-shutdown <worker> <pid>" to the file
named by ASGI_TEST_EVENTS, when set.
"""

import asyncio
import contextlib
import hashlib
import os
import threading
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

EVENTS = os.environ.get("ASGI_TEST_EVENTS", "")


def event(*parts):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(" ".join(str(p) for p in parts) + "\n")


async def home(request: Request):
    return JSONResponse({"hello": "starlette"})


async def item(request: Request):
    return JSONResponse({"item_id": request.path_params["item_id"],
                         "q": request.query_params.get("q")})


async def echo(request: Request):
    body = await request.body()
    return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})


async def stream(request: Request):
    chunks = int(request.query_params.get("chunks", "5"))
    delay = int(request.query_params.get("delay_ms", "0")) / 1000.0

    async def lines():
        for i in range(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            yield b"line %d\n" % i

    return StreamingResponse(lines(), media_type="text/plain")


async def state(request: Request):
    return JSONResponse({"worker": getattr(request.state, "worker", None),
                         "pid": getattr(request.state, "pid", None), "pid_now": os.getpid()})


VISITS = 0  # /visits counts into it: a global the requests change (gilgamesh check's state sharing)


async def visits(request: Request):
    global VISITS
    VISITS += 1
    return JSONResponse({"visits": VISITS, "worker": request.state.worker})  # the lifespan's state, or 500


def sync_endpoint(request: Request):
    return PlainTextResponse("sync endpoint on %s" % threading.current_thread().name)


async def threadpool(request: Request):
    return JSONResponse({"thread": await run_in_threadpool(lambda: threading.current_thread().name)})


async def own_source(request: Request):
    return FileResponse(__file__, media_type="text/x-python")


async def fail(request: Request):
    raise RuntimeError("starlette route failed on purpose")


@contextlib.asynccontextmanager
async def lifespan(app):
    worker = uuid.uuid4().hex[:12]
    event("starlette-startup", worker, os.getpid())
    yield {"worker": worker, "pid": os.getpid()}
    event("starlette-shutdown", worker, os.getpid())


app = Starlette(routes=[
    Route("/", home),
    Route("/items/{item_id:int}", item),
    Route("/echo", echo, methods=["POST"]),
    Route("/stream", stream),
    Route("/state", state),
    Route("/raise", fail),
    Route("/visits", visits),
    Route("/sync", sync_endpoint),
    Route("/threadpool", threadpool),
    Route("/file", own_source),
], lifespan=lifespan)
