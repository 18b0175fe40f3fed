"""Test app: Falcon 4 from Debian trixie's python3-falcon, its WSGI App (`app`) and its ASGI
App (`asgi_app`) (tests/blackbox/test_real_frameworks.py). Debian builds Falcon with Cython:
multi-phase-init modules that do not declare per-interpreter GIL support, which own-GIL
sub-interpreters refuse; threads and processes serve it (the free-threaded build loads its
pure-Python fallback)."""

import os

import falcon
import falcon.asgi


class Hello:
    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "hello from falcon"


class Item:
    def on_get(self, req, resp, n):
        resp.media = {"n": n, "q": req.get_param_as_list("q") or [], "pid": os.getpid()}


class Echo:
    def on_post(self, req, resp):
        resp.media = {"json": req.get_media(), "length": req.content_length, "type": req.content_type}


class AsyncHello:
    async def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "hello from falcon"


class AsyncItem:
    async def on_get(self, req, resp, n):
        resp.media = {"n": n, "q": req.get_param_as_list("q") or [], "pid": os.getpid()}


class AsyncEcho:
    async def on_post(self, req, resp):
        resp.media = {"json": await req.get_media(), "length": req.content_length,
                      "type": req.content_type}


app = falcon.App()
app.add_route("/hello", Hello())
app.add_route("/item/{n:int}", Item())
app.add_route("/echo", Echo())

asgi_app = falcon.asgi.App()
asgi_app.add_route("/hello", AsyncHello())
asgi_app.add_route("/item/{n:int}", AsyncItem())
asgi_app.add_route("/echo", AsyncEcho())
