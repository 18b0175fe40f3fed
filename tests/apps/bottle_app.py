"""Test app: Bottle from Debian trixie's python3-bottle, served with --wsgi bottle_app:app
(tests/blackbox/test_real_frameworks.py)."""

import os

import bottle

app = bottle.Bottle()


@app.route("/hello")
def hello():
    bottle.response.content_type = "text/plain"
    return "hello from bottle"


@app.route("/item/<n:int>")
def item(n):
    return {"n": n, "q": bottle.request.query.getall("q"), "pid": os.getpid()}


@app.post("/echo")
def echo():
    return {"json": bottle.request.json, "length": bottle.request.content_length,
            "type": bottle.request.content_type}
