"""Routes the GoogleTest conversion tests call directly, without HTTP."""
import gilgamesh


@gilgamesh.route("/echo", methods=("GET", "POST"))
def echo(request):
    """Echo the request as the handler sees it."""
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "query_list": request.query_list(),
        "content_type": request.headers.get("content-type"),
        "has_x_multi": "X-MULTI" in request.headers,
        "x_multi": request.headers.get("x-multi"),
        "x_multi_all": request.headers.getall("X-Multi"),
        "body_len": len(request.body),
        "request_id": request.request_id,
    }


@gilgamesh.route("/json", methods=("POST",))
def parse_json(request):
    """Parse the body."""
    return {"parsed": request.json()}


@gilgamesh.route("/text")
def text(request):
    return "héllo"


@gilgamesh.route("/bytes")
def raw(request):
    return b"\x00\x01\xff"


@gilgamesh.route("/none")
def nothing(request):
    return None


@gilgamesh.route("/list")
def a_list(request):
    return [1, "two", None]


@gilgamesh.route("/custom")
def custom(request):
    return gilgamesh.Response("a,b\n", status=201, headers={"X-Custom": "1"}, content_type="text/csv")


@gilgamesh.route("/custom-json")
def custom_json(request):
    return gilgamesh.Response({"ok": True}, status=202, headers=[("X-A", "1"), ("X-A", "2")])


@gilgamesh.route("/teapot")
def teapot(request):
    raise gilgamesh.HTTPError(418, "short and stout")


@gilgamesh.route("/boom")
def boom(request):
    raise ValueError("kaboom")


@gilgamesh.route("/unsupported")
def unsupported(request):
    return {1, 2}


@gilgamesh.route("/bad-header")
def bad_header(request):
    return gilgamesh.Response("x", headers={"X-Evil": "a\r\nSet-Cookie: b"})


@gilgamesh.route("/bad-status")
def bad_status(request):
    return gilgamesh.Response("x", status=1000)


@gilgamesh.route("/not-json-serializable")
def not_serializable(request):
    return {"value": object()}


@gilgamesh.route("/typed/<int:n>/<float:x>/<name>/<path:rest>")
def typed(request, n, x, name, rest):
    """Path parameters, converted."""
    return {"n": n, "x": x, "name": name, "rest": rest,
            "types": [type(v).__name__ for v in (n, x, name, rest)],
            "path_params": request.path_params}
