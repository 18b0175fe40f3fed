"""`gilgamesh check` and `--strategy auto`: which strategies can load an app, and why.

Each row of the check is the start-up probe (test_startup_probe.py) for one strategy
and Python build; the free-threaded row is expected only where the build declares
free-threaded (GILGAMESH_STRATEGIES).
"""

import json
import os
import subprocess

import pytest

from gilgamesh_harness import (APPS_DIR, REPO, GilgameshServer, assert_no_sanitizer_report,
                               binary_path, find_trixie_site, scaled, strategies)

EXT_DIR = binary_path().parent / "test-ext" / "default"
FT = "free-threaded" in strategies()




def check(args, env=None, timeout=90):
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([str(binary_path()), "check", "--pythonpath", str(APPS_DIR),
                             "--pythonpath", str(EXT_DIR), *args],
                            cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=scaled(timeout))
    assert_no_sanitizer_report(result.stdout + result.stderr, "gilgamesh check %s" % " ".join(args))
    return result


def check_json(args, env=None):
    result = check(args + ["--json"], env)
    return result.returncode, json.loads(result.stdout)


def rows(doc):
    return {r["strategy"]: r for r in doc["rows"]}


def test_pure_python_app_loads_everywhere(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--app", "handlers.demo"], probe_cache)
    assert code == 0, doc
    by = rows(doc)
    expected = ["subinterpreters", "threads", "processes"] + (["free-threaded"] if FT else [])
    for s in expected:
        assert by[s]["loads"] is True, by[s]
        assert by[s]["problems"] == [], by[s]
        assert by[s]["import_seconds"] > 0, by[s]
    assert by["subinterpreters"]["worker_memory_bytes"] > 0
    assert doc["recommendation"]["strategy"] == "subinterpreters", doc["recommendation"]


def test_single_phase_extension_refused_by_subinterpreters_only(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--app", "two_single_phase"], probe_cache)
    assert code == 0, doc
    by = rows(doc)
    sub = by["subinterpreters"]
    assert sub["loads"] is False and sub["outcome"] == "refused", sub
    modules = {p["module"]: p["why"] for p in sub["problems"]}
    assert modules.get("gil_unaware") == "single-phase init", sub
    assert by["threads"]["loads"] and by["processes"]["loads"], by
    rec = doc["recommendation"]
    assert rec["strategy"] == "processes", rec
    assert "gil_unaware" in rec["why"] and "gil_unaware" in rec["unlock"], rec


def test_each_refused_extension_has_its_reason(gilgamesh_bin, probe_cache):
    # A single-phase extension and a multi-phase one without per-interpreter GIL support:
    # one ImportError text from CPython, two reasons and two remedies.
    code, doc = check_json(["--app", "two_refusal_kinds"], probe_cache)
    assert code == 0, doc
    by = rows(doc)
    sub = by["subinterpreters"]
    assert sub["outcome"] == "refused", sub
    assert {p["module"]: p["why"] for p in sub["problems"]} == {
        "gil_unaware": "single-phase init", "shared_gil_only": "no per-interpreter GIL"}, sub
    assert by["threads"]["loads"] and by["processes"]["loads"], by
    rec = doc["recommendation"]
    assert rec["strategy"] == "processes", rec
    assert "gil_unaware: single-phase init; shared_gil_only: no per-interpreter GIL" in rec["why"], rec
    assert "Py_MOD_PER_INTERPRETER_GIL_SUPPORTED" in rec["unlock"], rec
    table = check(["--app", "two_refusal_kinds"], probe_cache).stdout
    assert "subinterpreters: gil_unaware: single-phase init; shared_gil_only: no per-interpreter GIL" \
        in table, table


@pytest.mark.skipif(not FT, reason="the build declares no free-threaded Python")
def test_gil_needing_extension_flagged_under_free_threaded(gilgamesh_bin, probe_cache, tmp_path):
    (tmp_path / "needs_gil.py").write_text(
        "import gilgamesh\nimport gil_unaware\n\n@gilgamesh.route('/x')\ndef x(request):\n"
        "    return str(gil_unaware.answer())\n")
    ft_ext = binary_path().parent / "test-ext" / "free-threaded"
    code, doc = check_json(["--app", "needs_gil", "--pythonpath", str(tmp_path), "--pythonpath", str(ft_ext)],
                           probe_cache)
    assert code == 0, doc
    ft = rows(doc)["free-threaded"]
    assert ft["loads"] is True and ft["gil_enabled"] is True, ft
    assert any("GIL re-enabled" in p["why"] for p in ft["problems"]), ft
    table = check(["--app", "needs_gil", "--pythonpath", str(tmp_path), "--pythonpath", str(ft_ext)],
                  probe_cache).stdout
    assert "yes, GIL on" in table, table


def test_crashing_import_reported_as_crash_and_check_completes(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--app", "imports_crasher"], probe_cache)
    assert code == 0, doc  # processes and threads serve it
    sub = rows(doc)["subinterpreters"]
    assert sub["outcome"] == "crashed" and sub["loads"] is False, sub
    assert sub["problems"][0]["module"] == "crash_in_subinterpreter", sub
    assert "SIGABRT" in sub["problems"][0]["why"], sub
    assert rows(doc)["processes"]["loads"] is True
    assert doc["recommendation"]["strategy"] == "processes", doc["recommendation"]
    table = check(["--app", "imports_crasher"], probe_cache).stdout
    assert "CRASH" in table and "crash_in_subinterpreter" in table, table


def test_missing_module_fails_every_row_with_the_same_message(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--app", "no_such_module_anywhere"], probe_cache)
    assert code == 1, doc
    messages = set()
    for row in doc["rows"]:
        if row["outcome"] == "unavailable":
            continue
        assert row["loads"] is False, row
        assert [p["module"] for p in row["problems"]] == ["no_such_module_anywhere"], row
        messages.add(row["problems"][0]["why"])
    assert messages == {"not installed (not on the path)"}, messages
    assert doc["recommendation"]["strategy"] == "", doc["recommendation"]


def test_json_matches_the_table(gilgamesh_bin, probe_cache):
    result = check(["--app", "two_single_phase"], probe_cache)
    code, doc = check_json(["--app", "two_single_phase"], probe_cache)
    assert result.returncode == code == 0
    lines = result.stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("strategy"))
    table = [l.split() for l in lines[header + 1:header + 1 + len(doc["rows"])]]
    for row, cells in zip(doc["rows"], table):
        assert cells[0] == row["strategy"] and cells[1] == row["build"], (cells, row)
        assert cells[2] == ("yes" if row["loads"] else "no"), (cells, row)
    assert "Recommendation: --strategy processes." in result.stdout, result.stdout


def test_request_rate_and_shared_state(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--app", "shared_counter", "--request", "GET /count", "--request", "GET /pure"],
                           probe_cache)
    assert code == 0, doc
    by = rows(doc)
    for s in ("subinterpreters", "processes", "threads"):
        rates = by[s]["rates"]
        assert [r["request"] for r in rates] == ["GET /count", "GET /pure"], rates
        assert all(r["status"] == 200 and r["per_second"] > 0 for r in rates), rates
    shared = by["threads"]["shared_state"]
    assert "shared_counter.HITS" in shared and "shared_counter.LAST_PATH" in shared, shared
    assert by["processes"]["shared_state"] == [], by["processes"]


def test_unknown_route_in_request_is_reported(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--app", "handlers.demo", "--request", "GET /no/such/route"], probe_cache)
    assert code == 0
    rate = rows(doc)["subinterpreters"]["rates"][0]
    assert "no route" in rate["error"], rate


def test_check_usage_errors(gilgamesh_bin):
    assert check([]).returncode == 2
    assert check(["--app", "a", "--wsgi", "b:c"]).returncode == 2
    assert check(["--asgi", "a:b", "--wsgi", "b:c"]).returncode == 2
    assert check(["--asgi", "a"]).returncode == 2


def test_an_asgi_app_is_recommended_like_any_other(gilgamesh_bin, probe_cache):
    code, doc = check_json(["--asgi", "asgi_conformance:app"], probe_cache)
    assert code == 0, doc
    assert doc["kind"] == "asgi" and rows(doc)["subinterpreters"]["loads"] is True, doc
    assert doc["recommendation"]["strategy"] == "subinterpreters", doc["recommendation"]
    assert "runner-up: processes" in doc["recommendation"]["why"], doc["recommendation"]
    # One that sub-interpreters refuse (a single-phase extension) goes to processes: each
    # process runs its own event loop, in parallel on every core.
    code, doc = check_json(["--asgi", "asgi_single_phase:app"], probe_cache)
    assert code == 0, doc
    assert rows(doc)["subinterpreters"]["loads"] is False, doc
    assert doc["recommendation"]["strategy"] == "processes", doc["recommendation"]


def test_request_rate_and_shared_state_of_an_asgi_app(gilgamesh_bin, probe_cache):
    """Starlette from trixie: each --request runs through the server's own ASGI half (the
    scope a worker builds, a task on an event loop), after the app's lifespan startup
    (/visits answers 500 without the lifespan's state)."""
    site = str(find_trixie_site(["python3-starlette"]))
    code, doc = check_json(["--asgi", "asgi_starlette:app", "--pythonpath", site, "--request", "GET /visits",
                            "--request", "GET /items/7?q=x", "--request", "GET /raise"], probe_cache)
    assert code == 0, doc
    by = rows(doc)
    for s in ("subinterpreters", "processes", "threads") + (("free-threaded",) if FT else ()):
        rates = by[s]["rates"]
        assert [(r["request"], r["status"]) for r in rates] == [
            ("GET /visits", 200), ("GET /items/7?q=x", 200), ("GET /raise", 500)], (s, rates)
        assert all(r["per_second"] > 0 and not r["error"] for r in rates), (s, rates)
    assert "asgi_starlette.VISITS" in by["threads"]["shared_state"], by["threads"]
    assert by["processes"]["shared_state"] == [] and by["subinterpreters"]["shared_state"] == []


def test_an_asgi_apps_failed_startup_is_each_requests_error(gilgamesh_bin, probe_cache):
    env = dict(probe_cache, ASGI_TEST_STARTUP_FAIL="no database today")
    code, doc = check_json(["--asgi", "asgi_conformance:app", "--request", "GET /"], env)
    rate = rows(doc)["subinterpreters"]["rates"][0]
    assert rate["per_second"] == 0 and "no database today" in rate["error"], rate


def test_requests_run_as_the_servers_lifespan_and_root_path_flags_say(gilgamesh_bin, probe_cache):
    """check takes the server's --lifespan and --root-path, and its cache tells them apart."""
    site = str(find_trixie_site(["python3-starlette"]))
    app = ["--asgi", "asgi_starlette:app", "--pythonpath", site]
    statuses = lambda doc: {r["strategy"]: [x["status"] for x in r["rates"]] for r in doc["rows"] if r["loads"]}
    _, on = check_json(app + ["--request", "GET /visits"], probe_cache)
    _, off = check_json(app + ["--request", "GET /visits", "--lifespan", "off"], probe_cache)
    assert set(map(tuple, statuses(on).values())) == {(200,)}, statuses(on)
    assert set(map(tuple, statuses(off).values())) == {(500,)}, statuses(off)  # no lifespan, no state
    _, bare = check_json(app + ["--request", "GET /mount/items/7"], probe_cache)
    _, mounted = check_json(app + ["--request", "GET /mount/items/7", "--root-path", "/mount/"], probe_cache)
    assert set(map(tuple, statuses(bare).values())) == {(404,)}, statuses(bare)
    assert set(map(tuple, statuses(mounted).values())) == {(200,)}, statuses(mounted)  # Starlette strips root_path
    for args, words in ([["--app", "handlers.demo", "--lifespan", "on"], "--lifespan is for ASGI apps"],
                        [app + ["--root-path", "api"], "--root-path must start with '/'"]):
        result = check(args, probe_cache)
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_check_says_which_event_loop_the_worker_processes_run(gilgamesh_bin, probe_cache):
    """An ASGI app's processes row: the loop --loop auto gives its worker processes, uvloop
    imported as the zygote imports it (docs/compatibility.md)."""
    code, doc = check_json(["--asgi", "asgi_single_phase:app"], probe_cache)
    assert code == 0, doc
    loop = rows(doc)["processes"]["event_loop"]
    assert loop["loop"] == "asyncio" and "No module named 'uvloop'" in loop["uvloop_error"], loop
    assert [r["strategy"] for r in doc["rows"] if r["event_loop"] is not None] == ["processes"], doc["rows"]
    assert "uvloop" not in doc["recommendation"]["why"], doc["recommendation"]

    site = str(find_trixie_site(["python3-uvloop"]))
    result = check(["--asgi", "asgi_single_phase:app", "--pythonpath", site], probe_cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\nprocesses: each worker process runs uvloop 0.21.0 (--loop auto)\n" in result.stdout, result.stdout
    assert "in parallel on every core, each on uvloop 0.21.0;" in result.stdout, result.stdout
    code, doc = check_json(["--asgi", "asgi_single_phase:app", "--pythonpath", site], probe_cache)
    assert rows(doc)["processes"]["event_loop"] == {"loop": "uvloop", "uvloop_version": "0.21.0",
                                                     "uvloop_error": ""}, rows(doc)["processes"]
    assert doc["recommendation"]["strategy"] == "processes", doc["recommendation"]

    # Not an ASGI app: no event loop to name.
    code, doc = check_json(["--app", "handlers.demo", "--pythonpath", site], probe_cache)
    assert all(r["event_loop"] is None for r in doc["rows"]), doc["rows"]
    assert "event loop" not in check(["--app", "handlers.demo"], probe_cache).stdout


def test_check_is_fast_when_cached(gilgamesh_bin, probe_cache):
    check(["--app", "handlers.demo"], probe_cache)  # cold: fills the cache
    code, doc = check_json(["--app", "handlers.demo"], probe_cache)
    assert code == 0
    assert all(r.get("cached", True) for r in doc["rows"] if r["outcome"] != "unavailable"), doc["rows"]


# --- --strategy auto -------------------------------------------------------------

@pytest.mark.parametrize("app, expected, reason", [
    ("handlers.demo", "subinterpreters", "loads in own-GIL sub-interpreters"),
    ("two_single_phase", "processes", "gil_unaware"),
    ("imports_crasher", "processes", "crash_in_subinterpreter"),
])
def test_strategy_auto_picks_as_documented(gilgamesh_bin, probe_cache, app, expected, reason):
    server = GilgameshServer("auto", workers=2, app=app, env=probe_cache,
                             args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(EXT_DIR)])
    try:
        server.start()
        line = next((l for l in server.log().splitlines() if "strategy auto -> " in l), "")
        assert "strategy auto -> %s:" % expected in line and reason in line, server.log()
        stats = server.get("/stats").json()
        assert stats["strategy"] == expected and reason in stats["strategy_auto"], stats
        assert server.stop() == 0
    finally:
        server.kill()


def test_explicit_strategy_is_not_marked_auto(gilgamesh_bin):
    server = GilgameshServer("threads", workers=1)
    try:
        server.start()
        assert server.get("/stats").json()["strategy_auto"] is None
        assert server.stop() == 0
    finally:
        server.kill()
