"""GET /dashboard in headless Chromium, while wrk loads the server.

    GILGAMESH_BIN=build/gilgamesh /usr/bin/python3 -m pytest -q tests/browser

Needs /usr/bin/chromium, /usr/bin/wrk, node, and web/node_modules (make setup).
"""

import json
import os
import re
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest

import gilgamesh_harness as harness
from gilgamesh_harness import GilgameshServer

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "dashboard_driver.js"
PLAYWRIGHT = REPO / "web" / "node_modules" / "playwright-core" / "package.json"
CHROMIUM = "/usr/bin/chromium"
WRK = "/usr/bin/wrk"
DRIVER_TIMEOUT_S = 120


def _require():
    node = shutil.which("node")
    missing = [what for what, ok in (("node", node), ("chromium", os.access(CHROMIUM, os.X_OK)),
                                     ("wrk", os.access(WRK, os.X_OK)), ("playwright-core", PLAYWRIGHT.is_file()))
               if not ok]
    if missing:
        pytest.fail("missing %s: run `make setup` (scripts/install-deps.sh, scripts/fetch-web-deps.sh)"
                    % ", ".join(missing), pytrace=False)
    return node


def _drive(servers, *args):
    """Runs the driver against the dashboards of `servers` (one browser, a tab
    each) and returns its report for each, in order."""
    node = _require()
    urls = []
    for server in servers:
        urls += ["--url", "http://%s:%d/dashboard" % (server.host, server.port)]
    out = subprocess.run([node, str(DRIVER), *urls, *[str(a) for a in args]],
                         capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, cwd=REPO)
    assert out.returncode == 0, "the browser driver failed (%d):\n%s\n%s\n--- server ---\n%s" % (
        out.returncode, out.stdout[-3000:], out.stderr[-3000:], "\n".join(s.log()[-2000:] for s in servers))
    pages = json.loads(out.stdout.strip().splitlines()[-1])["pages"]
    assert len(pages) == len(servers)
    return pages


class Wrk:
    """wrk against one URL until stopped (its own -d is only an upper bound)."""

    def __init__(self, url, connections=4, max_seconds=90):
        self.process = subprocess.Popen([WRK, "-t1", "-c%d" % connections, "-d%ds" % max_seconds,
                                         "--timeout", "10s", url],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            out, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _series(read, chart, label):
    [s] = [s for s in read["charts"][chart]["series"] if s["label"] == label]
    return s


@pytest.fixture
def servers():
    started = []

    def start(strategy, workers, args=()):
        server = GilgameshServer(strategy, workers=workers, args=args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.alive():
            server.stop()
        server.kill()


def test_dashboard_under_load_shows_growing_charts_and_every_worker(servers, tmp_path):
    workers = 3
    server = servers("subinterpreters", workers)
    # A few requests before the load, so the route table has more than /fib.
    for path in ("/hello", "/hello", "/fib?n=99", "/primes?limit=1000"):
        server.get(path)
    screenshot = os.environ.get("GILGAMESH_DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
    load = Wrk("http://%s:%d/fib?n=25" % (server.host, server.port))
    try:
        [report] = _drive([server], "--snapshots", 6, "--screenshot", screenshot)
    finally:
        wrk_out = load.stop()
    assert "requests in" in wrk_out, wrk_out

    assert report["status"] == 200
    assert report["consoleErrors"] == [], report["consoleErrors"]
    origin = "http://%s:%d/" % (server.host, server.port)
    assert all(u.startswith(origin) for u in report["requests"]), report["requests"]
    first, second = report["first"], report["second"]
    assert first["mode"] == second["mode"] == "live", (first["feed"], second["feed"])
    assert second["snapshots"] >= first["snapshots"] + 6

    # Every chart holds more points on the second read, and draws on a real canvas.
    for name in ("throughput", "latency", "queue", "memory"):
        assert second["charts"][name]["points"] > first["charts"][name]["points"] >= 2, (name, first, second)
        width, height = second["charts"][name]["canvas"]
        assert width >= 300 and height >= 200, (name, second["charts"][name])
    # ... and the values show the load: 2xx per second, busy workers, latency of fib(25).
    ok = _series(second, "throughput", "2xx/s")
    assert ok["values"] >= 5 and ok["max"] > 5, ok
    assert _series(second, "queue", "busy workers")["max"] >= 1
    assert _series(second, "queue", "workers")["max"] == workers
    p50 = _series(second, "latency", "p50 ms")
    p99 = _series(second, "latency", "p99 ms")
    assert p50["values"] >= 3 and p50["max"] > 1.0, p50  # fib(25) takes milliseconds
    assert p99["max"] >= p50["max"]
    assert _series(second, "memory", "server RSS")["max"] > 5  # MiB

    # One card per worker, each with its own request count.
    cards = second["cards"]
    assert sorted(int(c["worker"]) for c in cards) == list(range(workers)), cards
    assert all(c["state"] in ("idle", "busy", "starting", "recycling", "interrupting", "replacing", "stopped")
               for c in cards), cards
    assert sum(int(c["fields"]["requests"].replace(",", "")) for c in cards) > 0, cards
    assert second["identity"]["strategy"] == "subinterpreters"
    assert second["identity"]["workers"] == str(workers)
    assert second["gilAlert"] is None

    # The route table: the loaded route counts, with its docstring; the 400 counted as 4xx.
    rows = {r[0]: r for r in second["routes"]}
    fib = rows["GET /fib"]
    assert int(fib[2].replace(",", "")) > 10 and fib[3] == "1", fib
    assert fib[8] == "Naive recursive Fibonacci of n (0..35): pure CPU, exponential in n."
    assert rows["GET /hello"][2] == "2"
    assert rows["GET /counter"][5] == "–", "a route without traffic shows no quantile"

    width, height = _png_size(screenshot)
    assert width == 1400 and height >= 900


def test_dashboard_falls_back_to_polling_when_the_stream_fails(servers):
    server = servers("threads", 2)
    [report] = _drive([server], "--block-events", "--snapshots", 2)
    first, second = report["first"], report["second"]
    assert second["mode"] == "polling", second["feed"]
    assert second["snapshots"] >= first["snapshots"] + 2
    assert second["charts"]["queue"]["points"] > first["charts"]["queue"]["points"]
    stats_polls = [u for u in report["requests"] if u.endswith("/stats")]
    assert len(stats_polls) >= 3, report["requests"]
    # The blocked stream is the only thing the browser may complain about.
    assert all("events" in e or "ERR_CONNECTION_REFUSED" in e for e in report["consoleErrors"]), report["consoleErrors"]
    assert len(second["cards"]) == 2


@pytest.fixture(scope="module")
def every_strategy():
    """A server per strategy (2 workers), each with some traffic, and one
    browser run over all their dashboards: {strategy: (server, report, /stats)}."""
    workers = 2
    started = []
    try:
        for strategy in harness.strategies():
            started.append(GilgameshServer(strategy, workers=workers).start())
        for server in started:
            for _ in range(4):
                assert server.get("/hello").status == 200
        reports = _drive(started, "--snapshots", 1)
        yield {s.strategy: (s, r, s.get("/stats").json()) for s, r in zip(started, reports)}
    finally:
        for server in started:
            if server.alive():
                server.stop()
            server.kill()


@pytest.mark.parametrize("strategy", harness.strategies())
def test_worker_cards_show_each_strategys_workers(every_strategy, strategy):
    server, report, stats = every_strategy[strategy]
    assert report["consoleErrors"] == [], report["consoleErrors"]
    cards = {int(c["worker"]): c for c in report["second"]["cards"]}
    assert sorted(cards) == list(range(server.workers)), cards
    assert report["second"]["identity"]["strategy"] == strategy
    gil = report["second"]["identity"]["GIL"]
    assert gil == {"subinterpreters": "one per interpreter", "threads": "one, shared",
                   "processes": "one per process", "free-threaded": "disabled"}[strategy], gil
    assert len(stats["worker_details"]) == server.workers
    for detail in stats["worker_details"]:
        fields = cards[detail["worker"]]["fields"]
        assert fields["requests"] == "{:,}".format(detail["requests"]) or detail["requests"] > 0, (fields, detail)
        if strategy == "processes":
            # Its own process: the pid, and memory with shared pages split (PSS).
            assert detail["pid"] != stats["pid"]
            assert fields.get("pid") == str(detail["pid"]), (fields, detail)
            assert re.fullmatch(r"[\d.,]+ (KiB|MiB|GiB)", fields.get("PSS", "")), fields
            assert re.fullmatch(r"[\d.,]+ (KiB|MiB|GiB)", fields.get("RSS", "")), fields
        else:
            assert "pid" not in fields and "PSS" not in fields, fields
        if strategy == "subinterpreters":
            # Each worker its own interpreter.
            assert detail["interpreter_id"] >= 1
            assert fields.get("interpreter") == "#%d" % detail["interpreter_id"], (fields, detail)
        elif strategy in ("threads", "free-threaded"):
            assert fields.get("interpreter") == "#0 (main, shared)", fields
    if strategy == "subinterpreters":
        ids = [d["interpreter_id"] for d in stats["worker_details"]]
        assert len(set(ids)) == len(ids), ids
