"""Routes with path parameters (tests/apps/path_params.py) on every strategy:
converters, 404 for values that do not convert, exact paths before patterns,
405 with Allow, start-up errors for patterns that cannot be parsed or collide,
and --max-response for route handlers."""

import time

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, free_port, run_cli


@pytest.fixture(scope="module")
def server(gilgamesh_bin, strategy):
    s = GilgameshServer(strategy, workers=2, app="path_params",
                        args=["--pythonpath", str(APPS_DIR), "--max-response", "1000"]).start()
    yield s
    assert s.stop() == 0


def test_int_parameter(server):
    r = server.get("/items/42")
    assert r.status == 200, r
    assert r.json() == {"kwargs": {"item_id": 42}, "types": {"item_id": "int"},
                        "path_params": {"item_id": 42}, "path": "/items/42"}


def test_values_that_do_not_convert_are_404(server):
    for path in ("/items/abc", "/items/", "/items/1.5", "/items/-3", "/items/3/more", "/price/x",
                 "/files/", "/orders/1/lines/x"):
        r = server.get(path)
        assert r.status == 404, (path, r)
        assert r.json()["error"] == "no route for " + path


def test_float_path_and_several_parameters(server):
    assert server.get("/price/2.5").json()["kwargs"] == {"amount": 2.5}
    assert server.get("/price/3").json()["types"] == {"amount": "float"}
    files = server.get("/files/a/b/caf%C3%A9.txt").json()
    assert files["kwargs"] == {"name": "a/b/caf\u00e9.txt"}
    lines = server.get("/orders/7/lines/9").json()
    assert lines["kwargs"] == {"order": 7, "line": 9}
    assert lines["types"] == {"order": "int", "line": "int"}


def test_exact_path_wins_and_methods_choose_the_route(server):
    assert server.get("/users/me").json() == {"user": "me", "static": True}
    assert server.get("/users/bob").json()["kwargs"] == {"name": "bob"}
    assert server.post("/users/me", b"").json() == {"renamed": "me"}
    assert server.request("DELETE", "/items/5").json() == {"deleted": 5}
    r = server.request("PUT", "/items/5")
    assert r.status == 405, r
    assert [m.strip() for m in r.header("Allow").split(",")] == ["GET", "DELETE", "HEAD"]
    with server.raw() as conn:
        head = conn.request("HEAD", "/items/5")
    assert head.status == 200 and head.body == b"" and int(head.header("Content-Length")) > 0


def test_handler_without_the_keyword_is_500_not_a_crash(server):
    r = server.get("/wrong-signature/1")
    assert r.status == 500 and r.json()["error"] == "internal server error", r
    rid = r.header("X-Request-Id")
    deadline = time.monotonic() + 5
    while not any(rid in line and "TypeError" in line for line in server.log().splitlines()):
        assert time.monotonic() < deadline, "no TypeError logged for %s:\n%s" % (rid, server.log()[-3000:])
        time.sleep(0.05)  # polling interval: the log is written by another thread
    assert server.get("/items/1").status == 200


def test_max_response_applies_to_route_handlers(server):
    assert server.get("/blob/1000").status == 200
    r = server.get("/blob/1001")
    assert r.status == 500, r
    assert "1000" in r.json()["error"]
    assert "over --max-response 1000" in server.log()


def test_routes_index_shows_patterns(server):
    paths = [r["path"] for r in server.get("/").json()["routes"]]
    assert "/items/<int:item_id>" in paths and "/files/<path:name>" in paths


@pytest.mark.parametrize("routes,mentions", [
    (['"/items/<int:id>"', '"/items/<int:item_id>"'], ["/items/<int:id>", "/items/<int:item_id>", "collide"]),
    (['"/items/<int:id"'], ["/items/<int:id", "not valid"]),
    (['"/items/<uuid:id>"'], ["/items/<uuid:id>", "unknown converter 'uuid'"]),
])
def test_bad_or_colliding_patterns_stop_the_start(gilgamesh_bin, tmp_path, routes, mentions):
    lines = ["import gilgamesh"]
    for i, path in enumerate(routes):
        lines += ["@gilgamesh.route(%s)" % path, "def h%d(request, **kw):" % i, "    return {}"]
    (tmp_path / "bad_routes.py").write_text("\n".join(lines) + "\n")
    result = run_cli(["--app", "bad_routes", "--pythonpath", str(tmp_path), "--strategy", "threads",
                      "--workers", "1", "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.returncode == 1, result
    for m in mentions:
        assert m in result.stderr, result.stderr
