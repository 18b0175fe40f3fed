"""Listening on a UNIX socket (`--uds PATH`, `-b unix:PATH`), as uvicorn's --uds and gunicorn's
-b unix: serve behind nginx on one machine.

On every strategy an ASGI app is served over the socket: its scope has no `client` and no
`server` (None, as uvicorn gives them: a UNIX peer has no address), the proxy's
X-Forwarded-For and X-Forwarded-Proto are believed (the peer can only be a process here that may
open the file, as gunicorn trusts it), the file is a socket every user may connect to (0666) and
it is gone once the server stops. Once, on one strategy: a WSGI environ (REMOTE_ADDR '', no
REMOTE_PORT), --forwarded-allow-ips '' turning the trust off, a stale socket file replaced, a
live one or a file that is not a socket refused without touching it, and --reload and SIGHUP
keeping the socket through a restart; a UNIX socket handed over as `--bind fd://N` (systemd's
ListenStream=/path) is served and left to its owner."""

import http.client
import os
import signal
import socket
import stat
import subprocess
import time

import pytest

from gilgamesh_harness import APPS_DIR, REPO, GilgameshServer, Response, binary_path, run_cli, scaled, wait_for

# The listener is the same code whatever the strategy: once under the sanitizers.
SANITIZED_STRATEGIES = ("subinterpreters",)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class UnixServer(GilgameshServer):
    """A GilgameshServer listening on `path` (--uds, or `-b unix:PATH` with bind=True) and serving
    `app_args` (["--asgi", SPEC], ["--wsgi", SPEC] or ["--app", MODULE])."""

    def __init__(self, strategy, path, app_args, bind=False, **kw):
        super().__init__(strategy, **kw)
        self.path = str(path)
        self.app_args = list(app_args)
        self.bind = bind

    @property
    def command(self):
        cmd = super().command
        at = cmd.index("--host")
        cmd[at:at + 4] = ["-b", "unix:" + self.path] if self.bind else ["--uds", self.path]
        at = cmd.index("--app")
        cmd[at:at + 2] = self.app_args
        return cmd

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        """One request on a fresh connection to the socket (the harness's get() and its
        readiness poll come here)."""
        conn = UnixConnection(self.path, scaled(timeout))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Response(r.status, r.reason, list(r.getheaders()), r.read())
        finally:
            conn.close()

    def json(self, path, headers=None):
        r = self.get(path, headers=headers)
        assert r.status == 200, r
        return r.json()


def started(server):
    try:
        return server.start()
    except BaseException:
        server.kill()
        raise


def scope_values(server, headers=None):
    """asgi_conformance's /scope: key -> [type name, value]."""
    return server.json("/scope", headers=headers)["scope"][1]


def assert_socket_file(path):
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o666, oct(mode)


def test_an_asgi_app_is_served_over_a_unix_socket(strategy, tmp_path):
    path = tmp_path / "app.sock"
    server = started(UnixServer(strategy, path, ["--asgi", "asgi_conformance:app"],
                                args=["--pythonpath", str(APPS_DIR)]))
    try:
        assert_socket_file(path)
        scope = scope_values(server)
        assert scope["client"] == ["NoneType", None] and scope["server"] == ["NoneType", None], scope
        assert scope["scheme"] == ["str", "http"], scope
        forwarded = scope_values(server, {"X-Forwarded-For": "198.51.100.1, 203.0.113.7",
                                          "X-Forwarded-Proto": "https"})
        assert forwarded["client"] == ["tuple", [["str", "203.0.113.7"], ["int", 0]]], forwarded
        assert forwarded["scheme"] == ["str", "https"], forwarded
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]
    assert not path.exists(), "the socket file is left after the server stopped"


def test_a_wsgi_environ_over_a_unix_socket_and_no_trust_when_the_list_is_empty(tmp_path):
    path = tmp_path / "wsgi.sock"
    server = started(UnixServer("threads", path, ["--wsgi", "wsgi_validated:app"], bind=True,
                                args=["--pythonpath", str(APPS_DIR), "--forwarded-allow-ips", ""]))
    try:
        env = server.json("/environ/x", headers={"X-Forwarded-For": "203.0.113.7",
                                                 "X-Forwarded-Proto": "https"})
        assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env, env
        assert env["SERVER_NAME"] == "localhost" and env["SERVER_PORT"] == "80", env
        assert env["wsgi.url_scheme"] == "http", env
        assert "serving wsgi_validated:app on unix:%s" % path in server.log(), server.log()[-2000:]
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_a_stale_socket_is_replaced_and_a_live_one_or_another_file_is_refused(tmp_path):
    stale = tmp_path / "stale.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))  # a socket file whose server is gone: nothing listens on it
    left.close()
    # (with the container image's environment, which --uds on the command line overrides)
    server = started(UnixServer("threads", stale, ["--app", "handlers.demo"], workers=1,
                                env={"GILGAMESH_HOST": "0.0.0.0", "GILGAMESH_PORT": "8080"}))
    try:
        assert server.get("/hello").body == b"hello"
        second = run_cli(["--uds", str(stale), "--strategy", "threads", "--workers", "1"])
        assert second.returncode == 1 and "unix:%s is already in use" % stale in second.stderr, second
        assert server.get("/hello").body == b"hello", "the refused start took the socket"
        assert_socket_file(stale)
    finally:
        assert server.stop() == 0, server.log()[-3000:]

    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    result = run_cli(["--uds", str(regular), "--strategy", "threads", "--workers", "1"])
    assert result.returncode == 1 and "a file that is not a socket is there" in result.stderr, result
    assert regular.read_text() == "keep me"

    long_path = tmp_path / ("x" * 120)
    result = run_cli(["--uds", str(long_path), "--strategy", "threads", "--workers", "1"])
    assert result.returncode == 1 and "the path is longer than 107 bytes" in result.stderr, result


def test_reload_keeps_the_unix_socket_through_a_restart(tmp_path):
    app = tmp_path / "uds_reloaded.py"
    app.write_text("import gilgamesh\n\n@gilgamesh.route('/v')\ndef v(request):\n    return {'version': 1}\n")
    path = tmp_path / "reload.sock"
    server = started(UnixServer("threads", path, ["--app", "uds_reloaded"], workers=1,
                                args=["--reload", "--reload-dir", str(tmp_path), "--pythonpath", str(tmp_path)]))
    try:
        assert server.json("/v") == {"version": 1}
        app.write_text(app.read_text().replace("'version': 1", "'version': 2"))
        later = time.time() + 2
        os.utime(app, (later, later))

        def version_two():
            try:
                return server.json("/v") == {"version": 2}
            except OSError:
                return False
        wait_for(version_two, "version 2 served after the restart", timeout=30, interval=0.1)
        assert_socket_file(path)
    finally:
        server.signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    assert code == 0, server.log()[-3000:]
    assert not path.exists(), "the supervisor left the socket file"


def test_sighup_keeps_the_unix_socket_and_its_file_through_a_restart(tmp_path):
    """A server restarting in place hands its --uds socket and the file's removal to the
    server it becomes."""
    path = tmp_path / "hup.sock"
    server = started(UnixServer("threads", path, ["--app", "gate"], workers=1,
                                args=["--pythonpath", str(APPS_DIR)]))
    try:
        pid = server.process.pid
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.log().count("serving gate on unix:") == 2, "the restarted server", timeout=30)
        assert_socket_file(path)
        assert server.get("/hello").body == b"hello"
        assert server.process.pid == pid and server.alive(), server.log()[-3000:]
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]
    assert not path.exists(), "the restarted server left the socket file"


def test_an_inherited_unix_socket_is_served_and_left_to_its_owner(tmp_path):
    path = tmp_path / "activated.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(16)
        fd = listener.fileno()
        process = subprocess.Popen([str(binary_path()), "-w", "1", "--strategy", "threads", "--bind", "fd://%d" % fd],
                                   cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, pass_fds=(fd,))
        try:
            def hello():
                assert process.poll() is None, process.stderr.read()
                try:
                    conn = UnixConnection(str(path), 2)
                    conn.request("GET", "/hello")
                    return conn.getresponse().read() == b"hello"
                except OSError:
                    return False
            wait_for(hello, "GET /hello over the inherited socket", timeout=30)
            process.send_signal(signal.SIGTERM)
            code, err = process.wait(timeout=scaled(30)), process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code == 0, err
    assert "listening on unix:%s (an inherited socket" % path in err, err
    assert path.exists(), "the server removed a socket file it did not make"
