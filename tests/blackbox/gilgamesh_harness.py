"""Starts the real gilgamesh binary and talks HTTP/1.1 to it, stdlib only.

Every wait is bounded, every socket has a timeout, all traffic goes to
127.0.0.1, and every process started here is stopped (SIGTERM, then SIGKILL)
even when a test fails.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APPS_DIR = REPO / "tests" / "apps"
HOST = "127.0.0.1"


def _time_scale():
    raw = os.environ.get("GILGAMESH_TIME_SCALE") or "1"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("GILGAMESH_TIME_SCALE must be a number, not %r" % raw) from None
    if not 1 <= value <= 20:
        raise ValueError("GILGAMESH_TIME_SCALE must be within 1..20, not %r" % raw)
    return value


# How much slower than a normal build the binary under test runs: set (to about 3) by the
# build only for the sanitized run (tests/CMakeLists.txt). It stretches the bounds of waits
# (start-up, stop, socket reads, polls), never what a test asserts about the server's timing.
TIME_SCALE = _time_scale()


def scaled(seconds):
    """`seconds` stretched by TIME_SCALE: for the bound of a wait, not for a sleep or an
    asserted duration."""
    return seconds * TIME_SCALE


# Bounds of waits, before scaling (every helper below scales the bound it is given).
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
SOCKET_TIMEOUT_S = 15.0

# What a sanitizer writes when it finds something (ASan, LeakSanitizer, UBSan).
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error: ",
                     "SUMMARY: UndefinedBehaviorSanitizer")


def binary_path():
    return Path(os.environ.get("GILGAMESH_BIN") or REPO / "build" / "gilgamesh")


ALL_STRATEGIES = ("subinterpreters", "threads", "processes", "free-threaded")


def strategies():
    """The strategies this run must prove: GILGAMESH_STRATEGIES (a comma list), else all four.

    Declared, never discovered: a strategy that cannot start fails its tests. The build
    sets GILGAMESH_STRATEGIES without free-threaded only when it was configured without a
    free-threaded Python (GILGAMESH_PYTHON_FT empty), and says so.
    """
    raw = os.environ.get("GILGAMESH_STRATEGIES") or ",".join(ALL_STRATEGIES)
    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = sorted(set(names) - set(ALL_STRATEGIES))
    if unknown:
        raise ValueError("GILGAMESH_STRATEGIES names unknown strategies: %s" % ", ".join(unknown))
    return names


def wait_for(predicate, what, timeout=10.0, interval=0.05):
    """Polls `predicate` until it returns a true value (returned), or fails naming `what`
    after `timeout` seconds. `interval` is the polling period, not a synchronisation."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (scaled(timeout), what))
        time.sleep(interval)  # polling interval


def server_stats(server):
    """GET /stats as a dict (asserting 200)."""
    r = server.get("/stats", timeout=5)
    assert r.status == 200, r
    return r.json()


def wait_for_stats(server, predicate, what, timeout=15.0):
    """/stats once `predicate(stats)` holds (busy workers, queue depth...), bounded."""
    seen = {}

    def check():
        seen["stats"] = server_stats(server)
        return predicate(seen["stats"])

    try:
        wait_for(check, what, timeout)
    except AssertionError as e:
        raise AssertionError("%s; last /stats: %r" % (e, seen.get("stats"))) from None
    return seen["stats"]


class Gate:
    """A loopback listener that handlers of tests/apps/gate.py (`GET /wait?port=`) connect
    to and block on until the test releases them: the test knows when a handler has
    started (an arrival) and decides when it ends, instead of guessing with sleeps.

        with Gate() as gate:
            ...send GET /wait?port=<gate.port> from a thread...
            gate.wait_arrivals(1)       # the handler runs now
            gate.release()              # every held handler returns
    """

    def __init__(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._held = []
        self._arrivals = 0
        self._released = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._cv:
                self._arrivals += 1
                if self._released:
                    conn.close()
                else:
                    self._held.append(conn)
                self._cv.notify_all()

    @property
    def arrivals(self):
        with self._cv:
            return self._arrivals

    def path(self, tag=""):
        return "/wait?port=%d&tag=%s" % (self.port, tag)

    def wait_arrivals(self, count, timeout=15.0):
        """Waits (bounded) until `count` handlers have reached the gate in all."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._arrivals >= count, scaled(timeout)):
                raise AssertionError("%d handler(s) reached the gate within %.0f s, expected %d"
                                     % (self._arrivals, scaled(timeout), count))

    def release(self):
        """Lets every held handler return, and every later one pass at once."""
        with self._cv:
            self._released = True
            held, self._held = self._held, []
        for conn in held:
            conn.close()

    def close(self):
        self.release()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        except OSError:
            pass  # not connected: nothing to wake
        self._listener.close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run_cli(args, timeout=30.0):
    """Runs the binary to completion (for --help, --version, bad flags, failing apps)."""
    result = subprocess.run([str(binary_path()), *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=scaled(timeout))
    assert_no_sanitizer_report(result.stdout + result.stderr, "gilgamesh %s" % " ".join(args))
    return result


def sanitizer_report(text):
    """The first sanitizer report in `text` (from its first line on), or None."""
    at = min((i for i in (text.find(m) for m in SANITIZER_MARKERS) if i >= 0), default=-1)
    if at < 0:
        return None
    return text[text.rfind("\n", 0, at) + 1:]


def assert_no_sanitizer_report(text, who):
    """Fails with the report when a sanitizer (ASan, LSan, UBSan) wrote one in `text`; the
    zygote and process workers write to the server's stderr, so theirs are caught too."""
    report = sanitizer_report(text)
    if report is not None:
        raise AssertionError("%s: sanitizer report\n%s" % (who, report[:12000]))


# Every server still running, so the session can kill leftovers whatever happened.
RUNNING = set()


class Response:
    """A parsed HTTP response: status, reason, headers (case-insensitive get), body bytes."""

    def __init__(self, status, reason, header_pairs, body, version="HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.version = version
        self.header_pairs = header_pairs
        self.body = body

    def header(self, name, default=None):
        """The value of header `name`; repeated fields joined with ', '."""
        values = [v for n, v in self.header_pairs if n.lower() == name.lower()]
        return ", ".join(values) if values else default

    def header_count(self, name):
        return sum(1 for n, _ in self.header_pairs if n.lower() == name.lower())

    @property
    def text(self):
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.header_pairs, self.body[:300])


class RawConnection:
    """One TCP connection with a byte buffer: send raw bytes, read whole responses."""

    def __init__(self, port, timeout=SOCKET_TIMEOUT_S):
        self.sock = socket.create_connection((HOST, port), timeout=scaled(timeout))
        self.sock.settimeout(scaled(timeout))
        self.buffer = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection; buffered: %r" % self.buffer[:200])
        self.buffer += chunk

    def _take(self, n):
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _take_line(self, limit=65536):
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise ValueError("line longer than %d bytes" % limit)
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def read_response(self, head_request=False):
        """Reads exactly one response (Content-Length, chunked, or to EOF)."""
        status_line = self._take_line().decode("latin-1")
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        if not version.startswith("HTTP/1.") or not status.isdigit():
            raise ValueError("not an HTTP status line: %r" % status_line)
        pairs = []
        for _ in range(200):
            line = self._take_line()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            pairs.append((name.strip(), value.strip()))
        else:
            raise ValueError("more than 200 header lines")
        response = Response(int(status), reason, pairs, b"", version)
        code = response.status
        if head_request or code in (204, 304) or 100 <= code < 200:
            return response
        length = response.header("Content-Length")
        if length is not None:
            response.body = self._take(int(length))
        elif "chunked" in (response.header("Transfer-Encoding") or "").lower():
            body = b""
            for _ in range(100000):
                size = int(self._take_line().split(b";")[0], 16)
                if size == 0:
                    while self._take_line():
                        pass
                    break
                body += self._take(size)
                self._take(2)
            response.body = body
        else:
            response.body = self.read_until_closed(SOCKET_TIMEOUT_S)[0]
        return response

    def request(self, method, path, body=b"", headers=None, version="HTTP/1.1"):
        self.send(build_request(method, path, body, headers, version))
        return self.read_response(head_request=(method == "HEAD"))

    def read_until_closed(self, timeout, scale=True):
        """(bytes received, True) once the server closes, or (bytes, False) after `timeout`
        (stretched for the sanitized run unless `scale` is false: for a duration the test
        measures the server against, such as staying idle within a timeout)."""
        deadline = time.monotonic() + (scaled(timeout) if scale else timeout)
        data, self.buffer = self.buffer, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return data, False
            except (ConnectionResetError, BrokenPipeError):
                return data, True
            if not chunk:
                return data, True
            data += chunk


def build_request(method, path, body=b"", headers=None, version="HTTP/1.1"):
    if isinstance(body, str):
        body = body.encode("utf-8")
    lines = ["%s %s %s" % (method, path, version)]
    names = {k.lower() for k in (headers or {})}
    if "host" not in names:
        lines.append("Host: %s" % HOST)
    if (body or method in ("POST", "PUT")) and "content-length" not in names \
            and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GilgameshServer:
    """One running gilgamesh process on a free port of 127.0.0.1."""

    def __init__(self, strategy, workers=2, app="handlers.demo", args=(), env=None, wsgi=None,
                 preexec_fn=None, stdin=None):
        self.strategy = strategy
        self.preexec_fn = preexec_fn  # run in the child before exec (e.g. to lower a resource limit)
        self.stdin = subprocess.DEVNULL if stdin is None else stdin  # a descriptor (a terminal's, say)
        self.workers = workers
        self.app = app
        self.wsgi = wsgi  # MODULE:CALLABLE: serve this WSGI app instead of `app`
        self.extra_args = [str(a) for a in args]
        self.env = env
        self.host = HOST
        self.port = None
        self.process = None
        self._stderr = None
        self._stdout = None

    @property
    def command(self):
        app = ["--wsgi", self.wsgi] if self.wsgi else ["--app", self.app]
        return [str(binary_path()), "--host", HOST, "--port", str(self.port), *app,
                "--strategy", self.strategy, "--workers", str(self.workers), *self.extra_args]

    def launch(self):
        """Starts the process on a free port without waiting for it (see start())."""
        self.port = free_port()
        self._stderr = tempfile.TemporaryFile()
        self._stdout = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.update(self.env or {})
        self.process = subprocess.Popen(self.command, cwd=REPO, stdin=self.stdin,
                                        stdout=self._stdout, stderr=self._stderr, env=env,
                                        preexec_fn=self.preexec_fn)
        RUNNING.add(self)
        return self

    def start(self, ready_timeout=READY_TIMEOUT_S):
        """Starts the process and waits for GET /readyz == 200; fails with its stderr."""
        for attempt in range(3):
            self.launch()
            if self._wait_ready(ready_timeout):
                return self
            log = self.log()
            self.kill()
            if "in use" not in log.lower() or attempt == 2:
                raise AssertionError("strategy %s could not start: gilgamesh did not become ready "
                                     "within %.0f s (exit code %r)\ncommand: %s\n--- output ---\n%s"
                                     % (self.strategy, scaled(ready_timeout), self.process.returncode,
                                        " ".join(self.command), log[-6000:]))
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.get("/readyz", timeout=1.0).status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass  # not listening yet: poll again
            time.sleep(0.05)  # polling interval, not synchronisation
        return False

    def log(self):
        """Everything the server wrote to stderr and stdout so far."""
        parts = []
        for f in (self._stderr, self._stdout):
            if f is not None and not f.closed:
                f.seek(0)
                parts.append(f.read().decode("utf-8", "replace"))
        return "\n".join(parts)

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, sig):
        self.process.send_signal(sig)

    def wait(self, timeout):
        """Exit code, or raises subprocess.TimeoutExpired (or AssertionError with a sanitizer's
        report)."""
        code = self.process.wait(timeout=scaled(timeout))
        assert_no_sanitizer_report(self.log(), repr(self))
        return code

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return None
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=scaled(timeout))
                except subprocess.TimeoutExpired:
                    self.kill()
                    raise AssertionError("gilgamesh still running %.0f s after SIGTERM; killed\n%s"
                                         % (scaled(timeout), self.log()[-4000:]))
            assert_no_sanitizer_report(self.log(), repr(self))
            return self.process.returncode
        finally:
            RUNNING.discard(self)

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                pass
        RUNNING.discard(self)

    # --- HTTP helpers -----------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=SOCKET_TIMEOUT_S):
        """One request on a fresh connection (http.client), fully read."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=scaled(timeout))
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode("utf-8")
                headers = dict(headers or {}, **{"Content-Type": "application/json"})
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.reason, list(r.getheaders()), data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body=body, **kw)

    def raw(self, timeout=SOCKET_TIMEOUT_S):
        return RawConnection(self.port, timeout)

    def __repr__(self):
        return "<gilgamesh %s x%d :%s>" % (self.strategy, self.workers, self.port)


class AsgiServer(GilgameshServer):
    """GilgameshServer serving `--asgi SPEC` (MODULE:APP or MODULE:factory()) instead of --app."""

    def __init__(self, strategy, asgi, **kw):
        super().__init__(strategy, **kw)
        self.asgi = asgi

    @property
    def command(self):
        cmd = super().command
        at = cmd.index("--app")
        cmd[at:at + 2] = ["--asgi", self.asgi]
        return cmd


def concurrent_gets(server, paths, timeout=20.0):
    """GET each of `paths` from its own thread, released together by a barrier; returns
    the responses (or the exceptions raised), in the order of `paths`."""
    results = [None] * len(paths)
    barrier = threading.Barrier(len(paths), timeout=scaled(10))

    def one(i):
        try:
            barrier.wait()
            results[i] = server.get(paths[i], timeout=timeout)
        except Exception as e:  # recorded, asserted by the caller
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(timeout + 15))
    assert not any(t.is_alive() for t in threads), "a request hung"
    return results


def timed_concurrent_gets(server, paths, warm_paths):
    """Warms up with `warm_paths` at once, then times `paths` sent at once (concurrent_gets):
    returns (responses, seconds). Every response of both rounds must be a 200."""
    warm = concurrent_gets(server, warm_paths)
    assert [getattr(x, "status", x) for x in warm] == [200] * len(warm_paths), warm
    started = time.monotonic()
    results = concurrent_gets(server, paths)
    elapsed = time.monotonic() - started
    assert [getattr(x, "status", x) for x in results] == [200] * len(paths), results
    return results, elapsed


def in_threads(count, fn):
    """Starts fn(i) for i in range(count), each in its own thread, and returns at once:
    (threads, results), where results[i] becomes fn(i)'s value or the exception it raised.
    Join with join_all()."""
    results = [None] * count

    def run(i):
        try:
            results[i] = fn(i)
        except Exception as e:  # recorded, asserted by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, results


def join_all(threads, timeout=30.0):
    """Joins every thread (bounded); fails if one still runs."""
    deadline = time.monotonic() + scaled(timeout)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client thread hung"


def kill_all_running():
    for server in list(RUNNING):
        server.kill()


def find_route_entry(table, method, path):
    """The entry for `method path` in a routes table: a list of {"path", "methods"} objects,
    or a dict keyed "METHOD[,METHOD...] PATH"."""
    entries = table.items() if isinstance(table, dict) else ((None, e) for e in table)
    for key, entry in entries:
        if isinstance(entry, dict) and "path" in entry:
            entry_path = entry["path"]
            methods = entry.get("methods") or entry.get("method") or []
        elif key is not None:
            methods_text, _, entry_path = key.rpartition(" ")
            methods = methods_text.split(",")
        else:
            continue
        if isinstance(methods, str):
            methods = methods.split(",")
        if entry_path == path and method in [m.strip().upper() for m in methods]:
            return entry
    return None


def parser_vectors_dir():
    """gunicorn's parser vectors (tests/requests of its source), as
    scripts/fetch-parser-vectors.sh fetched them (`make parser-vectors`), or None."""
    given = os.environ.get("GILGAMESH_PARSER_VECTORS")
    if given:
        return Path(given)
    result = subprocess.run(["bash", str(REPO / "scripts" / "fetch-parser-vectors.sh"), "--print-path"],
                            capture_output=True, text=True, timeout=60)
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def find_trixie_site(debian_packages):
    """The unpacked trixie dist-packages folder: GILGAMESH_TRIXIE_SITE, else the one
    scripts/fetch-trixie-site.sh names once it holds `debian_packages`; fails the test saying
    `make trixie-site` when they are not fetched. (Here, not in test_real_packages.py: that
    module skips itself in the sanitized pass, and so did every module importing from it.)"""
    import pytest
    given = os.environ.get("GILGAMESH_TRIXIE_SITE")
    if given:
        if not Path(given).is_dir():
            pytest.fail("GILGAMESH_TRIXIE_SITE=%s is not a folder" % given, pytrace=False)
        return Path(given)
    result = subprocess.run(["bash", str(REPO / "scripts" / "fetch-trixie-site.sh"), "--print-path",
                             *debian_packages], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail("Debian trixie's packages are not fetched: run `make trixie-site`\n%s"
                    % result.stderr.strip(), pytrace=False)
    return Path(result.stdout.strip())
