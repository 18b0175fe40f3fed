"""Test app: Quart (Flask's API on asyncio) from Debian trixie's python3-quart, served with
--asgi quart_app:app (tests/blackbox/test_real_frameworks.py). Its before_serving hook runs
in the ASGI lifespan startup; its views await on the worker's event loop."""

import asyncio
import os
import threading

from quart import Quart, jsonify, request

app = Quart(__name__)
started = {}


@app.before_serving
async def startup():
    started[threading.get_ident()] = "lifespan startup ran"


@app.route("/hello")
async def hello():
    return "hello from quart"


@app.route("/item/<int:n>")
async def item(n):
    return jsonify(n=n, q=request.args.getlist("q"), started=sorted(set(started.values())))


@app.route("/echo", methods=["POST"])
async def echo():
    data = await request.get_json()
    return jsonify(json=data, length=request.content_length, type=request.mimetype)


@app.route("/wait")
async def wait():
    await asyncio.sleep(float(request.args.get("s", "0.3")))
    return jsonify(pid=os.getpid())


@app.route("/stream")
async def stream():
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0)
            yield b"chunk %d\n" % i
    return chunks(), 200, {"Content-Type": "text/plain"}
