"""Test app: an ASGI application that imports a single-phase-init C extension
(see single_phase_ext.py), which sub-interpreters refuse to load (tests/blackbox/test_check.py)."""

import single_phase_ext  # noqa: F401  (the import is the point)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": single_phase_ext.EXTENSION.__name__.encode()})
