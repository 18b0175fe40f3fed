"""Two replicas of the image behind a real nginx (Debian's, run here in the
foreground with its own files) configured by docker/nginx/gilgamesh.conf, the
file docker/compose.yaml gives its nginx: only the upstream's server lines and
the listen address are replaced by loopback ports. Requests spread over both
replicas; stopping one mid-load (SIGTERM, as `docker compose stop` sends it)
fails no client request."""

import collections
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

import container_harness as harness
from container_harness import HOST, REPO, RawConnection, get

NGINX_CONF = REPO / "docker" / "nginx" / "gilgamesh.conf"
COMPOSE = REPO / "docker" / "compose.yaml"
CLIENTS = 4


def test_compose_file_wires_what_this_suite_runs(image):
    """Compose itself cannot run here: check that compose.yaml gives its nginx the
    file the scale-out test runs, and its replicas the image's own health check."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = services["nginx"]["volumes"]
    assert any(m.split(":")[0] == "./nginx/" + NGINX_CONF.name and
               (COMPOSE.parent / m.split(":")[0]).resolve() == NGINX_CONF for m in mounts), mounts
    assert services["nginx"]["depends_on"]["gilgamesh"]["condition"] == "service_healthy"
    replica = services["gilgamesh"]
    assert replica["build"]["dockerfile"] == "docker/Dockerfile"
    # nginx's address on the compose network is not loopback: the replicas must trust it.
    assert replica["environment"]["GILGAMESH_FORWARDED_ALLOW_IPS"] == "*", replica["environment"]
    health = image.get("Healthcheck") or image["Config"].get("Healthcheck")
    assert replica["healthcheck"]["test"] == health["Test"], (replica["healthcheck"], health)


def nginx_config(workdir, listen_port, upstream_ports):
    site = NGINX_CONF.read_text()
    match = re.search(r"^(\s*)server gilgamesh:8080([^;]*);$", site, flags=re.M)
    assert match, "no 'server gilgamesh:8080 ...;' line in %s" % NGINX_CONF
    indent, params = match.group(1), match.group(2)
    servers = "\n".join("%sserver %s:%d%s;" % (indent, HOST, p, params) for p in upstream_ports)
    site = site[:match.start()] + servers + site[match.end():]
    site, n = re.subn(r"^(\s*)listen 80;$", r"\g<1>listen %s:%d;" % (HOST, listen_port), site, flags=re.M)
    assert n == 1, "no 'listen 80;' line in %s" % NGINX_CONF
    (workdir / "site.conf").write_text(site)
    temp = "\n".join("    %s_temp_path %s;" % (kind, workdir / kind)
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (workdir / "nginx.conf").write_text(
        "worker_processes 1;\n"
        "pid %s;\n"
        "error_log %s info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log %s;\n%s\n"
        "    include %s;\n"
        "}\n" % (workdir / "nginx.pid", workdir / "error.log", workdir / "access.log", temp,
                 workdir / "site.conf"))
    return workdir / "nginx.conf"


@pytest.fixture
def nginx():
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is not installed (make deps installs it)", pytrace=False)
    started = []

    def start(upstream_ports):
        workdir = Path(tempfile.mkdtemp(prefix="gilgamesh-nginx-"))
        port = harness.free_port()
        conf = nginx_config(workdir, port, upstream_ports)
        check = subprocess.run([binary, "-t", "-p", str(workdir), "-e", str(workdir / "error.log"),
                                "-c", str(conf)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([binary, "-p", str(workdir), "-e", str(workdir / "error.log"),
                                 "-c", str(conf), "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        started.append((proc, workdir))
        harness.wait_until(lambda: proxied_ok(port, proc), 15, "nginx on port %d" % port)
        return port, workdir

    yield start
    for proc, workdir in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def proxied_ok(port, proc):
    if proc.poll() is not None:
        raise AssertionError("nginx exited with %s" % proc.returncode)
    try:
        return get(port, "/healthz", timeout=5).status == 200
    except OSError:
        return False


class Load:
    """CLIENTS keep-alive clients of nginx, each sending GET /whoami?ms=20 in a loop."""

    def __init__(self, port):
        self.port = port
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.by_pid = collections.Counter()
        self.failures = []
        self.log = []  # (monotonic time, pid) of every success
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]

    def client(self):
        conn = None
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = RawConnection(self.port, timeout=30)
                r = conn.request("GET", "/whoami?ms=20")
                if r.status != 200:
                    raise AssertionError("status %d: %r" % (r.status, r.body[:300]))
                pid = r.json()["pid"]
                with self.lock:
                    self.by_pid[pid] += 1
                    self.log.append((time.monotonic(), pid))
                if (r.header("Connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # every failure is recorded and fails the test
                with self.lock:
                    self.failures.append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=40)

    def count(self):
        with self.lock:
            return sum(self.by_pid.values())


def test_two_replicas_share_load_and_one_stops_without_failed_requests(container, nginx):
    replicas = [container().start(["--workers", "2", "--graceful-timeout", "20"]) for _ in range(2)]
    for r in replicas:
        r.wait_ready()
    pids = [get(r.port, "/whoami").json()["pid"] for r in replicas]
    assert pids[0] != pids[1]
    port, workdir = nginx([r.port for r in replicas])

    with Load(port) as load:
        harness.wait_until(lambda: load.count() >= 200, 60, "200 proxied requests")
        with load.lock:
            shares = {pid: load.by_pid[pid] for pid in pids}
        assert all(n >= 40 for n in shares.values()), shares  # both replicas serve

        # Stop replica 0 mid-load, as `docker compose stop` does: SIGTERM to PID 1.
        stopped_at = time.monotonic()
        code = replicas[0].stop(timeout=40)
        exited_at = time.monotonic()
        # Keep the load going on the survivor for a while.
        after = load.count()
        harness.wait_until(lambda: load.count() >= after + 100, 60, "100 more requests after the stop")

    assert code == 0, replicas[0].log()[-3000:]
    assert not load.failures, "%d client requests failed, first: %s\nnginx: %s" % (
        len(load.failures), load.failures[:3], (workdir / "error.log").read_text()[-3000:])
    with load.lock:
        late = [pid for t, pid in load.log if t > exited_at + 0.5]
    assert late and set(late) == {pids[1]}, collections.Counter(late)
    print("requests per replica %s; stop took %.1f s; %d client failures"
          % (dict(load.by_pid), exited_at - stopped_at, len(load.failures)))
    assert replicas[1].stop() == 0, replicas[1].log()[-3000:]
