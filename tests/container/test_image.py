"""The image as `docker run` uses it: metadata, contents, serving, mounted apps
(route handlers with a third-party package from a venv, a WSGI app), SIGTERM
(drain; /readyz 503 during --shutdown-delay), SIGHUP (a restart in place under tini)."""

import glob
import os
import signal
import tempfile
import textwrap
import threading
import time

import pytest

import container_harness as harness
from container_harness import get

# The image's two bundled CPython 3.13.5 builds (the libpythons gilgamesh and
# gilgamesh-ft embed), under /opt/gilgamesh as `make install` lays them out.
PY = "/opt/gilgamesh/lib/gilgamesh/default/bin/python3.13"
PY_FT = "/opt/gilgamesh/lib/gilgamesh/free-threaded/bin/python3.13t"


def test_image_metadata(image):
    config = image["Config"]
    user = config.get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), user
    assert "8080/tcp" in config.get("ExposedPorts", {})
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "-s"], config["Entrypoint"]
    assert config["Entrypoint"][-1] == "/opt/gilgamesh/bin/gilgamesh"
    assert "GILGAMESH_HOST=0.0.0.0" in config.get("Env", [])
    health = image.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "healthcheck.py" in " ".join(health.get("Test", [])), health
    size_mb = image["Size"] / 1e6
    print("image size: %.0f MB" % size_mb)
    assert size_mb < 400, "image is %.0f MB" % size_mb


def test_contents_are_runtime_only(container):
    c = container()
    script = textwrap.dedent("""
        set -e
        id -u
        cd /opt/gilgamesh
        # Every ELF file's libraries resolve (no build tree, no host paths).
        for f in bin/* lib/gilgamesh/*/bin/* lib/gilgamesh/*/lib/*.so* lib/gilgamesh/*/lib/*/lib-dynload/*.so; do
          if ldd "$f" | grep -q 'not found'; then echo "UNRESOLVED $f"; ldd "$f"; fi
        done
        ls -d lib/gilgamesh/*/include lib/gilgamesh/*/lib/python3.13*/test 2>/dev/null | sed 's/^/PRESENT /' || true
        ls share/gilgamesh/handlers/demo.py
        command -v cc gcc cmake 2>/dev/null | sed 's/^/TOOL /' || true
        """)
    r = c.exec(["/bin/sh", "-c", script])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.splitlines()[0] == "10001", out
    assert "UNRESOLVED" not in out and "PRESENT" not in out and "TOOL" not in out, out
    # Both embedded builds are 3.13.5: the default one from Debian, the free-threaded one bundled.
    for py, gil_disabled in ((PY, 0), (PY_FT, 1)):
        r = c.exec([py, "-c", "import sys, sysconfig; print(sys.version.split()[0], "
                    "int(sysconfig.get_config_var('Py_GIL_DISABLED') or 0))"])
        assert r.returncode == 0 and r.stdout.split() == ["3.13.5", str(gil_disabled)], r.stdout + r.stderr


def test_defaults_suit_a_container(container):
    """No flags at all (the image's CMD): the demo app, on 0.0.0.0, one worker per usable CPU."""
    c = container()
    # The image's CMD (no arguments); only the port variable the image sets is changed.
    c.start([], port_flag=False).wait_ready()
    port = c.port
    stats = get(port, "/stats").json()
    assert stats["strategy"] == "subinterpreters"
    assert stats["workers"] == len(os.sched_getaffinity(0)), stats
    assert listening_on_any_address(port)
    assert c.stop() == 0, c.log()[-3000:]


def listening_on_any_address(port):
    """True if a socket listens on 0.0.0.0:port (/proc/net/tcp, state 0A = LISTEN)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local == "00000000:%04X" % port:
                return True
    return False


def test_bind_on_the_command_line_overrides_the_images_host_and_port(container):
    """gunicorn's habit, `docker run IMAGE -b 0.0.0.0:PORT`: the image's GILGAMESH_HOST and
    GILGAMESH_PORT (set here to another free port) yield to it instead of clashing."""
    c = container()
    port = harness.free_port()
    c.start(["-b", "0.0.0.0:%d" % port, "--workers", "1"], port_flag=False)
    c.port = port
    c.wait_ready()
    assert listening_on_any_address(port)
    assert c.stop() == 0, c.log()[-3000:]


@pytest.mark.parametrize("strategy", ["subinterpreters", "free-threaded", "processes"])
def test_serves_each_strategy(container, strategy):
    c = container().start(["--strategy", strategy, "--workers", "2"]).wait_ready()
    assert get(c.port, "/healthz").status == 200
    fib = get(c.port, "/fib?n=20")
    assert fib.status == 200 and fib.json() == {"n": 20, "value": 6765}, fib
    who = get(c.port, "/whoami").json()
    assert who["strategy"] == strategy, who
    stats = get(c.port, "/stats").json()
    assert stats["build"] == ("free-threaded" if strategy == "free-threaded" else "default"), stats
    # The server runs as the image's non-root user, under tini.
    with open("/proc/%d/status" % c.server_pid()) as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1] == "10001", uid_line
    # The image's HEALTHCHECK command, run inside the container as Docker would.
    health = c.exec(["/bin/sh", "-c", "GILGAMESH_PORT=%d %s" % (c.port, " ".join(healthcheck_command()))])
    assert health.returncode == 0, health.stdout + health.stderr
    assert c.stop() == 0, c.log()[-3000:]


def healthcheck_command():
    image = harness.image_inspect()
    test = (image.get("Healthcheck") or image["Config"].get("Healthcheck"))["Test"]
    assert test[0] == "CMD", test
    return test[1:]


def test_sigterm_drains_in_flight_requests_and_exits_0(container):
    c = container().start(["--workers", "2", "--graceful-timeout", "20"]).wait_ready()
    results = []

    def slow():
        try:
            results.append(get(c.port, "/sleep?ms=1500", timeout=30))
        except Exception as e:  # recorded and asserted below
            results.append(e)

    clients = [threading.Thread(target=slow) for _ in range(2)]
    for t in clients:
        t.start()
    # Both requests are in a worker once /stats says so; then `docker stop`.
    harness.wait_until(lambda: inflight(c.port) >= 2, 10, "two requests in flight")
    stopped_at = time.monotonic()
    code = c.stop(timeout=30)
    for t in clients:
        t.join(timeout=30)
    assert code == 0, c.log()[-3000:]
    assert time.monotonic() - stopped_at < 20
    assert len(results) == 2
    for r in results:
        assert not isinstance(r, Exception), r
        assert r.status == 200, r
    assert "Tini is not running as PID 1" not in c.log()


def test_sighup_restarts_the_server_in_place_under_tini(container):
    """`docker kill -s HUP`: tini passes it on, the server restarts in place (the same
    process, still tini's child) and serves again; `docker stop` then ends it with 0."""
    c = container().start(["--workers", "1"]).wait_ready()
    pid = c.server_pid()
    os.kill(c.init_pid(), signal.SIGHUP)
    harness.wait_until(lambda: c.log().count("serving handlers.demo on") == 2, 60, "the server restarted")
    c.wait_ready()
    assert c.server_pid() == pid, c.log()[-3000:]
    assert "restarting in place: executing /opt/gilgamesh/bin/gilgamesh" in c.log(), c.log()[-3000:]
    assert get(c.port, "/hello").status == 200
    assert c.stop(timeout=30) == 0, c.log()[-3000:]


def inflight(port):
    """Workers running a request, from /stats (busy_workers, else worker_details)."""
    stats = get(port, "/stats").json()
    if "busy_workers" in stats:
        return stats["busy_workers"]
    return sum(1 for w in stats.get("worker_details") or [] if w.get("state") == "busy")


def test_mounted_app_with_a_third_party_package(container):
    """docker run -v $PWD/app:/app gilgamesh --app myapp --pythonpath /app, with a
    venv of the image's python3.13 holding a pure-Python package from a wheel."""
    wheels = glob.glob("/usr/share/python-wheels/wheel-*.whl")
    assert wheels, "python3-wheel-whl is not installed (make deps installs it)"
    with tempfile.TemporaryDirectory(prefix="gilgamesh-app-") as app:
        with open(os.path.join(app, "myapp.py"), "w") as f:
            f.write(textwrap.dedent('''
                import gilgamesh
                import wheel

                @gilgamesh.route("/hi")
                def hi(request):
                    return {"hello": request.query.get("name", "world"), "wheel": wheel.__version__,
                            "wheel_from": wheel.__file__}

                @gilgamesh.route("/child")
                def child(request):
                    # What multiprocessing's spawn does: sys.executable, given this sys.path,
                    # imports this module again (and so `gilgamesh`, the installed tree's
                    # pure-Python copy for children: share/gilgamesh/outside).
                    import json, subprocess, sys
                    code = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); import myapp, gilgamesh;"
                            "print(gilgamesh.__file__, gilgamesh.worker_info()['strategy'], myapp.hi.__name__)")
                    r = subprocess.run([sys.executable, "-c", code, json.dumps(sys.path)],
                                       capture_output=True, text=True, timeout=30)
                    return {"out": r.stdout.split(), "err": r.stderr[-2000:]}
                '''))
        os.chmod(app, 0o755)
        os.chmod(os.path.join(app, "myapp.py"), 0o644)
        wheel_dir = os.path.dirname(wheels[0])
        c = container()
        venv = "/home/gilgamesh/venv"
        r = c.exec(["/bin/sh", "-c", "%s -m venv %s && %s/bin/pip install -q --no-index %s"
                    % (PY, venv, venv, "/wheels/" + os.path.basename(wheels[0]))],
                   volumes=[(wheel_dir, "/wheels", "ro")])
        assert r.returncode == 0, r.stdout + r.stderr
        site = venv + "/lib/python3.13/site-packages"
        c.start(["--app", "myapp", "--pythonpath", "/app", "--pythonpath", site, "--workers", "2"],
                volumes=[(app, "/app", "ro")]).wait_ready()
        r = get(c.port, "/hi?name=container")
        assert r.status == 200, r
        body = r.json()
        assert body["hello"] == "container"
        assert body["wheel_from"].startswith(site), body
        assert body["wheel"] == os.path.basename(wheels[0]).split("-")[1], body
        r = get(c.port, "/child")
        assert r.status == 200 and r.json()["out"] == [
            "/opt/gilgamesh/share/gilgamesh/outside/gilgamesh/__init__.py", "None", "hi"], r.json()
        assert get(c.port, "/fib?n=5").status == 404  # only the user's app is served
        assert c.stop() == 0, c.log()[-3000:]


WSGI_APP = """
import json


def application(environ, start_response):
    body = json.dumps({
        "path": environ["PATH_INFO"],
        "script_name": environ["SCRIPT_NAME"],
        "query": environ["QUERY_STRING"],
        "server_software": environ["SERVER_SOFTWARE"],
        "wsgi_version": list(environ["wsgi.version"]),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.parametrize("strategy", ["subinterpreters", "free-threaded"])
def test_mounted_wsgi_app(container, strategy):
    """docker run -v $PWD/app:/app gilgamesh --wsgi wsgiapp:application --root-path /api."""
    with tempfile.TemporaryDirectory(prefix="gilgamesh-wsgi-") as app:
        with open(os.path.join(app, "wsgiapp.py"), "w") as f:
            f.write(WSGI_APP)
        os.chmod(app, 0o755)
        os.chmod(os.path.join(app, "wsgiapp.py"), 0o644)
        c = container().start(["--wsgi", "wsgiapp:application", "--root-path", "/api",
                               "--strategy", strategy, "--workers", "2"],
                              volumes=[(app, "/app", "ro")]).wait_ready()
        r = get(c.port, "/api/items/7?x=1")
        assert r.status == 200, r
        body = r.json()
        assert body["path"] == "/items/7" and body["script_name"] == "/api", body
        assert body["query"] == "x=1" and body["wsgi_version"] == [1, 0], body
        assert body["server_software"].startswith("gilgamesh/"), body
        assert get(c.port, "/healthz").status == 200  # built-ins stay beside the app
        assert c.stop() == 0, c.log()[-3000:]


def test_sigterm_readyz_503_while_shutdown_delay_keeps_serving(container):
    """What a Kubernetes rollout relies on: after SIGTERM, /readyz says 503 at once
    (the endpoint leaves the Service) while requests are still served for
    --shutdown-delay; then the drain, and exit 0."""
    c = container().start(["--workers", "2", "--shutdown-delay", "3", "--graceful-timeout", "10"]).wait_ready()
    assert get(c.port, "/readyz").status == 200
    c.terminate()
    signalled_at = time.monotonic()
    ready = harness.wait_until(lambda: readyz_if_503(c.port), 2, "/readyz to turn 503")
    assert ready.json()["status"] == "draining", ready
    # Still accepting and serving inside the delay.
    fib = get(c.port, "/fib?n=20")
    assert fib.status == 200 and fib.json()["value"] == 6765, fib
    assert time.monotonic() - signalled_at < 2.5, "served after the delay: the test proves nothing"
    assert c.wait(timeout=30) == 0, c.log()[-3000:]
    assert time.monotonic() - signalled_at >= 3.0  # the delay was kept


def readyz_if_503(port):
    r = get(port, "/readyz", timeout=5)
    return r if r.status == 503 else None


def trixie_site():
    """The dist-packages of Debian trixie's packages (`make trixie-site`), on the host."""
    cache = os.environ.get("GILGAMESH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gilgamesh")
    site = os.path.join(cache, "trixie-site", "root", "usr", "lib", "python3", "dist-packages")
    if not os.path.isdir(os.path.join(site, "fastapi")):
        pytest.fail("%s has no fastapi: run `make trixie-site`" % site, pytrace=False)
    return site


def test_fastapi_from_trixie_serves_on_processes_and_threads_and_is_refused_on_subinterpreters(container):
    """FastAPI (Debian trixie's, with pydantic-core, which needs the image's glibc 2.41):
    served under processes and threads; refused under subinterpreters, naming pydantic_core
    and why."""
    apps = str(harness.REPO / "tests" / "apps")
    volumes = [(apps, "/app", "ro"), (trixie_site(), "/site", "ro")]
    args = ["--asgi", "fastapi_app:app", "--pythonpath", "/app", "--pythonpath", "/site", "--workers", "2"]
    for strategy in ("processes", "threads"):
        c = container().start(args + ["--strategy", strategy], volumes=volumes).wait_ready()
        r = get(c.port, "/items/7?q=x")
        assert r.status == 200 and r.json()["item_id"] == 7 and r.json()["q"] == "x", (strategy, r)
        assert get(c.port, "/items/nope").status == 422, strategy  # pydantic's validation answered
        assert c.stop() == 0, (strategy, c.log()[-3000:])

    c = container().start(args + ["--strategy", "subinterpreters"], volumes=volumes)
    assert c.wait(timeout=120) == 1, c.log()[-3000:]
    log = c.log()
    assert "pydantic_core" in log and "pydantic#12452" in log and "--strategy processes" in log, log[-3000:]
