"""What the ASGI peers (uvicorn, Hypercorn) serve for the load runner: the same
ASGI app gilgamesh serves, GILGAMESH_ASGI=MODULE:APP (or MODULE:factory()),
called as it is.

They run on Debian's Python 3.11, not 3.13: the report says so. Besides the
app it answers GET /healthz like the server does, so the runner can wait for
it the same way (the one thing added in front of the app: one comparison of
the path per request).

    GILGAMESH_ASGI=asgi_bench:app PYTHONPATH=loadtest \\
        python3 -m uvicorn --workers 2 --loop uvloop --http httptools asgi_demo:app
    GILGAMESH_ASGI=asgi_bench:app PYTHONPATH=loadtest \\
        hypercorn --workers 2 --worker-class uvloop asgi_demo:app

Environment: GILGAMESH_ASGI, GILGAMESH_APP_ROOT (default: the repository root
above this file), GILGAMESH_PYTHONPATH (directories, joined with os.pathsep,
put before it on sys.path).
"""

import importlib
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

import gilgamesh_standin  # noqa: E402

gilgamesh_standin.install()
sys.path[0:0] = [p for p in os.environ.get("GILGAMESH_PYTHONPATH", "").split(os.pathsep) if p] + \
    [os.environ.get("GILGAMESH_APP_ROOT", os.path.dirname(_here))]
_module, _, _expression = os.environ["GILGAMESH_ASGI"].partition(":")
_app = gilgamesh_standin.asgi_adapter().resolve(importlib.import_module(_module), _expression or "app")

_HEALTHZ_HEAD = {"type": "http.response.start", "status": 200,
                 "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")]}
_HEALTHZ_BODY = {"type": "http.response.body", "body": b"ok\n"}


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/healthz":
        await send(_HEALTHZ_HEAD)
        await send(_HEALTHZ_BODY)
        return
    await _app(scope, receive, send)
