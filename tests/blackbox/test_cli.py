"""The command line: --help, --version, bad flags (exit 2, one line), apps that
cannot load (non-zero, named, with a way out)."""

import http.client
import os
import re
import signal
import socket
import subprocess

import pytest

from gilgamesh_harness import (ALL_STRATEGIES, APPS_DIR, REPO, GilgameshServer, binary_path, free_port,
                               run_cli, scaled, strategies, wait_for)

CONFIG_CPP = REPO / "server" / "cli.cpp"
README = REPO / "README.md"
OPERATING = REPO / "docs" / "operating.md"  # the README's Command line section moved here


def declared_flags():
    """Every --flag server/cli.cpp declares (add_option, add_flag, set_help_flag)."""
    source = CONFIG_CPP.read_text()
    names = re.findall(r'(?:add_option|add_flag|set_help_flag)\(\s*"([^"]+)"', source)
    flags = sorted({part for name in names for part in name.split(",") if part.startswith("--")})
    # A floor, so that a change in how cli.cpp declares options cannot empty this list.
    assert {"--app", "--wsgi", "--strategy", "--workers", "--help", "--version"} <= set(flags), flags
    return flags


def mentions_flag(text, flag):
    # --timeout must not be found inside --header-timeout, nor --max-requests in -jitter.
    return re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), text) is not None


def test_help_lists_every_flag_and_strategy(gilgamesh_bin):
    result = run_cli(["--help"])
    assert result.returncode == 0, result
    missing = [flag for flag in declared_flags() if not mentions_flag(result.stdout, flag)]
    assert not missing, (missing, result.stdout)
    for strategy in ALL_STRATEGIES:
        assert re.search(r"\b%s\b" % re.escape(strategy), result.stdout), (strategy, result.stdout)


def test_docs_document_every_flag():
    """docs/operating.md's Command line section (the synopsis and the table) names every
    flag, and the README links to that guide."""
    text = OPERATING.read_text()
    start = text.index("## Command line")
    end = text.find("\n## ", start)
    synopsis = text[start:end if end >= 0 else len(text)]
    missing = [flag for flag in declared_flags() if not mentions_flag(synopsis, flag)]
    assert not missing, "docs/operating.md's Command line section lacks %s" % missing
    assert "(docs/operating.md" in README.read_text(), "README.md does not link docs/operating.md"


def test_version(gilgamesh_bin):
    result = run_cli(["--version"])
    assert result.returncode == 0, result
    out = result.stdout + result.stderr
    assert "gilgamesh" in out.lower(), out
    # The embedded build, and the sibling free-threaded one where it is declared (else
    # "not built" may stand there).
    assert re.search(r"^Python 3\.\d+\.\d+ \(default build\)$", out, re.M), out
    if "free-threaded" in strategies():
        assert re.search(r"^free-threaded build: Python 3\.\d+\.\d+ \(free-threaded build\)$",
                         out, re.M), out


@pytest.mark.parametrize("args,mentions", [
    (["--no-such-flag"], "--no-such-flag"),
    (["--workers", "0"], "workers"),
    (["--workers", "-3"], "workers"),
    (["--workers", "many"], "workers"),
    (["--port", "abc"], "port"),
    (["--port", "70000"], "port"),
    (["--strategy", "telepathy"], "telepathy"),
    (["--max-body", "-1"], "max-body"),
    (["--max-header-size", "512"], "max-header-size"),
    (["--access-log-format", "%(zz)s"], "unknown atom %(zz)s"),
    (["--timeout", "soon"], "timeout"),
    (["--workers"], "workers"),
    (["--forwarded-allow-ips", "127.0.0.1,nginx"], "'nginx' is not an IP address or network"),
    (["--forwarded-allow-ips", "10.0.0.0/33"], "prefix length must be 0..32"),
    (["--log-level", "loud"], "log-level"),
    (["--bind", "unix:"], "unix: takes the socket's path"),
    (["--bind", "unix:/tmp/g.sock", "--host", "0.0.0.0"], "--bind and --host/--port are exclusive"),
    (["--uds", "/tmp/g.sock", "--port", "8081"], "--uds and --host/--port are exclusive"),
    (["--uds", "/tmp/g.sock", "--bind", "127.0.0.1:8081"], "--uds and --bind are exclusive"),
    (["--uds", ""], "--uds takes the socket's path"),
    (["--bind", "::1:8080"], "an IPv6 address goes in brackets: [::1]:8080"),
    (["--bind", "127.0.0.1:99999"], "PORT must be in 0..65535"),
    (["--bind", "127.0.0.1:8080", "--port=8081"], "--bind and --host/--port are exclusive"),
    (["--bind", "fd://three"], "fd:// takes a file descriptor number"),
    (["--header", "X-Frame-Options"], "takes NAME:VALUE"),
    (["--header", "Bad Name:x"], "takes NAME:VALUE"),
    (["--header", "Server:mine"], "Server is the server's own field (--no-server-header leaves it out)"),
    (["--header", "Content-Length:3"], "Content-Length is the server's own field"),
    (["--header", "X-A:b\x01c"], "X-A has a value holding a control character"),
])
def test_bad_command_line_exits_2_with_one_line(gilgamesh_bin, args, mentions):
    result = run_cli(args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert mentions in lines[0], lines[0]


def test_log_level_warning_as_gunicorn_and_uvicorn_spell_it(start_server):
    # `--log-level warning` (gunicorn's and uvicorn's name) was refused; it is spdlog's warn.
    server = start_server(workers=1, args=["--log-level", "warning"])
    assert server.get("/readyz").status == 200
    assert server.stop() == 0
    log = server.log()
    assert "[info]" not in log and "listening on" not in log, log


def serve_until_healthy(args, port, pass_fds=(), env=None, while_serving=None):
    """Starts the binary with `args` (no --host/--port of the harness's) and `env` added to the
    environment, waits for GET /healthz on 127.0.0.1:port (or until `while_serving`, if given,
    returns true), stops it with SIGTERM; returns (exit status, stderr)."""
    process = subprocess.Popen([str(binary_path()), "-w", "1", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, pass_fds=pass_fds,
                               env=dict(os.environ, **(env or {})))
    try:
        def healthy():
            assert process.poll() is None, process.stderr.read()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/healthz")
                return connection.getresponse().status == 200
            except OSError:
                return False
        wait_for(healthy, "GET /healthz on port %d" % port, timeout=30)
        if while_serving is not None:
            wait_for(lambda: process.poll() is None and while_serving(), "the server's socket as expected", timeout=10)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=scaled(30)), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bind_as_gunicorn_spells_it(gilgamesh_bin):
    # -b HOST:PORT and -w N, as `gunicorn -w 4 -b 127.0.0.1:8000`; a host name resolves.
    port = free_port()
    code, err = serve_until_healthy(["-b", "127.0.0.1:%d" % port], port)
    assert code == 0 and "serving handlers.demo on http://127.0.0.1:%d" % port in err, err
    assert "1 workers" in err, err
    port = free_port()
    code, err = serve_until_healthy(["--host", "localhost", "--port", str(port)], port)
    assert code == 0 and "http://localhost:%d" % port in err, err
    # An empty host would resolve to every interface: refused instead.
    result = run_cli(["--host", "", "--port", str(free_port())])
    assert result.returncode == 1 and "--host is empty" in result.stderr, result


def test_where_to_listen_on_the_command_line_wins_over_the_environment(gilgamesh_bin, tmp_path):
    # The container image sets GILGAMESH_HOST and GILGAMESH_PORT: `docker run IMAGE -b ...`
    # must not clash with them (it did: "give --bind, or --host and --port, not both").
    port = free_port()
    image_env = {"GILGAMESH_HOST": "0.0.0.0", "GILGAMESH_PORT": str(free_port())}
    code, err = serve_until_healthy(["-b", "127.0.0.1:%d" % port], port, env=image_env)
    assert code == 0 and "on http://127.0.0.1:%d" % port in err, err
    # GILGAMESH_UDS yields to --port on the command line: nothing is made at that path.
    path = tmp_path / "from-env.sock"
    code, err = serve_until_healthy(["--port", str(port)], port, env={"GILGAMESH_UDS": str(path)})
    assert code == 0 and "on http://127.0.0.1:%d" % port in err and not path.exists(), err


def test_backlog_sizes_the_listen_queue(gilgamesh_bin, tmp_path):
    # --backlog, as gunicorn's and uvicorn's: the queue of connections the kernel holds before
    # the server accepts them (ss shows a listening socket's as its Send-Q), TCP and UNIX.
    def queue_is(expected, *ss_filter):
        lines = subprocess.run(["ss", "-Hl", *ss_filter], capture_output=True, text=True, check=True).stdout.splitlines()
        return len(lines) == 1 and lines[0].split()[3 if "-x" in ss_filter else 2] == expected

    port = free_port()
    code, err = serve_until_healthy(["--port", str(port), "--backlog", "77"], port,
                                    while_serving=lambda: queue_is("77", "-tn", "sport = :%d" % port))
    assert code == 0, err
    path = str(tmp_path / "app.sock")
    process = subprocess.Popen([str(binary_path()), "-w", "1", "--uds", path, "--backlog", "33"], cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: process.poll() is None and queue_is("33", "-x", "src", path), "--uds with --backlog 33",
                 timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=scaled(30)) == 0, process.stderr.read()


def test_bind_fd_serves_on_an_inherited_socket(gilgamesh_bin):
    # --bind fd://N, as gunicorn's (systemd's socket activation): the socket is bound by
    # someone else; the server accepts on it once its workers are ready.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        code, err = serve_until_healthy(["--bind", "fd://%d" % listener.fileno()], port,
                                        pass_fds=(listener.fileno(),))
    assert code == 0, err
    # The socket's own address and port, not --host's and --port's defaults.
    assert "listening on http://127.0.0.1:%d (an inherited socket: accepting once they are ready)" % port in err, err
    # Not a listening TCP socket: refused by name.
    with socket.socket(socket.AF_UNIX) as other:
        fd = other.fileno()
        result = subprocess.run([str(binary_path()), "--bind", "fd://%d" % fd], cwd=REPO,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                pass_fds=(fd,), timeout=scaled(30))
    assert result.returncode == 1, result
    assert "--bind fd://%d is not a listening TCP or UNIX stream socket" % fd in result.stderr, result.stderr


def test_missing_app_module_is_named(gilgamesh_bin, strategy):
    result = run_cli(["--app", "no_such_module", "--strategy", strategy, "--workers", "2",
                      "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.returncode not in (0, None), result
    assert result.returncode > 0, "died of signal %d" % -result.returncode
    assert "no_such_module" in result.stderr, result.stderr


def test_app_raising_at_import_is_reported(gilgamesh_bin, strategy, tmp_path):
    (tmp_path / "broken_app.py").write_text(
        "import gilgamesh\nraise RuntimeError('configuration missing: FOO_URL')\n")
    result = run_cli(["--app", "broken_app", "--pythonpath", str(tmp_path),
                      "--strategy", strategy, "--workers", "2",
                      "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.returncode > 0, result
    assert "broken_app" in result.stderr and "FOO_URL" in result.stderr, result.stderr


def test_single_phase_extension_refused_under_subinterpreters(gilgamesh_bin):
    result = run_cli(["--app", "single_phase_ext", "--pythonpath", str(APPS_DIR),
                      "--strategy", "subinterpreters", "--workers", "2",
                      "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.returncode > 0, result
    err = result.stderr
    assert any(name in err for name in ("_curses", "readline", "_tkinter", "_testsinglephase",
                                        "xxlimited_35")), err
    assert "single_phase_ext" in err, err
    assert "threads" in err or "processes" in err, err


def test_single_phase_extension_loads_under_threads(gilgamesh_bin):
    server = GilgameshServer("threads", workers=2, app="single_phase_ext",
                             args=["--pythonpath", str(APPS_DIR)])
    try:
        server.start()
        r = server.get("/extension")
        assert r.status == 200, r
        assert r.json()["extension"] in ("_curses", "readline", "_tkinter", "_testsinglephase",
                                         "xxlimited_35")
        assert server.stop() == 0
    finally:
        server.kill()
