"""Test app: handlers the test holds and releases (gilgamesh_harness.Gate).

GET /wait?port=P connects to the test's gate on 127.0.0.1:P and blocks, in C, until
the test closes that connection: the test knows the handler is running (its gate
saw the connection) and decides when it returns. Bounded: 120 s at most.
"""

import socket

import gilgamesh


@gilgamesh.route("/hello")
def hello(request):
    """Answers at once."""
    return "hello"


@gilgamesh.route("/wait")
def wait(request):
    """Held at the test's gate (?port=) until released; answers {"released": ?tag=}."""
    port = int(request.query["port"])
    with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
        conn.recv(1)  # returns when the test closes the connection
    return {"released": request.query.get("tag", "")}
