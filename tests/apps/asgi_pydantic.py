"""Test app: an ASGI app that uses pydantic 2 (as FastAPI does), for tests/blackbox/test_asgi.py.
`--asgi asgi_pydantic:app` with Debian trixie's python3-pydantic on --pythonpath."""

from pydantic import BaseModel


class Item(BaseModel):
    n: int


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = Item(n=3).model_dump_json().encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
