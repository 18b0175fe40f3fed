"""Test app: a Starlette chat-style echo over WebSockets (tests/blackbox/test_websockets.py).
`--asgi asgi_ws_starlette:app`. Under gilgamesh: Starlette 0.46 from Debian trixie
(scripts/fetch-trixie-site.sh); under uvicorn, the suite's reference: bookworm's Starlette 0.26.
Only what both versions have is used (no lifespan state: uvicorn 0.17 has none to give).

WebSocket routes (starlette.routing.WebSocketRoute):
  /chat?name=N        a WebSocketEndpoint (encoding "json"): on connect it accepts with the
                      subprotocol "chat.v1" when the client offers it and sends {"joined": N,
                      "pid": <pid>}; every JSON message M comes back as {"from": N, "echo": M};
                      {"bye": CODE} makes it close with CODE and the reason "bye N"; the
                      disconnect logs "chat-disconnect N <code>"
  /bytes              a function endpoint: accepts, echoes binary messages reversed until the
                      client leaves
  /members-only       refuses before accepting unless the query has key=sesame (WebSocketClose:
                      the server answers 403); with it, accepts and sends the text "welcome"
  /vip                refuses with an HTTP response of its own: 401, "members only", through
                      WebSocket.send_denial_response (the denial response extension; Starlette
                      0.37 and later, so gilgamesh's only)

HTTP: GET / answers JSON {"hello": "starlette"}.

ASGI_TEST_EVENTS (environment): the file the lines above are appended to.
"""

import os

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketClose, WebSocketDisconnect

EVENTS = os.environ.get("ASGI_TEST_EVENTS", "")


def event(*parts):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(" ".join(str(p) for p in parts) + "\n")


class Chat(WebSocketEndpoint):
    encoding = "json"

    async def on_connect(self, websocket: WebSocket):
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="chat.v1" if "chat.v1" in offered else None)
        await websocket.send_json({"joined": self.name(websocket), "pid": os.getpid()})

    async def on_receive(self, websocket: WebSocket, data):
        if isinstance(data, dict) and "bye" in data:
            await websocket.close(code=int(data["bye"]), reason="bye %s" % self.name(websocket))
            return
        await websocket.send_json({"from": self.name(websocket), "echo": data})

    async def on_disconnect(self, websocket: WebSocket, close_code: int):
        event("chat-disconnect", self.name(websocket), close_code)

    @staticmethod
    def name(websocket):
        return websocket.query_params.get("name", "anonymous")


async def reversed_bytes(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_bytes()
            await websocket.send_bytes(data[::-1])
    except WebSocketDisconnect:
        pass


async def members_only(websocket: WebSocket):
    if websocket.query_params.get("key") != "sesame":
        await WebSocketClose(code=4003)(websocket.scope, websocket.receive, websocket.send)
        return
    await websocket.accept()
    await websocket.send_text("welcome")
    await websocket.close()


async def vip(websocket: WebSocket):
    await websocket.send_denial_response(
        PlainTextResponse("members only", status_code=401, headers={"WWW-Authenticate": 'Basic realm="vip"'}))


async def home(request):
    return JSONResponse({"hello": "starlette"})


app = Starlette(routes=[
    Route("/", home),
    WebSocketRoute("/chat", Chat),
    WebSocketRoute("/bytes", reversed_bytes),
    WebSocketRoute("/members-only", members_only),
    WebSocketRoute("/vip", vip),
])
