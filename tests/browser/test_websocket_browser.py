"""A WebSocket from Chromium (issue 24): the Starlette chat-style echo of
tests/apps/asgi_ws_starlette.py under gilgamesh, talked to by Debian's headless Chromium
through websocket_driver.js, on each strategy that serves WebSockets.

    GILGAMESH_BIN=build/gilgamesh /usr/bin/python3 -m pytest -q tests/browser/test_websocket_browser.py

Needs /usr/bin/chromium, node, web/node_modules (make setup) and Starlette from Debian trixie
(make trixie-site).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import gilgamesh_harness as harness
from gilgamesh_harness import APPS_DIR, AsgiServer
from test_real_packages import find_trixie_site

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "websocket_driver.js"
PLAYWRIGHT = REPO / "web" / "node_modules" / "playwright-core" / "package.json"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(params=harness.strategies())
def strategy(request):
    return request.param


def test_chromium_talks_to_a_starlette_chat(strategy):
    node = shutil.which("node")
    missing = [what for what, ok in (("node", node), ("chromium", os.access(CHROMIUM, os.X_OK)),
                                     ("playwright-core", PLAYWRIGHT.is_file())) if not ok]
    if missing:
        pytest.fail("missing %s: run `make setup`" % ", ".join(missing), pytrace=False)
    site = find_trixie_site(["python3-starlette"])
    server = AsgiServer(strategy, "asgi_ws_starlette:app", workers=2,
                             args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(site)]).start()
    try:
        out = subprocess.run([node, str(DRIVER), "--url", "http://%s:%d/" % (server.host, server.port)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, "the browser driver failed (%d):\n%s\n%s\n--- server ---\n%s" % (
            out.returncode, out.stdout[-3000:], out.stderr[-3000:], server.log()[-3000:])
        report = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        code = server.stop()
        server.kill()
    assert code == 0, server.log()[-3000:]
    assert json.loads(report["page"]) == {"hello": "starlette"}
    assert report["chat_opened"] and report["protocol"] == "chat.v1", report
    assert report["joined"] == "chromium"
    assert report["echoes"] == [{"from": "chromium", "echo": {"text": "chromium says %d" % i}} for i in range(5)]
    assert report["chat_close"] == {"code": 4001, "reason": "bye chromium"}, report
    assert report["reversed"] == [250, 3, 2, 1]
    assert report["bytes_close"]["code"] == 1000, report
    assert not report["refused_opened"] and report["refused_close"]["code"] == 1006, report
