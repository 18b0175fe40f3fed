"""Fixtures that run the real gilgamesh binary, once per strategy.

Environment:
  GILGAMESH_BIN         the binary (default: <repo>/build/gilgamesh)
  GILGAMESH_STRATEGIES  comma-separated strategies to prove (default: all four; the build sets it
                        without free-threaded only when configured without GILGAMESH_PYTHON_FT)
  GILGAMESH_STRESS_RUNS start/stop cycles of test_startup_stress (default: 20)
"""

import os

import pytest

import gilgamesh_harness as harness
from gilgamesh_harness import AsgiServer, GilgameshServer

DEMO_WORKERS = 4


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "slow: takes more than a few seconds (deselect with -m 'not slow')")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    # In the sanitized pass, a module may name the strategies it runs on there
    # (SANITIZED_STRATEGIES): the others are deselected, to keep CI within its time.
    if os.environ.get("GILGAMESH_SANITIZED"):
        keep, dropped = [], []
        for item in items:
            only = getattr(item.module, "SANITIZED_STRATEGIES", None)
            callspec = getattr(item, "callspec", None)
            strategy = callspec.params.get("strategy") if callspec else None
            (dropped if only and strategy and strategy not in only else keep).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    # The declared strategies' start-up checks first (test_strategies.py): a strategy that
    # cannot start is named once, at the top, before its other tests fail one by one.
    first = [item.nodeid.split("::")[0].endswith("test_strategies.py") for item in items]
    items[:] = [i for i, f in zip(items, first) if f] + [i for i, f in zip(items, first) if not f]


def pytest_terminal_summary(terminalreporter):
    left_out = [s for s in harness.ALL_STRATEGIES if s not in harness.strategies()]
    if left_out:
        why = "; the build declares free-threaded only when configured with GILGAMESH_PYTHON_FT" \
            if "free-threaded" in left_out else ""
        terminalreporter.write_line("NOT TESTED: %s (not in GILGAMESH_STRATEGIES=%s%s)" % (
            ", ".join(left_out), ",".join(harness.strategies()), why), yellow=True, bold=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    # After fixture teardown: only servers a crashed test left behind remain.
    harness.kill_all_running()


@pytest.fixture(scope="session")
def gilgamesh_bin():
    path = harness.binary_path()
    if not path.is_file():
        pytest.fail("gilgamesh binary not found at %s (build it, or set GILGAMESH_BIN)" % path,
                    pytrace=False)
    return path


@pytest.fixture(scope="session", params=harness.strategies())
def strategy(request):
    """Each strategy named in GILGAMESH_STRATEGIES."""
    return request.param


@pytest.fixture(scope="session")
def demo_server(gilgamesh_bin, strategy):
    """handlers.demo with DEMO_WORKERS workers, shared by every test of one strategy."""
    server = GilgameshServer(strategy, workers=DEMO_WORKERS).start()
    yield server
    code = server.stop()
    assert code == 0, "server exited with %r\n%s" % (code, server.log()[-4000:])


@pytest.fixture
def start_server(gilgamesh_bin, strategy):
    """Factory: start_server(workers=..., app=..., args=[...], wsgi=..., asgi=..., env=...,
    preexec_fn=..., stdin=...) -> a running server of this test's strategy, stopped (and killed if need
    be) when the test ends."""
    started = []

    def start(workers=2, app="handlers.demo", args=(), strategy_name=None, wsgi=None, asgi=None,
              env=None, preexec_fn=None, stdin=None):
        kw = dict(workers=workers, app=app, args=args, wsgi=wsgi, env=env, preexec_fn=preexec_fn, stdin=stdin)
        server = (AsgiServer(strategy_name or strategy, asgi, **kw) if asgi
                  else GilgameshServer(strategy_name or strategy, **kw))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.stop()
        server.kill()


@pytest.fixture
def probe_cache(tmp_path):
    """Environment for a start-up probe cache of the test's own, so that no earlier start
    (or test) answers for it."""
    return {"GILGAMESH_PROBE_CACHE": str(tmp_path / "probe-cache")}
