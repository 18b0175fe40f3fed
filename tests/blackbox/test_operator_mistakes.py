"""What an operator gets wrong, or does twice: a port out of range or already in
use, and a second SIGTERM/SIGINT during the drain. One line that says what is
allowed, or a prompt exit; never library internals or a hang."""

import signal
import socket
import threading
import time

import pytest

from gilgamesh_harness import HOST, free_port, run_cli


@pytest.mark.parametrize("args,expected", [
    (["--port", "99999"], "--port: must be an integer in 0..65535, got '99999'"),
    (["--port", "-1"], "--port: must be an integer in 0..65535, got '-1'"),
    (["--port", "http"], "--port: must be an integer in 0..65535, got 'http'"),
    (["--workers", "0"], "--workers: must be an integer in 1..1024, got '0'"),
    (["--max-requests", "-5"], "--max-requests: must be an integer in 0..4294967295, got '-5'"),
    (["--timeout", "soon"], "--timeout: must be a number of seconds in 0.001..86400, got 'soon'"),
    (["--max-connections", "0"], "--max-connections: must be an integer in 1..10000000, got '0'"),
    (["--strategy", "telepathy"], "--strategy: must be one of subinterpreters, threads, free-threaded, "
                                  "processes, auto; got 'telepathy'"),
    (["--workers"], "--workers needs a value"),
    (["--workers", "2", "--workers", "3"], "--workers is given more than once"),
])
def test_bad_values_say_what_is_allowed(gilgamesh_bin, args, expected):
    result = run_cli(args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "Could not convert" not in lines[0] and "required" not in lines[0], lines[0]


def test_help_lists_the_security_flags(gilgamesh_bin):
    out = run_cli(["--help"]).stdout
    for flag in ("--max-connections", "--debug", "--max-body", "--header-timeout"):
        assert flag in out, (flag, out)


def test_port_in_use_is_one_line_and_exit_1(gilgamesh_bin, strategy):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(["--strategy", strategy, "--workers", "1", "--host", HOST, "--port", str(port)])
    assert result.returncode == 1, result
    expected = "%s:%d is already in use (is another server running there?)" % (HOST, port)
    lines = [line for line in result.stderr.splitlines() if "in use" in line]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    for internal in ("bind", "Address already in use", "system:", "boost", "terminate"):
        assert internal not in result.stderr, result.stderr


def test_second_signal_stops_the_drain_at_once(start_server, strategy):
    server = start_server(workers=1, args=["--graceful-timeout", "30"])
    outcome = []

    def slow_request():
        try:
            outcome.append(server.get("/sleep?ms=8000", timeout=20))
        except Exception as e:  # the connection is closed under it: recorded, asserted below
            outcome.append(e)

    t = threading.Thread(target=slow_request)
    t.start()
    deadline = time.monotonic() + 10
    while server.get("/stats", timeout=2).json()["busy_workers"] < 1:
        assert time.monotonic() < deadline, "the slow request never started"
        time.sleep(0.05)  # polling interval
    first = signal.SIGTERM if strategy != "threads" else signal.SIGINT  # both signals, across strategies
    server.signal(first)
    deadline = time.monotonic() + 10
    while "shutting down" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)  # polling interval
    assert server.alive(), "the first signal must start a drain, not stop at once"
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    code = server.wait(timeout=10)
    elapsed = time.monotonic() - started
    t.join(20)
    assert not t.is_alive()
    assert code == 1, (code, server.log()[-3000:])
    assert elapsed < 3.0, "exited %.1f s after the second signal" % elapsed
    assert len(outcome) == 1 and isinstance(outcome[0], Exception), outcome
    assert "again: exiting now" in server.log()
