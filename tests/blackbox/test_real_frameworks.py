"""Real web frameworks, unchanged, on every strategy: Quart (ASGI), Falcon (its WSGI and its
ASGI app), Bottle and Pyramid (WSGI), from Debian trixie's python3-* packages
(scripts/fetch-trixie-site.sh; `make trixie-site` fetches them, `make test` runs it). The
apps are tests/apps/{quart,falcon,bottle,pyramid}_app.py.

Each framework routes with a path parameter and a repeated query parameter, parses a JSON
body and answers JSON, answers 404 for what it does not route, and the server stops with
status 0 and nothing Python complained about at exit. Quart also runs its before_serving
hook in the lifespan startup, overlaps awaiting views on one worker's loop and streams.

Debian builds Falcon with Cython: multi-phase-init modules that do not declare
per-interpreter GIL support. Under `subinterpreters` the server refuses to start, exits 1,
and says which modules and why (not "single-phase init", which CPython's ImportError
cannot tell apart); the other strategies serve it.

Not in the sanitized pass (as test_real_packages.py)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from gilgamesh_harness import (APPS_DIR, REPO, AsgiServer, GilgameshServer, TIME_SCALE,
                               binary_path, free_port, scaled, timed_concurrent_gets)

if os.environ.get("GILGAMESH_SANITIZED"):
    pytest.skip("not in the sanitized pass (see test_real_packages.py)", allow_module_level=True)

# name: (Debian package, --wsgi or --asgi, MODULE:APP, serves under subinterpreters)
FRAMEWORKS = {
    "quart": ("python3-quart", "asgi", "quart_app:app", True),
    "falcon": ("python3-falcon", "wsgi", "falcon_app:app", False),
    "falcon-asgi": ("python3-falcon", "asgi", "falcon_app:asgi_app", False),
    "bottle": ("python3-bottle", "wsgi", "bottle_app:app", True),
    "pyramid": ("python3-pyramid", "wsgi", "pyramid_app:app", True),
}
WAIT_S = 0.5


@pytest.fixture(scope="module")
def site():
    """The trixie site folder holding the frameworks; fails saying `make trixie-site` if not."""
    given = os.environ.get("GILGAMESH_TRIXIE_SITE")
    if given:
        return Path(given)
    packages = sorted({f[0] for f in FRAMEWORKS.values()})
    result = subprocess.run(["bash", str(REPO / "scripts" / "fetch-trixie-site.sh"), "--print-path",
                             *packages], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail("Debian trixie's frameworks are not fetched: run `make trixie-site`\n%s"
                    % result.stderr.strip(), pytrace=False)
    return Path(result.stdout.strip())


def server_for(name, strategy, site):
    _, kind, spec, _ = FRAMEWORKS[name]
    args = ["--pythonpath", str(APPS_DIR), "--pythonpath", str(site)]
    if kind == "asgi":
        return AsgiServer(strategy, spec, workers=2, args=args)
    return GilgameshServer(strategy, workers=2, wsgi=spec, args=args)


def check_routes(server, name):
    label = name.split("-")[0]
    r = server.get("/hello")
    assert r.status == 200 and r.body == b"hello from " + label.encode(), r
    r = server.get("/item/7?q=a&q=b%20c")
    assert r.status == 200, r
    assert (r.json()["n"], r.json()["q"]) == (7, ["a", "b c"]), r
    assert server.get("/item/seven").status == 404
    assert server.get("/nowhere").status == 404
    body = {"k": "<b>&", "n": [1, 2.5, None], "\u00e9": "\u2713"}
    r = server.post("/echo", body)
    assert r.status == 200, r
    echoed = r.json()
    assert echoed["json"] == body, echoed
    assert echoed["length"] == len(json.dumps(body).encode("utf-8")), echoed  # as the harness sends it
    assert echoed["type"].startswith("application/json"), echoed


def check_quart(server):
    r = server.get("/item/1")
    assert r.json()["started"] == ["lifespan startup ran"], r  # before_serving ran, in the lifespan
    r = server.get("/stream")
    assert r.status == 200 and r.body == b"chunk 0\nchunk 1\nchunk 2\n", r
    _, elapsed = timed_concurrent_gets(server, ["/wait?s=%s" % WAIT_S] * 8, ["/wait?s=0.05"] * 8)
    # Eight views that await 0.5 s on two workers: about 0.5 s, not 2 s.
    assert elapsed < WAIT_S + 0.8 * TIME_SCALE, "8 awaiting Quart views took %.2f s" % elapsed


def refused_start(name, strategy, site):
    server = server_for(name, strategy, site)
    server.port = free_port()
    result = subprocess.run(server.command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=scaled(90))
    return result.returncode, result.stderr


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_framework_serves_or_is_refused_by_name(gilgamesh_bin, strategy, site, name):
    package, _, spec, serves_in_subinterpreters = FRAMEWORKS[name]
    if strategy == "subinterpreters" and not serves_in_subinterpreters:
        code, err = refused_start(name, strategy, site)
        assert code == 1, (code, err[-3000:])
        line = next((l for l in err.splitlines() if "cannot load app '%s'" % spec in l), "")
        assert re.search(r"falcon\.\w+(, falcon\.[\w.]+)* and \d+ more falcon modules: (a C extension|C "
                         r"extensions) that do(es)? not declare support for a per-interpreter GIL", line), err
        assert "single-phase" not in line, line
        assert "--strategy processes or --strategy threads" in line, line
        return
    server = server_for(name, strategy, site).start()
    try:
        check_routes(server, name)
        if name == "quart":
            check_quart(server)
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, "server exited with %r\n%s" % (code, log[-4000:])
    for noise in ("Exception ignored", "Traceback", "[error]", "[critical]"):
        assert noise not in log, "%s under %s:\n%s" % (noise, strategy, log[-4000:])
