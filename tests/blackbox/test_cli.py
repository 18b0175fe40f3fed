"""The command line: --help, --version, bad flags (exit 2, one line), apps that
cannot load (non-zero, named, with a way out)."""

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, free_port, run_cli

FLAGS = ["--app", "--pythonpath", "--strategy", "--workers", "--host", "--port", "--io-threads",
         "--max-body", "--max-queue", "--header-timeout", "--keepalive-timeout",
         "--graceful-timeout", "--timeout", "--log-level", "--help", "--version"]


def test_help_lists_every_flag(gilgamesh_bin):
    result = run_cli(["--help"])
    assert result.returncode == 0, result
    for flag in FLAGS:
        assert flag in result.stdout, (flag, result.stdout)
    for strategy in ("subinterpreters", "threads"):
        assert strategy in result.stdout


def test_version(gilgamesh_bin):
    result = run_cli(["--version"])
    assert result.returncode == 0, result
    out = result.stdout + result.stderr
    assert "gilgamesh" in out.lower(), out
    assert "Python 3." in out, out
    assert "default" in out or "free-threaded" in out, out


@pytest.mark.parametrize("args,mentions", [
    (["--no-such-flag"], "--no-such-flag"),
    (["--workers", "0"], "workers"),
    (["--workers", "-3"], "workers"),
    (["--workers", "many"], "workers"),
    (["--port", "abc"], "port"),
    (["--port", "70000"], "port"),
    (["--strategy", "telepathy"], "telepathy"),
    (["--max-body", "-1"], "max-body"),
    (["--timeout", "soon"], "timeout"),
    (["--workers"], "workers"),
])
def test_bad_command_line_exits_2_with_one_line(gilgamesh_bin, args, mentions):
    result = run_cli(args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert mentions in lines[0], lines[0]


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
