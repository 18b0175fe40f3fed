"""Every declared strategy starts and serves (GILGAMESH_STRATEGIES, see
gilgamesh_harness.strategies): declared, never discovered.

conftest.py runs these first, so that a strategy that cannot start (a broken
build/gilgamesh-ft, say) is named once, at the top of the failures, as
"strategy free-threaded could not start: ...", before its other tests fail too."""

import pytest

from gilgamesh_harness import GilgameshServer, server_stats, strategies

# What /stats must say each strategy runs on.
EXPECTED = {
    "subinterpreters": {"build": "default", "gil_enabled": True},
    "threads": {"build": "default", "gil_enabled": True},
    "processes": {"build": "default", "gil_enabled": True},
    "free-threaded": {"build": "free-threaded", "gil_enabled": False},
}


@pytest.mark.parametrize("name", strategies())
def test_declared_strategy_starts(gilgamesh_bin, name):
    server = GilgameshServer(name, workers=2)
    try:
        server.start()
        stats = server_stats(server)
        assert stats["strategy"] == name, stats
        assert {k: stats[k] for k in EXPECTED[name]} == EXPECTED[name], \
            "strategy %s runs on the wrong build: %r" % (name, stats)
        assert stats["workers"] == 2 and stats["ready_workers"] == 2, stats
        r = server.get("/whoami")
        assert r.status == 200 and r.json()["strategy"] == name, r
        code = server.stop()
        assert code == 0, "strategy %s exited with %r\n%s" % (name, code, server.log()[-3000:])
    finally:
        server.kill()
