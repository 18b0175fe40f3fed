"""Test app: a raw ASGI 3 application that answers every HTTP request with what the server
parsed of it, as JSON (tests/blackbox/test_parser_vectors.py): method, raw_path, query_string,
http_version and headers (latin-1 strings, in order, duplicates kept) and the whole body
(latin-1). `--asgi asgi_echo:app`; lifespan is served."""

import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    parsed = json.dumps({
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]],
        "body": body.decode("latin-1"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(parsed))]})
    await send({"type": "http.response.body", "body": parsed})
