"""--strategy free-threaded (PEP 703), and the free-threaded build under the
other strategies. Run whenever free-threaded is a declared strategy
(GILGAMESH_STRATEGIES, see gilgamesh_harness.strategies): a broken
build/gilgamesh-ft fails these tests, it does not skip them."""

import json
import threading

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, binary_path, run_cli, strategies

FT_EXT_DIR = binary_path().parent / "test-ext" / "free-threaded"


pytestmark = pytest.mark.skipif("free-threaded" not in strategies(),
                                reason="free-threaded is not in GILGAMESH_STRATEGIES "
                                       "(the build was configured without GILGAMESH_PYTHON_FT)")


@pytest.fixture(scope="module")
def ft_server():
    server = GilgameshServer("free-threaded", workers=4).start()
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def test_fib_and_stats_report_no_gil(ft_server):
    r = ft_server.get("/fib?n=20")
    assert r.status == 200 and r.json() == {"n": 20, "value": 6765}
    stats = ft_server.get("/stats").json()
    assert stats["strategy"] == "free-threaded"
    assert stats["build"] == "free-threaded"
    assert stats["gil_enabled"] is False


def test_version_names_both_builds():
    out = run_cli(["--version"]).stdout
    assert "default build" in out and "free-threaded build" in out, out


def test_every_demo_route(ft_server):
    assert ft_server.get("/hello").text == "hello"
    assert ft_server.get("/primes?limit=100").status == 200
    assert ft_server.get("/mandelbrot?size=16").status == 200
    assert ft_server.get("/nbody?steps=10").status == 200
    assert ft_server.get("/sleep?ms=1").status == 200
    assert ft_server.get("/counter").status == 200
    r = ft_server.post("/json", {"a": [1, 2]})
    assert r.status == 200, r
    assert ft_server.get("/fib?n=99").status == 400


def test_one_interpreter_many_threads(ft_server):
    seen = []
    lock = threading.Lock()

    def hit():
        for _ in range(15):
            info = ft_server.get("/sleep?ms=20").status and ft_server.get("/whoami").json()
            with lock:
                seen.append(info)

    threads = [threading.Thread(target=hit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 90
    assert {s["interpreter_id"] for s in seen} == {0}
    assert len({s["thread_id"] for s in seen}) >= 2
    assert {s["strategy"] for s in seen} == {"free-threaded"}


def test_shared_state_hammered_without_crash_or_5xx(ft_server):
    statuses = []
    lock = threading.Lock()

    def hammer():
        for _ in range(40):
            r = ft_server.get("/race?n=2000")
            with lock:
                statuses.append(r.status)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses.count(200) == 240, sorted(set(statuses))
    assert ft_server.get("/healthz").status == 200


def test_extension_without_free_threading_support_is_refused():
    assert FT_EXT_DIR.is_dir(), "test extension not built at %s" % FT_EXT_DIR
    result = run_cli(["--strategy", "free-threaded", "--workers", "2", "--port", "0",
                      "--app", "imports_gil_unaware", "--pythonpath", str(APPS_DIR),
                      "--pythonpath", str(FT_EXT_DIR)], timeout=60)
    assert result.returncode != 0
    err = result.stderr
    assert "GIL" in err and "gil_unaware" in err, err
    assert "--allow-gil" in err, err


def test_wsgi_app_importing_that_extension_is_refused_too():
    # Any callable will do: the refusal comes from the import, before the app is called.
    result = run_cli(["--strategy", "free-threaded", "--workers", "2", "--port", "0",
                      "--wsgi", "imports_gil_unaware:answer", "--pythonpath", str(APPS_DIR),
                      "--pythonpath", str(FT_EXT_DIR)], timeout=60)
    assert result.returncode == 1, result
    assert "imports_gil_unaware:answer" in result.stderr and "gil_unaware" in result.stderr, result.stderr
    assert "--allow-gil" in result.stderr, result.stderr


def test_extension_accepted_with_allow_gil():
    server = GilgameshServer("free-threaded", workers=2, app="imports_gil_unaware",
                             args=["--allow-gil", "--pythonpath", str(APPS_DIR),
                                   "--pythonpath", str(FT_EXT_DIR)]).start()
    try:
        assert server.get("/answer").json() == {"answer": 42}
        assert server.get("/stats").json()["gil_enabled"] is True
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("strategy,gil", [("threads", True), ("subinterpreters", True)])
def test_other_strategies_on_the_free_threaded_build(strategy, gil):
    server = GilgameshServer(strategy, workers=2, args=["--python-build", "free-threaded"]).start()
    try:
        assert server.get("/fib?n=20").json() == {"n": 20, "value": 6765}
        stats = server.get("/stats").json()
        assert stats["build"] == "free-threaded"
        assert stats["strategy"] == strategy
        assert stats["gil_enabled"] is gil
    finally:
        assert server.stop() == 0


def test_free_threaded_strategy_needs_free_threaded_build():
    result = run_cli(["--strategy", "free-threaded", "--python-build", "default"])
    assert result.returncode == 2
    assert "free-threaded" in result.stderr
