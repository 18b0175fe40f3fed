"""The load-test pipeline against the real server, real wrk and real Chromium.

    /usr/bin/python3 -m pytest -q tests/loadtest

Needs the built server (build/gilgamesh, or $GILGAMESH_BINARY), /usr/bin/wrk,
gunicorn, uWSGI and nginx (Debian), /usr/bin/chromium. About two minutes and a half on
2 cores.
"""

import base64
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("GILGAMESH_BINARY", os.path.join(REPO, "build", "gilgamesh"))
RUN = os.path.join(REPO, "loadtest", "run")
PROFILES = os.path.join(REPO, "loadtest", "profiles")
WRK = "/usr/bin/wrk"
CHROMIUM = "/usr/bin/chromium"
PYTHON = "/usr/bin/python3"
LATENCY_KEYS = ["min", "mean", "p50", "p90", "p99", "p99_9", "max"]
ALL_STRATEGIES = ["subinterpreters", "threads", "free-threaded", "processes"]
NGINX_LABEL = "nginx (fixed string, no Python)"


def _declared_strategies():
    """The strategies the runner must measure: GILGAMESH_STRATEGIES (a comma list), else all
    four. Declared, never discovered: they are passed to --strategies, and one that cannot
    run fails the run. The build leaves free-threaded out only when configured without
    GILGAMESH_PYTHON_FT (tests/CMakeLists.txt)."""
    raw = os.environ.get("GILGAMESH_STRATEGIES") or ",".join(ALL_STRATEGIES)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_STRATEGIES))
    if unknown:
        raise ValueError("GILGAMESH_STRATEGIES names unknown strategies: %s" % ", ".join(unknown))
    return names


DECLARED = _declared_strategies()


def _require(path):
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing or not executable" % path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _serve(*args):
    """Starts the real binary with `args` on a free loopback port; yields the port, then stops it."""
    _require(BINARY)
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([BINARY, *args, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass  # not listening yet: poll again
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail("server did not start:\n%s" % log.read().decode(errors="replace"))
        time.sleep(0.05)  # polling interval
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server():
    """A real gilgamesh (subinterpreters, 2 workers) on a free loopback port."""
    yield from _serve("--strategy", "subinterpreters", "--workers", "2")


def _wrk(profile, port, *args, seconds=1, connections=4):
    _require(WRK)
    out = subprocess.run([WRK, "-t2", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s",
                          "-s", os.path.join(PROFILES, profile + ".lua"),
                          "http://127.0.0.1:%d" % port, "--"] + list(args),
                         capture_output=True, text=True, timeout=seconds + 30)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert lines, "profile %s printed no JSON:\n%s\n%s" % (profile, out.stdout, out.stderr)
    assert len(lines) == 1, "profile %s printed %d JSON objects" % (profile, len(lines))
    return json.loads(lines[0])


def _check_shape(result, profile):
    assert result["profile"] == profile
    assert result["threads"] == 2
    assert 0.5 < result["duration_s"] < 5
    for key in ("requests", "goodput", "bytes"):
        assert isinstance(result[key], int) and result[key] >= 0, key
    assert set(result["errors"]) == {"connect", "read", "write", "timeout", "status_over_399"}
    assert all(isinstance(v, int) for v in result["errors"].values())
    assert all(re.fullmatch(r"[1-5][0-9][0-9]", code) for code in result["responses_by_status"])
    assert set(result["latency_ms"]) == set(LATENCY_KEYS) | {"stdev"}


@pytest.mark.parametrize("profile", ["hello", "fib", "mixed", "json", "sleep"])
def test_profile_prints_every_figure(server, profile):
    r = _wrk(profile, server)
    _check_shape(r, profile)
    # Every response was a 2xx, and the status counts come from both threads:
    # their sum is every completed request, not one thread's share.
    assert r["goodput"] > 0
    assert r["responses_by_status"].keys() == {"200"}
    assert sum(r["responses_by_status"].values()) == r["requests"] == r["goodput"]
    assert r["goodput_per_s"] == pytest.approx(r["goodput"] / r["duration_s"], rel=1e-6)
    assert r["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}
    lat = [r["latency_ms"][k] for k in LATENCY_KEYS if k != "mean"]
    assert all(isinstance(v, (int, float)) and v > 0 for v in lat)
    assert lat == sorted(lat), "min <= p50 <= p90 <= p99 <= p99.9 <= max: %s" % r["latency_ms"]
    assert r["latency_ms"]["min"] <= r["latency_ms"]["mean"] <= r["latency_ms"]["max"]
    assert sum(r["sent_by_route"].values()) >= r["requests"]


def test_mixed_profile_sends_the_weighted_mix(server):
    r = _wrk("mixed", server, seconds=2)
    sent = r["sent_by_route"]
    assert set(sent) == {"/hello", "/fib", "/primes", "/mandelbrot", "/nbody"}
    total = sum(sent.values())
    weights = {"/hello": 50, "/fib": 20, "/primes": 15, "/mandelbrot": 10, "/nbody": 5}
    for route, weight in weights.items():
        assert sent[route] / total == pytest.approx(weight / 100, abs=0.05), sent


def test_goodput_excludes_error_statuses(server):
    r = _wrk("fib", server, "n=99")  # out of range: the demo answers 400
    _check_shape(r, "fib")
    assert r["requests"] > 0
    assert r["goodput"] == 0 and r["goodput_per_s"] == 0
    assert r["responses_by_status"] == {"400": r["requests"]}
    assert r["errors"]["status_over_399"] == r["requests"]


class _RawServer:
    """A loopback TCP server with a misbehaviour, to make wrk count socket errors."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            self.handle(conn)
        except OSError:
            pass  # wrk hung up first: the misbehaviour is the point
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def test_read_and_write_errors_are_reported_by_kind():
    def hang_up(conn):  # read the request, close without answering
        conn.recv(65536)

    server = _RawServer(hang_up)
    try:
        r = _wrk("hello", server.port)
    finally:
        server.close()
    _check_shape(r, "hello")
    assert r["requests"] == 0 and r["goodput"] == 0
    assert r["errors"]["read"] + r["errors"]["write"] > 0
    assert all(v is None for v in r["latency_ms"].values())


def test_slow_responses_are_reported_as_timeouts():
    def slow(conn):  # answer every request after 1.2 s
        while conn.recv(65536):
            time.sleep(1.2)  # the misbehaviour: slower than wrk's --timeout
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = _RawServer(slow)
    try:
        out = subprocess.run([WRK, "-t2", "-c4", "-d3s", "--timeout", "1s",
                              "-s", os.path.join(PROFILES, "hello.lua"),
                              "http://127.0.0.1:%d" % server.port],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    r = json.loads(out.stdout.splitlines()[-1])
    _check_shape(r, "hello")
    assert r["errors"]["timeout"] == r["requests"] > 0
    # slower than --timeout: out of the latency figures, which are then empty
    assert all(v is None for v in r["latency_ms"].values())


def _png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _chromium(*args):
    _require(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--user-data-dir=" + profile] + list(args),
            capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`make bench-quick`, with the results in a temporary folder (and nginx's fixed
    string as the reference on hello, skipped on fib)."""
    _require(BINARY)
    results_dir = tmp_path_factory.mktemp("results")
    started = time.monotonic()
    out = subprocess.run([PYTHON, RUN, "--quick", "--peers", "gunicorn,uwsgi,nginx",
                          "--strategies", ",".join(DECLARED), "--results-dir", str(results_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, "loadtest/run --quick failed (%d):\n%s\n%s" % (
        out.returncode, out.stdout[-4000:], out.stderr[-4000:])
    match = re.search(r"^report: (\S+report\.html)$", out.stdout, re.M)
    assert match, "the run did not say where the report is:\n" + out.stdout
    folder = os.path.dirname(match.group(1))
    assert os.path.dirname(folder) == str(results_dir)
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    return {"folder": folder, "results": results, "stdout": out.stdout,
            "seconds": time.monotonic() - started}


def test_quick_matrix_has_goodput_in_every_cell(quick_run):
    results = quick_run["results"]
    supported = results["strategies"]["supported"]
    assert supported == DECLARED and results["strategies"]["unsupported"] == {}, results["strategies"]
    expected = {(s, w) for s in supported + ["gunicorn", "uwsgi"] for w in ("hello", "fib")}
    expected.add(("nginx", "hello"))
    cells = {(c["server"], c["workload"]): c for c in results["cells"]}
    skipped = {key for key, cell in cells.items() if cell.get("skipped")}
    assert skipped == {("nginx", "fib")}  # nginx has no fib handler: not run, not failed
    assert set(cells) - skipped == expected
    for key in expected:
        cell = cells[key]
        assert not cell.get("error"), (key, cell["error"])
        assert cell["wrk"]["goodput"] > 0 and cell["wrk"]["goodput_per_s"] > 0, key
        errors = cell["wrk"]["errors"]
        assert errors["connect"] == errors["read"] == errors["write"] == errors["timeout"] == 0, key
        assert cell["wrk"]["responses_by_status"].keys() == {"200"}, key
        assert cell["startup"]["ready_s"] > 0, key
        assert cell["shutdown"]["leftover_pids"] == [], key
        assert cell["load"]["server_cpu_cores"] > 0, key
        assert cell["load"]["total_pss_kb_peak"] > 0 and cell["load"]["server_rss_kb_peak"] > 0, key
    for strategy in supported:
        fib = cells[(strategy, "fib")]
        # A plausibility bound, not a speed target: --quick measures the single-thread rate in
        # a fraction of a second, and on a busy machine a low reading lifts the ratio past 1.
        # A unit slip (ms for s, per-worker for total) lands far outside it.
        assert 0 < fib["efficiency"] < 3, (strategy, fib["efficiency"])
        assert fib["ideal_per_s"] == pytest.approx(
            fib["cores"] * results["rates"][fib["build"]]["targets"]["/fib?n=25"]["per_s"])
        # What that many loops gave side by side, measured as that many processes at once.
        if fib["cores"] > 1:
            together = results["rates_side_by_side"][fib["build"]][str(fib["cores"])]["targets"]["/fib?n=25"]
            assert len(together["per_copy"]) == fib["cores"] and min(together["per_copy"]) > 0, together
            assert fib["side_by_side_per_s"] == pytest.approx(together["per_s"])
            assert together["per_s"] == pytest.approx(sum(together["per_copy"]))
            assert fib["efficiency_side_by_side"] == pytest.approx(fib["wrk"]["goodput_per_s"] / together["per_s"])
    # The single-thread rates once more after the cells (the machine's speed may have moved).
    for build, before in results["rates"].items():
        assert results["rates_after"][build]["targets"]["/fib?n=25"]["per_s"] > 0, build
    total = len(expected) + len(skipped)
    assert "[%d/%d" % (total, total) in quick_run["stdout"]  # progress
    # --quick is quick by its settings (2 s per cell), not by a wall-clock figure that a busy
    # machine can miss; the wall bound below only catches a hang.
    for cell in results["cells"]:
        if "wrk_command" in cell:
            assert " -d2s " in cell["wrk_command"], cell["wrk_command"]
    assert quick_run["seconds"] < 400


def test_quick_run_left_no_process_behind(quick_run):
    # (nginx rewrites its command line: test_nginx_is_the_hello_reference_... looks for its prefix)
    commands = [c["startup"]["command"] for c in quick_run["results"]["cells"] if not c.get("skipped")]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            assert argv not in commands, "still running: %s" % argv


def test_report_md_has_tables_and_the_closed_loop_note(quick_run):
    with open(os.path.join(quick_run["folder"], "report.md")) as f:
        md = f.read()
    for heading in ("## Headline: goodput", "## Latency (ms)", "## Efficiency against the ideal",
                    "## CPU, memory, start-up", "## Throughput and errors"):
        assert heading in md
    assert "| side by side/s | of side by side |" in md and "| after the cells |" in md
    assert "coordinated omission" in md and "shares the" in md
    # The single-thread rates say how the server's CPython was compiled: with the bundled
    # builds, scripts/build-python.sh's stamp or its configure arguments always tell.
    rate = quick_run["results"]["rates"]["default"]
    if os.path.exists(os.path.join(os.path.dirname(os.path.dirname(rate["python"])), "gilgamesh-patches")):
        assert rate["optimization"] in ("PGO", "PGO+LTO", "plain"), rate
        assert "%s (GIL on, %s)" % (rate["python_version"], rate["optimization"]) in md
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md):
        assert os.path.getsize(os.path.join(quick_run["folder"], png)) > 1000


def test_report_html_is_self_contained_with_real_charts(quick_run):
    with open(os.path.join(quick_run["folder"], "report.html")) as f:
        page = f.read()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "the page loads something from outside"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 5  # throughput, latency, memory, efficiency, peers
    for data in images:
        width, height = _png_size(base64.b64decode(data))
        assert width >= 300 and height >= 200


def test_without_matplotlib_the_report_has_every_table_and_says_so(quick_run, tmp_path):
    """A machine without matplotlib (the runner needs it only for the charts) still gets
    report.md and report.html, with the same tables, and a line saying how to add them."""
    shutil.copy(os.path.join(quick_run["folder"], "results.json"), tmp_path)
    out = subprocess.run([PYTHON, "-c", "import sys; sys.modules['matplotlib'] = None\n"
                          "from bench import page, report\npage.rerender(report.write, sys.argv[1])",
                          str(tmp_path)], cwd=os.path.join(REPO, "loadtest"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING: No charts" in out.stdout
    assert not list(tmp_path.glob("*.png"))
    with open(os.path.join(quick_run["folder"], "report.md")) as f:
        full = f.read()
    with open(tmp_path / "report.md") as f:
        md = f.read()
    assert "No charts: " in md and "python3 -m bench.report %s" % tmp_path in md
    assert re.findall(r"^## .*", md, re.M) == re.findall(r"^## .*", full, re.M)
    assert md.count("\n|") == full.count("\n|")  # every table row
    with open(tmp_path / "report.html") as f:
        html_page = f.read()
    assert 'id="charts-missing"' in html_page and "data:image/png" not in html_page


def test_report_html_renders_in_chromium(quick_run):
    page = os.path.join(quick_run["folder"], "report.html")
    out = _chromium("--window-size=1280,2000", "--virtual-time-budget=5000", "--dump-dom",
                    "file://" + page)
    assert out.returncode == 0, out.stderr[-2000:]
    check = re.search(r'id="render-check" data-charts="(\d+)" data-visible="(\d+)"', out.stdout)
    assert check, "the page's render check did not run:\n" + out.stdout[:2000]
    charts, visible = int(check.group(1)), int(check.group(2))
    assert charts >= 5 and visible == charts
    rendered = re.findall(r'data-rendered="(\d+)x(\d+)"', out.stdout)
    assert len(rendered) == charts
    assert all(int(w) >= 300 and int(h) >= 200 for w, h in rendered), rendered


def _cmdlines():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    yield f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # exited meanwhile


def test_nginx_is_the_hello_reference_and_skipped_elsewhere(quick_run):
    results = quick_run["results"]
    nginx = {c["workload"]: c for c in results["cells"] if c["server"] == "nginx"}
    assert set(nginx) == {"hello", "fib"}
    hello, fib = nginx["hello"], nginx["fib"]
    assert hello["label"] == NGINX_LABEL and not hello.get("skipped") and not hello.get("error")
    assert hello["wrk"]["goodput"] > 0 and hello["wrk"]["responses_by_status"].keys() == {"200"}
    # as many nginx worker processes as the cell's workers, in a prefix of its own, gone after
    assert hello["startup"]["worker_processes"] == hello["workers"]
    assert hello["load"]["worker_processes"] == hello["workers"], hello["load"]
    prefix = hello["startup"]["prefix"]
    assert hello["startup"]["command"][:3] == ["/usr/sbin/nginx", "-p", prefix]
    assert not os.path.exists(prefix), "the instance's prefix was left behind"
    assert not [c for c in _cmdlines() if prefix in c], "an nginx of the run is still running"
    assert hello["shutdown"]["exit_code"] == 0
    # fib: recorded as skipped, with the reason, and not as an error
    assert "hello only" in fib["skipped"] and "'fib'" in fib["skipped"], fib["skipped"]
    assert "wrk" not in fib and "error" not in fib and "startup" not in fib
    assert "nginx" in quick_run["stdout"] and "skipped: nginx is a reference" in quick_run["stdout"]
    assert results["peers"]["nginx"]["version"].startswith("nginx/"), results["peers"]

    # The report: a table of hello against nginx, ratios that are goodput / nginx's goodput.
    with open(os.path.join(quick_run["folder"], "report.md")) as f:
        md = f.read()
    section = md.split("## Headline: hello against %s" % NGINX_LABEL, 1)
    assert len(section) == 2, "no table of hello against nginx in report.md"
    table = [l for l in section[1].split("\n## ", 1)[0].splitlines() if l.startswith("|")]
    header = [h.strip() for h in table[0].strip("|").split("|")]
    assert header[:2] == ["workers", NGINX_LABEL] and "subinterpreters" in header, header
    [row] = [[v.strip() for v in l.strip("|").split("|")] for l in table[2:]]
    assert int(row[0]) == hello["workers"]
    ref = hello["wrk"]["goodput_per_s"]
    assert float(row[1]) == pytest.approx(ref, abs=0.5)
    for name, value in zip(header[2:], row[2:]):
        server = name.split(" (py")[0]  # "gunicorn (py3.11)": the server's name
        cell = next(c for c in results["cells"] if c["server"] == server and c["workload"] == "hello")
        ratio = re.fullmatch(r"\d+ \((\d+\.\d\d)×\)", value)
        assert ratio, (name, value)
        assert float(ratio.group(1)) == pytest.approx(cell["wrk"]["goodput_per_s"] / ref, abs=0.006)
    # nginx only where it has figures: a hello row, never a fib row
    assert re.search(r"^\| %s \| hello \|" % re.escape(NGINX_LABEL), md, re.M)
    assert not re.search(r"^\| %s \| fib \|" % re.escape(NGINX_LABEL), md, re.M)
    assert "cells with errors" not in quick_run["stdout"]


def test_nginx_instance_serves_the_fixed_string_and_leaves_nothing(tmp_path):
    """One instance as the runner starts it: /hello and /healthz, nothing else, its
    workers, SIGTERM, the prefix removed."""
    sys.path.insert(0, os.path.join(REPO, "loadtest"))
    try:
        from bench import main as runner, procs
    finally:
        sys.path.pop(0)
    run = runner.Run(runner.parse_args(["--peers", "nginx", "--results-dir", str(tmp_path)]), str(tmp_path))
    run.check_peers()
    proc, port, ready = run.start_server("peer", "nginx", 3, "nginx-probe")
    try:
        assert procs.http_get(port, "/hello") == (200, b"hello")
        assert procs.http_get(port, "/healthz") == (200, b'{"status":"ok"}')
        assert procs.http_get(port, "/fib?n=25")[0] == 404
        assert ready["worker_processes"] == 3 and len(procs.descendants(proc.pid)) == 3
        assert os.path.isfile(os.path.join(ready["prefix"], "nginx.pid"))
    finally:
        seconds, code, leftovers = run.owned.stop(proc)
    assert code == 0 and leftovers == [] and seconds < 5
    assert not os.path.exists(ready["prefix"])
    with open(tmp_path / "logs" / "nginx-probe.log") as f:
        log = f.read()
    assert "worker_processes 3;" in log and "listen 127.0.0.1:%d;" % port in log
    assert "[emerg]" not in log and "[alert]" not in log, log


def test_missing_nginx_says_how_to_get_it(tmp_path):
    out = subprocess.run([PYTHON, RUN, "--peers", "nginx", "--nginx", str(tmp_path / "no-nginx"),
                          "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "install Debian's nginx" in out.stderr and "make deps" in out.stderr, out.stderr
    assert os.listdir(tmp_path) == [], "the run started anyway"


APPS = os.path.join(REPO, "tests", "apps")


@pytest.fixture(scope="module")
def app_run(tmp_path_factory):
    """The runner on a small WSGI app of the user's (tests/apps/wsgi_bench.py) with
    requests of its own, quick, with both peers."""
    _require(BINARY)
    results_dir = tmp_path_factory.mktemp("app-results")
    body = results_dir / "body.json"
    body.write_text('{"payload": "%s"}' % ("x" * 2000))
    out = subprocess.run([PYTHON, RUN, "--quick", "--wsgi", "wsgi_bench:app", "--pythonpath", APPS,
                          "--request", "GET /work?n=17 3", "--request", "POST /echo @%s" % body,
                          "--peers", "gunicorn,uwsgi", "--strategies", ",".join(DECLARED),
                          "--results-dir", str(results_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, "loadtest/run --wsgi failed (%d):\n%s\n%s" % (
        out.returncode, out.stdout[-4000:], out.stderr[-4000:])
    folder = os.path.dirname(re.search(r"^report: (\S+report\.html)$", out.stdout, re.M).group(1))
    with open(os.path.join(folder, "results.json")) as f:
        return {"folder": folder, "results": json.load(f), "stdout": out.stdout}


def test_own_app_has_goodput_and_efficiency_on_every_strategy_and_peer(app_run):
    results = app_run["results"]
    supported = results["strategies"]["supported"]
    assert supported == DECLARED and results["strategies"]["unsupported"] == {}, results["strategies"]
    servers = supported + ["gunicorn", "uwsgi"]
    cells = {c["server"]: c for c in results["cells"]}
    assert set(cells) == set(servers), sorted(cells)
    for server, cell in cells.items():
        assert cell["workload"] == "app" and not cell.get("error"), (server, cell.get("error"))
        assert cell["wrk"]["goodput"] > 0 and cell["wrk"]["responses_by_status"].keys() == {"200"}, server
        sent = cell["wrk"]["sent_by_route"]
        assert set(sent) == {"GET /work?n=17", "POST /echo @body.json"}, sent
        assert sent["GET /work?n=17"] > sent["POST /echo @body.json"], sent  # weight 3 to 1
        assert cell["efficiency"] is not None and 0 < cell["efficiency"] < 3, (server, cell["efficiency"])
        rate = results["rates"][cell["build"]]
        assert set(rate["targets"]) == {"GET /work?n=17", "POST /echo @body.json"}, rate
    assert results["meta"]["options"]["wsgi"] == "wsgi_bench:app"
    assert results["meta"]["options"]["pythonpath"] == [APPS]
    with open(os.path.join(app_run["folder"], "report.md")) as f:
        md = f.read()
    assert "GET /work?n=17 (weight 3)" in md and "wsgi_bench:app" in md


def test_requests_that_are_not_2xx_fail_the_cell_and_the_run(tmp_path):
    _require(BINARY)
    out = subprocess.run([PYTHON, RUN, "--quick", "--wsgi", "wsgi_bench:app", "--pythonpath", APPS,
                          "--request", "GET /misspelt", "--strategies", "threads",
                          "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=200)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    folder = os.path.dirname(re.search(r"^report: (\S+report\.html)$", out.stdout, re.M).group(1))
    with open(os.path.join(folder, "results.json")) as f:
        [cell] = json.load(f)["cells"]
    assert re.fullmatch(r"responses other than 2xx: 404 x \d+", cell["error"]), cell["error"]
    assert "404 x" in out.stdout
    with open(os.path.join(folder, "report.html")) as f:
        page = f.read()
    assert re.search(r'<td class="failed">FAILED: 404 x \d+</td>', page), "no red cell in the report"


def test_a_strategy_asked_for_that_cannot_run_fails_the_run(tmp_path):
    # Named in --strategies, a strategy whose server cannot start stops the run with the
    # server's reason; it is not quietly left out of the matrix.
    _require(BINARY)
    out = subprocess.run([PYTHON, RUN, "--quick", "--app", "no_such_module_for_the_probe",
                          "--strategies", "threads", "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "strategy threads could not start" in out.stderr, out.stderr[-3000:]
    assert "no_such_module_for_the_probe" in out.stderr, out.stderr[-3000:]
    assert "cells:" not in out.stdout, out.stdout[-3000:]  # nothing was measured


def test_app_options_are_checked(tmp_path):
    for args, mentions in ((["--wsgi", "wsgi_bench:app"], "needs at least one --request"),
                           (["--wsgi", "a:b", "--app", "x", "--request", "GET /"], "exclusive"),
                           (["--app", "x", "--request", "GET nowhere"], "must start with '/'"),
                           (["--app", "x", "--request", "GET / @/no/such/file"], "no body file"),
                           (["--app", "x", "--request", "GET / 0"], "weight"),
                           (["--app", "flaskapp:app", "--request", "GET /"], "use --wsgi flaskapp:app")):
        out = subprocess.run([PYTHON, RUN, "--results-dir", str(tmp_path)] + args, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and mentions in out.stderr, (args, out.stderr)


def test_ctrl_c_stops_everything(tmp_path):
    _require(BINARY)
    proc = subprocess.Popen([PYTHON, RUN, "--strategies", "subinterpreters", "--workloads", "fib",
                             "--workers", "2", "--duration", "20", "--warmup", "0", "--rate-seconds",
                             "0.1", "--rate-repeat", "1", "--results-dir", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # until the cell is under load: wrk and the server both running (the runner also
        # starts a short-lived `wrk --version` before any server)
        deadline = time.monotonic() + 60
        children, names = [], []
        while time.monotonic() < deadline and proc.poll() is None:
            children = _descendants(proc.pid)
            names = []
            for pid in children:
                try:
                    with open("/proc/%d/comm" % pid) as f:
                        names.append(f.read().strip())
                except OSError:
                    pass  # exited meanwhile
            if "wrk" in names and "gilgamesh" in names:
                break
            time.sleep(0.1)  # polling interval
        assert "wrk" in names and "gilgamesh" in names, names
        time.sleep(1)  # a second under load, so the interrupt lands mid-measurement
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval
    assert not [p for p in children if _alive(p)], "left behind: %s" % children
    [folder] = [d for d in os.listdir(tmp_path) if d != "latest"]
    with open(os.path.join(tmp_path, folder, "results.json")) as f:
        assert json.load(f)["meta"]["interrupted"] is True


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_soak_reports_memory_against_time_and_recycles(tmp_path):
    """`loadtest/run --soak`: recycling servers under load, PSS sampled, growth stated."""
    _require(BINARY)
    out = subprocess.run([PYTHON, RUN, "--soak", "8", "--strategies", "subinterpreters,processes",
                          "--soak-max-requests", "10", "--soak-jitter", "0", "--soak-baseline", "2",
                          "--connections", "4", "--threads", "1", "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, "loadtest/run --soak failed (%d):\n%s\n%s" % (
        out.returncode, out.stdout[-4000:], out.stderr[-4000:])
    match = re.search(r"^report: (\S+-soak/report\.html)$", out.stdout, re.M)
    assert match, out.stdout
    folder = os.path.dirname(match.group(1))
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    runs = {r["strategy"]: r for r in results["soak"]}
    assert set(runs) == {"subinterpreters", "processes"}
    for name, r in runs.items():
        assert not r.get("error"), (name, r["error"])
        assert r["shutdown"]["leftover_pids"] == [], name
        assert any("--max-requests" == a for a in r["startup"]["command"]), r["startup"]["command"]
        an = r["analysis"]
        assert an["seconds"] > 5 and an["recycles"] > 5, (name, an)
        assert an["pss_baseline_mib"] > 5 and an["pss_end_mib"] > 5, (name, an)
        assert isinstance(an["growth_kib_per_recycle"], float), (name, an)
        assert isinstance(an["growth_mib_per_hour"], float), (name, an)
        assert len(r["samples"]) >= 6 and all("recycles" in s for s in r["samples"]), name
    with open(os.path.join(folder, "report.md")) as f:
        md = f.read()
    assert "## Memory while recycling" in md and "growth KiB/recycle" in md and "MiB/hour" in md
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert pngs == ["soak-memory.png", "soak-recycles.png"]
    for png in pngs:
        with open(os.path.join(folder, png), "rb") as f:
            width, height = _png_size(f.read())
        assert width >= 600 and height >= 300
    with open(match.group(1)) as f:
        page = f.read()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2


# -- the verdict (issue 25): which strategy and worker count, and why ----------------

def _bench_modules():
    """bench.check, bench.main, bench.report, bench.survey and bench.procs."""
    sys.path.insert(0, os.path.join(REPO, "loadtest"))
    try:
        from bench import check, main as runner, procs, report, survey
    finally:
        sys.path.pop(0)
    return check, runner, report, survey, procs


def _verdict_section(md):
    """The verdict: report.md's first section, up to the run's context."""
    match = re.match(r"# gilgamesh load test\n\n## Verdict\n\n\*\*(.+?)\*\*\n\n(.*?)\n\n- Command: ", md, re.S)
    assert match, "report.md does not open with a verdict:\n" + md[:1500]
    return match.group(1), match.group(2)


def _rate_text(value):
    return "%.1f" % value if value < 100 else "{:,.0f}".format(value)


def test_report_opens_with_a_verdict_from_the_run(quick_run):
    results = quick_run["results"]
    with open(os.path.join(quick_run["folder"], "report.md")) as f:
        headline, points = _verdict_section(f.read())
    pick = re.fullmatch(r"Serve this app with `([a-z-]+)`, (\d+) workers?\.", headline)
    assert pick, headline
    strategy, workers = pick.group(1), int(pick.group(2))
    assert strategy in DECLARED and workers in results["meta"]["options"]["workers"]

    # The pick has the most goodput over hello and fib (geometric mean of each workload's
    # ratio to the best strategy there), or is within 5 % of it and uses less memory.
    cells = {(c["server"], c["workload"], c["workers"]): c for c in results["cells"]}
    best = {w: max(cells[(s, w, workers)]["wrk"]["goodput_per_s"] for s in DECLARED) for w in ("hello", "fib")}

    def score(s):
        ratios = [cells[(s, w, workers)]["wrk"]["goodput_per_s"] / best[w] for w in best]
        return (ratios[0] * ratios[1]) ** 0.5

    top = max(DECLARED, key=score)
    assert score(strategy) >= 0.95 * score(top), (strategy, {s: score(s) for s in DECLARED})

    # Why: the pick's own figures of this run.
    lines = points.splitlines()
    why = lines[0]
    assert re.match(r"- Why: (the most goodput of the gilgamesh strategies in this run|the least memory of "
                    r"the strategies within one run's noise of the most goodput \(.*?\)): ", why), why
    for w in ("hello", "fib"):
        assert "`%s` %s/s" % (w, _rate_text(cells[(strategy, w, workers)]["wrk"]["goodput_per_s"])) in why, why
    assert "the only worker count measured" in why  # --quick measures one count
    fib = cells[(strategy, "fib", workers)]
    if fib["cores"] > 1:  # against the ideal, and against what that many loops gave side by side
        assert "%.2f of ideal, %.2f of %d loops side by side" % (
            fib["efficiency"], fib["efficiency_side_by_side"], fib["cores"]) in why, why
    # The runner-up and what it costs.
    if len(DECLARED) > 1:
        runner_up = re.match(r"- Runner-up: `([a-z-]+)`, \d+ workers?: (.*)", lines[1])
        assert runner_up and runner_up.group(1) in DECLARED and runner_up.group(1) != strategy, lines[1]
        assert "goodput" in runner_up.group(2) and "MiB" in runner_up.group(2), lines[1]
    # What the check found: its answer, or that this binary has none.
    check = results["check"]
    assert check["auto"] is False  # --strategies named: all of them measured
    if check["available"]:
        assert any(l.startswith("- `gilgamesh check`: ") for l in lines), points
    else:
        assert check["exit_code"] == 2, check
        assert any("`gilgamesh check` unavailable" in l and "every strategy was assumed to load the app" in l
                   for l in lines), points
    # fib is CPU-bound (its handler calls spend their time on CPU): no "not CPU-bound" sentence.
    assert "`fib` is not CPU-bound" not in points
    rate = results["rates"]["default"]["targets"]["/fib?n=25"]
    assert 0.25 < rate["cpu_ms_per_call"] / rate["ms_per_call"] < 1.5, rate
    # The peers, as a share of the pick's goodput; nginx (a reference) is not one of them.
    peers = [l for l in lines if l.startswith("- Peers at %d workers, as a share of `%s`'s goodput: "
                                              % (workers, strategy))]
    assert len(peers) == 1 and "gunicorn (py" in peers[0] and "uwsgi (py" in peers[0], points
    assert "nginx" not in peers[0]
    said = re.search(r"gunicorn \(py3\.\d+\) ([0-9.]+)× \(`hello`; (\d+) µs of server CPU per response "
                     r"against (\d+)\)", peers[0])
    assert said, peers[0]
    theirs, ours = cells[("gunicorn", "hello", workers)], cells[(strategy, "hello", workers)]
    assert float(said.group(1)) == pytest.approx(theirs["wrk"]["goodput_per_s"] / ours["wrk"]["goodput_per_s"],
                                                 abs=0.006)
    # the CPU each response cost the server: its cores over the responses wrk counted
    for figure, cell in ((said.group(2), theirs), (said.group(3), ours)):
        per_response = cell["load"]["server_cpu_cores"] * 1e6 / cell["wrk"]["requests_per_s"]
        assert cell["server_cpu_us_per_request"] == pytest.approx(per_response)
        assert int(figure) == round(per_response), (figure, per_response)

    # report.html opens with the same verdict, before the run's context and the tables.
    with open(os.path.join(quick_run["folder"], "report.html")) as f:
        page = f.read()
    body = page.split("<body>", 1)[1]
    assert body.index('<div class="verdict"') < body.index("<li>Command:") < body.index("<table>")
    assert ("Serve this app with <code>%s</code>, %d worker" % (strategy, workers)) in body.split("</div>", 1)[0]


@pytest.fixture(scope="module")
def sleep_run(tmp_path_factory):
    """A small run on the sleep workload (the handler waits 10 ms), with gunicorn-gthread:
    one strategy, one worker count, --quick (seconds)."""
    _require(BINARY)
    results_dir = tmp_path_factory.mktemp("sleep-results")
    out = subprocess.run([PYTHON, RUN, "--quick", "--workloads", "sleep", "--strategies", DECLARED[0],
                          "--peers", "gunicorn-gthread", "--results-dir", str(results_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, "loadtest/run (sleep) failed (%d):\n%s\n%s" % (
        out.returncode, out.stdout[-4000:], out.stderr[-4000:])
    folder = os.path.dirname(re.search(r"^report: (\S+report\.html)$", out.stdout, re.M).group(1))
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(folder, "report.md")) as f:
        return {"folder": folder, "results": results, "md": f.read()}


def test_verdict_says_a_waiting_workload_is_not_cpu_bound(sleep_run):
    _headline, points = _verdict_section(sleep_run["md"])
    cells = {c["server"]: c for c in sleep_run["results"]["cells"]}
    cell = cells[DECLARED[0]]
    match = re.search(r"^- `sleep` is not CPU-bound: the server used ([0-9.]+) ms of CPU per request while "
                      r"each request held a worker for about ([0-9.]+) ms .*\"Ideal\" \(cores × single-thread "
                      r"rate\) does not apply to it", points, re.M)
    assert match, points
    cpu_ms, held_ms = float(match.group(1)), float(match.group(2))
    goodput = cell["wrk"]["goodput_per_s"]
    assert cpu_ms == pytest.approx(1000 * cell["load"]["server_cpu_cores"] / goodput, abs=0.01)
    connections = sleep_run["results"]["meta"]["options"]["connections"]
    assert held_ms == pytest.approx(1000 * min(connections, cell["workers"]) / goodput, abs=0.1)
    assert held_ms >= 10 and cpu_ms < held_ms / 4  # the handler sleeps 10 ms; it is not CPU time


def test_verdict_names_a_peer_with_another_concurrency_model(sleep_run):
    _headline, points = _verdict_section(sleep_run["md"])
    cells = {c["server"]: c for c in sleep_run["results"]["cells"]}
    gthread, ours = cells["gunicorn-gthread"], cells[DECLARED[0]]
    assert gthread["threads_per_worker"] == 4 and ours["threads_per_worker"] == 1
    n = ours["workers"]
    line = [l for l in points.splitlines() if l.startswith("- gunicorn-gthread (py")]
    assert len(line) == 1, points
    assert ("runs 4 threads in each worker process: %d requests at once at %d workers, where the "
            "gilgamesh cells hold %d (one request per worker): a different concurrency model" % (4 * n, n, n)
            ) in line[0], line[0]
    ratio = re.search(r"It reached ([0-9.]+)× `%s` on `sleep`" % DECLARED[0], line[0])
    assert ratio, line[0]
    assert float(ratio.group(1)) == pytest.approx(
        gthread["wrk"]["goodput_per_s"] / ours["wrk"]["goodput_per_s"], abs=0.006)
    assert "`sleep`, which waits" in line[0]


CHECK_DOCUMENT = {
    "app": "shop:app", "kind": "wsgi",
    "rows": [
        {"strategy": "subinterpreters", "build": "default", "loads": False,
         "problems": [{"module": "lxml.etree", "why": "single-phase init"}],
         "import_seconds": 0.12, "worker_memory_bytes": 1234567, "rate_per_second": None, "shared_state": []},
        {"strategy": "threads", "build": "default", "loads": True, "problems": []},
        {"strategy": "processes", "build": "default", "loads": True, "problems": []},
        {"strategy": "processes", "build": "free-threaded", "loads": False,
         "problems": [{"module": "regex._regex", "why": "GIL re-enabled"}]},
        {"strategy": "free-threaded", "build": "free-threaded", "loads": False,
         "problems": [{"module": "regex._regex", "why": "GIL re-enabled"}]},
    ],
    "recommendation": {"strategy": "processes", "why": "lxml.etree blocks subinterpreters"},
}


def test_strategies_auto_leaves_out_what_the_check_says_cannot_load(quick_run):
    check, runner, report, _survey, _procs = _bench_modules()
    assert runner.parse_args([]).strategies is None  # auto is the default
    assert runner.parse_args(["--strategies", "auto"]).strategies is None
    assert runner.parse_args(["--strategies", "threads"]).strategies == ["threads"]

    found = check.interpret({}, 0, json.dumps(CHECK_DOCUMENT), "")
    assert found["available"] and found["document"] == CHECK_DOCUMENT
    build = {"free-threaded": "free-threaded"}
    kept, excluded = check.plan(found, ALL_STRATEGIES, lambda s: build.get(s, "default"))
    # processes runs the default build, where it loads: its free-threaded row does not count
    assert kept == ["threads", "processes"]
    assert excluded == {"subinterpreters": "lxml.etree: single-phase init",
                        "free-threaded": "regex._regex: GIL re-enabled"}
    # a strategy the check has no row for is kept: the start-up probe decides
    assert check.plan(found, ["threads", "no-such"], lambda s: "default") == (["threads", "no-such"], {})

    # The report names them and says why, in the verdict and under Problems.
    results = json.loads(json.dumps(quick_run["results"]))
    results["check"] = dict(found, auto=True, excluded=excluded)
    page = report.report_page(results)
    assert ("Strategy `subinterpreters` left out: `gilgamesh check` says it cannot load the app "
            "(lxml.etree: single-phase init).") in page.problems
    said = [p for p in page.verdict["points"] if p.startswith("`gilgamesh check`: ")]
    assert len(said) == 1, page.verdict["points"]
    assert ("`subinterpreters` cannot load the app (lxml.etree: single-phase init), left out of this run"
            in said[0]) and ("`free-threaded` cannot load the app (regex._regex: GIL re-enabled), left out "
                             "of this run" in said[0]) and "It recommends `processes`" in said[0], said[0]

    # A binary without `check` (a usage error, exit 2): every strategy stays, and the report says so.
    old = check.interpret({}, 2, "", "gilgamesh: The following argument was not expected: check (see --help)")
    assert not old["available"] and "no `check` command" in old["error"], old
    assert check.plan(old, ALL_STRATEGIES, lambda s: "default") == (ALL_STRATEGIES, {})
    assert "every strategy was assumed to load the app" in check.summary(old)
    broken = check.interpret({}, 1, "not json", "boom")
    assert not broken["available"] and "boom" in broken["error"]


def test_strategies_auto_runs_without_the_strategies_that_cannot_load_the_app(tmp_path):
    """The default, --strategies auto, on an app importing a single-phase extension: the
    check refuses it under subinterpreters, which is left out (not a failed cell), named
    in the report with the module and why; the other strategies are measured."""
    _require(BINARY)
    out = subprocess.run([PYTHON, RUN, "--quick", "--workers", "1", "--app", "single_phase_ext",
                          "--pythonpath", APPS, "--request", "GET /extension", "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder = os.path.dirname(re.search(r"^report: (\S+report\.html)$", out.stdout, re.M).group(1))
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    check = results["check"]
    measured = {c["server"] for c in results["cells"]}
    assert not [c["id"] for c in results["cells"] if c.get("error")]
    assert measured == set(results["strategies"]["supported"]) and "subinterpreters" not in measured
    assert measured >= set(DECLARED) - {"subinterpreters", "free-threaded"}, measured
    with open(os.path.join(folder, "report.md")) as f:
        md = f.read()
    if not check["available"]:  # a binary without `check`: the start-up probe leaves it out instead
        assert "subinterpreters" in results["strategies"]["unsupported"], results["strategies"]
        assert "every strategy was assumed to load the app" in md
        return
    assert check["auto"] is True
    why = check["excluded"]["subinterpreters"]
    assert "single-phase" in why, why
    module = why.split(":")[0]
    assert module and module in md
    assert "subinterpreters" not in results["strategies"]["unsupported"]  # never started
    assert "- Strategy `subinterpreters` left out: `gilgamesh check` says it cannot load the app (%s)." % why in md
    assert "`subinterpreters` cannot load the app (%s), left out of this run" % why in _verdict_section(md)[1]
    assert "subinterpreters cannot load the app" in out.stdout and "left out" in out.stdout


def test_check_on_the_demo_app_keeps_every_declared_strategy():
    """The runner's reading of the real binary's `check`: a pure-Python app loads everywhere."""
    _require(BINARY)
    check, _runner, _report, survey, procs = _bench_modules()
    owned = procs.Owned()
    try:
        found = check.run(owned, BINARY, ["--app", "handlers.demo"], REPO, dict(os.environ))
    finally:
        owned.stop_all()
    if not found["available"]:  # a binary without the command: only a usage error is accepted
        assert found["exit_code"] == 2 and "no `check` command" in found["error"], found
        return
    assert found["exit_code"] == 0, found
    rows = found["document"]["rows"]
    assert {r["strategy"] for r in rows} >= set(DECLARED), rows
    kept, excluded = check.plan(found, DECLARED, lambda s: survey.STRATEGY_BUILD.get(s, "default"))
    assert kept == DECLARED and excluded == {}, (kept, excluded, rows)


# -- ASGI (issue 23): the ASGI workloads against uvicorn and Hypercorn ---------------

ASGI_PEERS = ["uvicorn", "hypercorn"]


def _run_folder(out):
    """The run's folder and results.json, from the runner's console."""
    folder = os.path.dirname(re.search(r"^report: (\S+report\.html)$", out.stdout, re.M).group(1))
    with open(os.path.join(folder, "results.json")) as f:
        return folder, json.load(f)


# Where the ASGI run below puts its servers and its load, when this machine lets it choose:
# the first CPU this process may use for the servers, the next for wrk (None: not pinned).
_MINE = sorted(os.sched_getaffinity(0))
PINNED = (str(_MINE[0]), str(_MINE[1])) if len(_MINE) >= 2 else None


@pytest.fixture(scope="module")
def asgi_run(tmp_path_factory):
    """`loadtest/run --quick --workloads asgi-hello --peers uvicorn,hypercorn`: the raw ASGI
    app on every strategy that serves ASGI apps (--strategies auto), the peers beside it;
    the servers on one CPU, wrk on another (--server-cpus, --wrk-cpus)."""
    _require(BINARY)
    results_dir = tmp_path_factory.mktemp("asgi-results")
    pinning = ["--server-cpus", PINNED[0], "--wrk-cpus", PINNED[1]] if PINNED else []
    out = subprocess.run([PYTHON, RUN, "--quick", "--workloads", "asgi-hello", "--peers", ",".join(ASGI_PEERS),
                          "--results-dir", str(results_dir)] + pinning,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, "loadtest/run (asgi-hello) failed (%d):\n%s\n%s" % (
        out.returncode, out.stdout[-4000:], out.stderr[-4000:])
    folder, results = _run_folder(out)
    with open(os.path.join(folder, "report.md")) as f:
        return {"folder": folder, "results": results, "md": f.read(), "stdout": out.stdout}


def test_pinned_servers_and_load_run_on_their_own_cpus(asgi_run):
    """--server-cpus / --wrk-cpus: every server of the run (uvicorn's and Hypercorn's worker
    processes too) and wrk ran where they were put, as /proc had them mid-run; a cell's ideal
    counts the servers' CPUs; each cell has its server CPU per response."""
    if not PINNED:
        pytest.skip("this machine lets the runner use one CPU: nothing to pin apart")
    results, md = asgi_run["results"], asgi_run["md"]
    assert (results["meta"]["options"]["server_cpus"], results["meta"]["options"]["wrk_cpus"]) == PINNED
    for cell in results["cells"]:
        load = cell["load"]
        assert (load["server_cpus"], load["wrk_cpus"]) == PINNED, (cell["id"], load.get("server_cpus"),
                                                                   load.get("wrk_cpus"))
        assert cell["workers"] == len(_MINE) and cell["cores"] == 1, cell["id"]  # --quick: one per CPU
        per_response = load["server_cpu_cores"] * 1e6 / cell["wrk"]["requests_per_s"]
        assert cell["server_cpu_us_per_request"] == pytest.approx(per_response), cell["id"]
        assert re.search(r"\| %s \| asgi-hello \| %d \| [0-9.]+ \| %.0f \|" % (
            re.escape(f_label(results, cell)), cell["workers"], per_response), md), cell["id"]
    assert ("The servers (and the single-thread rates) run on CPU %s, the load generator on CPU %s, "
            "apart from the servers'" % PINNED) in md
    assert "wrk also shares the" not in md and "wrk shares CPU" not in md  # latency notes: wrk apart
    assert "| server CPU (cores) | server CPU µs per response |" in md


def f_label(results, cell):
    """A cell's server as the report's tables name it."""
    sys.path.insert(0, os.path.join(REPO, "loadtest"))
    try:
        from bench import figures
    finally:
        sys.path.pop(0)
    return figures.label(results, cell["server"])


def test_asgi_workload_runs_every_asgi_strategy_and_the_asgi_peers(asgi_run):
    results = asgi_run["results"]
    measured = results["strategies"]["supported"]
    refused = results["strategies"]["unsupported"]
    # Every declared strategy is measured, but for one this binary refuses --asgi under by
    # name (processes, until it serves ASGI apps): left out with the reason, not failed.
    assert set(measured) | set(refused) == set(DECLARED), results["strategies"]
    for name, reason in refused.items():
        assert "--asgi: " in reason, (name, reason)
        assert "left out: this binary refuses --asgi under %s" % name in asgi_run["stdout"], asgi_run["stdout"]
        assert "`%s` left out: this binary refuses `--asgi` under it at start-up" % name in asgi_run["md"]
    assert "subinterpreters" in measured and "threads" in measured, results["strategies"]
    cells = {c["server"]: c for c in results["cells"]}
    assert set(cells) == set(measured) | set(ASGI_PEERS), sorted(cells)
    starlette = subprocess.run([PYTHON, "-c", "import starlette; print(starlette.__version__)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    for server, cell in cells.items():
        assert cell["workload"] == "asgi-hello" and not cell.get("error"), (server, cell.get("error"))
        assert cell["event_loop"] is True, server
        w = cell["wrk"]
        assert w["goodput"] > 0 and w["responses_by_status"].keys() == {"200"}, (server, w)
        assert w["sent_by_route"] == {"/hello": w["sent_by_route"]["/hello"]}, w["sent_by_route"]
        command = cell["startup"]["command"]
        if cell["kind"] == "gilgamesh":
            # the same app on 3.13, with bookworm's Starlette copied for it (the peers' version)
            assert command[command.index("--asgi") + 1] == "asgi_bench:app", command
            paths = [command[i + 1] for i, a in enumerate(command) if a == "--pythonpath"]
            assert paths == [os.path.join(REPO, "loadtest"), os.path.join(asgi_run["folder"], "site-starlette")]
            assert os.path.isdir(os.path.join(paths[1], "starlette-%s.dist-info" % starlette)), paths[1]
            # and trixie's uvloop for 3.13 beside it (make test fetches trixie-site first), which
            # the worker processes run (--loop auto), as the peers run uvloop
            assert os.path.islink(os.path.join(paths[1], "uvloop")), paths[1]
            if server == "processes":
                logs = glob.glob(os.path.join(asgi_run["folder"], "logs", "*processes*.log"))
                assert logs and all("event loop of each worker process: uvloop 0.21" in open(p).read()
                                    for p in logs), logs
            assert w["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}
        elif server == "uvicorn":
            assert command[:3] == [PYTHON, "-m", "uvicorn"] and command[-1] == "asgi_demo:app", command
            for flag in ("--loop uvloop", "--http httptools", "--no-access-log", "--workers %d" % cell["workers"]):
                assert flag in " ".join(command), (flag, command)
            assert w["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}
        else:  # Hypercorn 0.13.2 closes a connection after a response the app sent before reading
            # the request's end (wrk: a read error per response), so only the others are zero
            assert command[0] == "/usr/bin/hypercorn" and command[-1].endswith("loadtest/asgi_demo.py:app")
            for flag in ("--worker-class uvloop", "--backlog 2048", "--workers %d" % cell["workers"]):
                assert flag in " ".join(command), (flag, command)
            assert w["errors"]["connect"] == w["errors"]["timeout"] == w["errors"]["write"] == 0, w["errors"]
        assert cell["shutdown"]["leftover_pids"] == [], server
    assert results["meta"]["options"]["asgi"] == "asgi_bench:app"
    assert "gilgamesh's `processes` cells run uvloop 0.21.0 in their worker processes" in asgi_run["md"]


def test_asgi_report_has_the_cells_the_peers_and_a_verdict(asgi_run):
    md, results = asgi_run["md"], asgi_run["results"]
    headline, points = _verdict_section(md)
    assert re.fullmatch(r"Serve this app with `([a-z-]+)`, \d+ workers?\.", headline), headline
    table = md.split("## Headline: goodput at", 1)[1].split("\n## ", 1)[0]
    header = [h.strip() for h in [l for l in table.splitlines() if l.startswith("|")][0].strip("|").split("|")]
    measured = results["strategies"]["supported"]
    assert header == ["workload"] + [s for s in ALL_STRATEGIES if s in measured] + [
        "hypercorn (py3.11)", "uvicorn (py3.11)"], header
    assert re.search(r"^\| asgi-hello \| ", table, re.M), table
    peers = [l for l in points.splitlines() if l.startswith("- Peers at ")]
    assert len(peers) == 1 and "uvicorn (py3.11)" in peers[0] and "hypercorn (py3.11)" in peers[0], points
    assert "serve the same ASGI app, asgi_bench:app" in md and "--loop uvloop --http httptools" in md
    assert "Workload `asgi-hello`: GET /hello on a raw ASGI app" in md


def test_asgi_sleep_answers_every_one_of_1000_connections(tmp_path):
    """asgi-sleep: 1000 connections at once, each request sleeping 1 s on the loop (quick: one
    strategy and uvicorn): every response a 200, no socket error or timeout, and the runner
    gives gilgamesh room for them all."""
    _require(BINARY)
    strategy = next(s for s in DECLARED if s != "processes")
    out = subprocess.run([PYTHON, RUN, "--quick", "--workloads", "asgi-sleep", "--strategies", strategy,
                          "--peers", "uvicorn", "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder, results = _run_folder(out)
    cells = {c["server"]: c for c in results["cells"]}
    assert set(cells) == {strategy, "uvicorn"}
    for server, cell in cells.items():
        assert cell["connections"] == 1000 and " -c1000 " in cell["wrk_command"], cell["wrk_command"]
        assert "--timeout 30s" in cell["wrk_command"]  # above the 1 s sleep
        w = cell["wrk"]
        assert w["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}, server
        # (how many complete in the 2 s window depends on how fast 1000 connections open: not asserted)
        assert w["responses_by_status"] == {"200": w["requests"]} and w["requests"] > 0, (server, w)
        # Every response waited out its sleep. A few ms of slack: uvicorn's uvloop times its
        # sleeps on libuv's clock, cached in whole ms at each turn of its loop, so a 1 s sleep can
        # end a fraction of a ms early by wrk's clock (CI saw 999.898 ms once).
        assert 995 <= w["latency_ms"]["min"] <= w["latency_ms"]["p99"], (server, w["latency_ms"])
    command = cells[strategy]["startup"]["command"]
    assert command[command.index("--worker-connections") + 1] == "1000", command
    assert int(command[command.index("--max-connections") + 1]) >= 2000, command
    with open(os.path.join(folder, "report.md")) as f:
        md = f.read()
    assert "16 connections (asgi-sleep: 1000)" in md
    assert "`asgi-sleep` is not CPU-bound" in _verdict_section(md)[1] and "event loop" in md


def test_asgi_single_thread_rate_runs_the_app_through_the_servers_python_half():
    out = subprocess.run([PYTHON, os.path.join(REPO, "loadtest", "handler_rate.py"), "--asgi", "asgi_bench:app",
                          "--pythonpath", os.path.join(REPO, "loadtest"), "--seconds", "0.05", "--repeat", "1",
                          "/fib?n=15", "/starlette/hello"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rates = json.loads(out.stdout)
    assert set(rates["targets"]) == {"/fib?n=15", "/starlette/hello"}
    assert all(t["per_s"] > 0 for t in rates["targets"].values()), rates
    failing = subprocess.run([PYTHON, os.path.join(REPO, "loadtest", "handler_rate.py"), "--asgi", "asgi_bench:app",
                              "--pythonpath", os.path.join(REPO, "loadtest"), "--seconds", "0.05", "--repeat", "1",
                              "/fib?n=99"], capture_output=True, text=True, timeout=60)
    assert failing.returncode != 0 and "/fib?n=99 answered 400" in failing.stderr, failing.stderr


def test_asgi_options_are_checked(tmp_path):
    for args, mentions in ((["--asgi", "asgi_bench:app"], "needs at least one --request"),
                           (["--asgi", "a:b", "--wsgi", "c:d", "--request", "GET /"], "exclusive"),
                           (["--workloads", "asgi-hello,hello"], "run them separately"),
                           (["--workloads", "asgi", "--app", "handlers.demo"], "serve their own app"),
                           (["--workloads", "asgi-hello", "--peers", "gunicorn"], "its peers are uvicorn, hypercorn"),
                           (["--peers", "uvicorn"], "its peers are gunicorn, gunicorn-gthread, uwsgi"),
                           (["--server-cpus", "1-0"], "--server-cpus: '1-0' is not a CPU list such as 0-3,8"),
                           (["--wrk-cpus", "a"], "--wrk-cpus: 'a' is not a CPU list"),
                           (["--server-cpus", "0,4096"], "--server-cpus 0,4096: CPU 4096 is not one this "
                                                         "runner may use")):
        out = subprocess.run([PYTHON, RUN, "--results-dir", str(tmp_path)] + args, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and mentions in out.stderr, (args, out.stderr)
    assert os.listdir(tmp_path) == [], "a run started anyway"


# -- WebSocket echo (issue 24, benchmark): ws_echo_load.py and the ws-echo workloads ---------

WS_LOAD = os.path.join(REPO, "loadtest", "tools", "ws_echo_load.py")


@pytest.fixture(scope="module")
def ws_server():
    """gilgamesh serving tests/apps/asgi_websocket.py (an echo, a route that sends something
    else first, a refusal) on one in-process strategy, 2 workers."""
    strategy = next(s for s in DECLARED if s != "processes")
    yield from _serve("--asgi", "asgi_websocket:app", "--pythonpath", APPS, "--strategy", strategy,
                      "--workers", "2")


def _ws_load(port, path, *args, seconds=1, connections=4):
    out = subprocess.run([PYTHON, WS_LOAD, "ws://127.0.0.1:%d%s" % (port, path), "--connections",
                          str(connections), "--duration", str(seconds), "--timeout", "5"] + list(args),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["unit"] == "round trips" and set(result["latency_ms"]) == set(LATENCY_KEYS) | {"stdev"}, result
    return result


def test_ws_echo_client_counts_checked_round_trips_text_and_binary(ws_server):
    for args, size, binary in (((), 32, False), (("--size", "65536", "--binary"), 65536, True)):
        r = _ws_load(ws_server, "/echo", *args)
        assert r["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}, r
        assert r["connections"]["opened"] == 4 and r["responses_by_status"] == {}, r
        assert r["goodput"] == r["requests"] > 0 and r["bytes"] == r["goodput"] * size, r
        assert r["params"] == {"size": size, "binary": binary, "path": "/echo"}, r
        assert abs(r["goodput_per_s"] - r["goodput"] / r["duration_s"]) < 1e-6 and 0.9 <= r["duration_s"] <= 1.1
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], lat
    capped = _ws_load(ws_server, "/echo", "--max-round-trips", "10", seconds=5)
    assert capped["capped"] and 10 <= capped["goodput"] < 10 + 4 and capped["duration_s"] < 4, capped


def test_ws_echo_client_reports_wrong_echoes_and_refusals_as_errors(ws_server):
    # /scope sends a JSON report before echoing: the first "echo" is not the message sent
    wrong = _ws_load(ws_server, "/scope")
    assert wrong["goodput"] == 0 and wrong["errors"]["read"] >= 4, wrong
    assert any("the echo differs" in t for t in wrong["error_texts"]), wrong["error_texts"]
    # /deny closes before accepting: the server answers 403, a failed handshake
    denied = _ws_load(ws_server, "/deny")
    assert denied["goodput"] == 0 and denied["connections"]["opened"] == 0, denied
    assert denied["errors"]["connect"] >= 4 and set(denied["responses_by_status"]) == {"403"}, denied
    # bounded: loopback only
    out = subprocess.run([PYTHON, WS_LOAD, "ws://192.0.2.1:80/echo", "--duration", "1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "not a loopback address" in out.stderr, out.stderr


def test_ws_echo_workload_runs_a_strategy_and_the_asgi_peers(tmp_path):
    """`loadtest/run --quick --workloads ws-echo`: round trips on /ws/echo of asgi_bench.py by
    ws_echo_load.py on one strategy, uvicorn and Hypercorn; the report counts round trips."""
    _require(BINARY)
    strategy = next(s for s in DECLARED if s != "processes")
    out = subprocess.run([PYTHON, RUN, "--quick", "--workloads", "ws-echo", "--strategies", strategy,
                          "--peers", ",".join(ASGI_PEERS), "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder, results = _run_folder(out)
    cells = {c["server"]: c for c in results["cells"]}
    assert set(cells) == {strategy} | set(ASGI_PEERS), sorted(cells)
    for server, cell in cells.items():
        assert not cell.get("error") and cell["connections"] == 50, (server, cell.get("error"))
        assert "ws_echo_load.py ws://127.0.0.1:" in cell["wrk_command"], cell["wrk_command"]
        assert "/ws/echo --connections 50 " in cell["wrk_command"], cell["wrk_command"]
        w = cell["wrk"]
        assert w["unit"] == "round trips" and w["goodput"] > 0 and w["connections"]["opened"] == 50, (server, w)
        assert w["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}, (server, w)
        assert cell["shutdown"]["leftover_pids"] == [], server
        assert "goodput %.1f round trips/s" % w["goodput_per_s"] in out.stdout, out.stdout
    assert results["meta"]["workloads"]["ws-echo"]["unit"] == "round trips"
    with open(os.path.join(folder, "report.md")) as f:
        md = f.read()
    headline, points = _verdict_section(md)
    assert re.fullmatch(r"Serve this app with `%s`, 2 workers\." % strategy, headline), headline
    assert "`ws-echo` %s round trips/s" % _rate_text(cells[strategy]["wrk"]["goodput_per_s"]) in points, points
    assert "on `ws-echo`, WebSocket round trips per second instead" in md
    assert "Workload `ws-echo`: WebSocket /ws/echo on the raw ASGI app: 50 connections" in md
    assert re.search(r"^\| ws-echo \| \d+ \(1\.00×\) \| \d+ \(\d+\.\d\d×\) \| \d+ \(\d+\.\d\d×\) \|$", md, re.M), md
