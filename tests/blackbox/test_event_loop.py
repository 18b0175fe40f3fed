"""--loop: the event loop of an ASGI app's worker processes (`processes`).

uvloop comes from Debian trixie's python3-uvloop (make trixie-site), built for the 3.13 we
embed. The servers here run `--loop uvloop` and serve test_asgi's conformance app and
test_websockets' raw app; the tests below that are imported from those modules run here
again, against these servers (the fixtures of the same names): the scope, bodies in
chunks, streaming with backpressure, disconnects, protocol violations, deadlines, a loop
that spins, the capacity limit, 1000 sleeping requests, WebSocket messages and closes.
Those that start servers of their own (recycling, a worker process killed, a loop stuck in
C) start them on uvloop too: test_asgi.serve is wrapped for this module.
The other modules serve the conformance app on asyncio's loop (no uvloop on their path)
and the Starlette apps on uvloop (`--loop auto` finds it beside Starlette).
"""

import os

import pytest

import test_asgi
from gilgamesh_harness import APPS_DIR, find_trixie_site, run_cli, strategies
from test_asgi import (DEADLINE_S, ROOT, Events, asgi_args, serve, stop_cleanly,  # noqa: F401
                       test_1000_concurrent_sleeping_requests_on_2_workers,
                       test_a_loop_stuck_in_c_is_replaced_and_a_new_worker_serves,
                       test_a_worker_process_that_dies_costs_only_what_its_loop_held,
                       test_recycling_lets_in_flight_requests_finish,
                       test_a_1_mib_body_arrives_in_several_messages,
                       test_a_client_that_leaves_mid_stream_stops_the_app,
                       test_a_deadline_cancels_the_task_with_504,
                       test_a_disconnect_mid_request_is_seen_by_the_app,
                       test_a_handler_that_spins_the_loop_is_interrupted_and_the_worker_serves_again,
                       test_a_protocol_violation_is_answered_and_logged,
                       test_after_the_response_receive_gives_disconnect,
                       test_head_and_first_chunk_arrive_before_the_app_ends,
                       test_scope_has_every_key_with_its_type,
                       test_scope_state_is_a_shallow_copy_of_the_lifespan_state,
                       test_send_awaits_a_slow_client,
                       test_worker_connections_then_the_queue_then_503)
from test_websockets import (test_echo_text_and_binary, test_fragmented_messages_are_reassembled,  # noqa: F401
                             test_messages_keep_their_order, test_the_app_closes_with_code_and_reason,
                             test_the_client_closes_with_code_and_reason)

if os.environ.get("GILGAMESH_SANITIZED"):
    # uvloop changes only the Python side of a worker process: its C++ path is test_asgi's,
    # which the sanitized pass runs on processes.
    pytest.skip("not in the sanitized pass (see the comment above)", allow_module_level=True)

UVLOOP = "uvloop 0.21"  # trixie's python3-uvloop, as the start-up log names it


@pytest.fixture(scope="session")
def strategy():
    """uvloop runs in worker processes only (--strategy processes)."""
    if "processes" not in strategies():
        pytest.skip("processes is not in GILGAMESH_STRATEGIES")
    return "processes"


@pytest.fixture(scope="session")
def uvloop_site(strategy):
    """Every server here depends on it, so all skip with `strategy` when processes is not declared."""
    return find_trixie_site(["python3-uvloop"])


def serve_on_uvloop(spec, events, uvloop_site, args=(), workers=2):
    return serve("processes", spec, events, workers=workers, args=["--loop", "uvloop", *args],
                 pythonpath=(APPS_DIR, uvloop_site))


@pytest.fixture(scope="module", autouse=True)
def servers_of_their_own_on_uvloop(uvloop_site):
    """The imported tests that start a server of their own (test_asgi.serve) start it on uvloop."""
    def on_uvloop(strategy, spec, events, workers=2, args=(), env=None, pythonpath=(APPS_DIR,)):
        return serve(strategy, spec, events, workers=workers, args=["--loop", "uvloop", *args], env=env,
                     pythonpath=(*pythonpath, uvloop_site))
    test_asgi.serve = on_uvloop
    yield
    test_asgi.serve = serve


def serving(spec, events, uvloop_site, args):
    """A module fixture's body: the server on uvloop, stopped cleanly after the module."""
    server = serve_on_uvloop(spec, events, uvloop_site, args=args)
    yield server
    stop_cleanly(server)


@pytest.fixture(scope="module")
def conf_events(tmp_path_factory):
    return Events(tmp_path_factory.mktemp("loop-conf") / "events.log")


@pytest.fixture(scope="module")
def conf(gilgamesh_bin, conf_events, uvloop_site):
    """test_asgi's conformance server, on uvloop."""
    yield from serving("asgi_conformance:app", conf_events, uvloop_site, ["--root-path", ROOT])


@pytest.fixture(scope="module")
def deadline_events(tmp_path_factory):
    return Events(tmp_path_factory.mktemp("loop-deadline") / "events.log")


@pytest.fixture(scope="module")
def deadline(gilgamesh_bin, deadline_events, uvloop_site):
    """test_asgi's deadline server (--timeout 3, 2 requests per worker, a queue of 1), on uvloop."""
    yield from serving("asgi_conformance:create_app()", deadline_events, uvloop_site,
                       ["--timeout", DEADLINE_S, "--worker-connections", 2, "--max-queue", 1])


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return Events(tmp_path_factory.mktemp("loop-ws") / "events.log")


@pytest.fixture(scope="module")
def server(gilgamesh_bin, events, uvloop_site):
    """test_websockets' raw WebSocket server, on uvloop."""
    yield from serving("asgi_websocket:app", events, uvloop_site, ["--root-path", ROOT])


def test_servers_of_their_own_run_uvloop(gilgamesh_bin, tmp_path):
    server = test_asgi.serve("processes", "asgi_conformance:app", Events(tmp_path / "events.log"), workers=1)
    try:
        assert server.get("/loop").json()["loop"] == "uvloop.Loop"
    finally:
        stop_cleanly(server)


def test_the_log_names_uvloop_and_each_worker_runs_it(conf):
    log = conf.log()
    assert "event loop of each worker process: %s" % UVLOOP in log and "(--loop uvloop)" in log, log[-3000:]
    loops = {conf.get(ROOT + "/loop").json()["loop"] for _ in range(8)}
    assert loops == {"uvloop.Loop"}, loops


def test_loop_auto_takes_uvloop_where_it_can_be_imported_else_asyncio(gilgamesh_bin, tmp_path, uvloop_site):
    # The first is docs/asgi.md's example line, whole.
    for pythonpath, expected, said in (((APPS_DIR, uvloop_site), "uvloop.Loop", "uvloop 0.21.0 (--loop auto)"),
                                       ((APPS_DIR,), "asyncio.unix_events._UnixSelectorEventLoop", "asyncio's (--loop auto; uvloop:")):
        events = Events(tmp_path / ("events-%d.log" % len(pythonpath)))
        server = serve("processes", "asgi_conformance:app", events, workers=1, pythonpath=pythonpath)
        try:
            assert server.get("/loop").json()["loop"] == expected, server.log()[-3000:]
            assert "event loop of each worker process: " + said in server.log(), server.log()[-3000:]
        finally:
            stop_cleanly(server)


def test_loop_asyncio_keeps_asyncio_with_uvloop_at_hand(gilgamesh_bin, tmp_path, uvloop_site):
    server = serve("processes", "asgi_conformance:app", Events(tmp_path / "events.log"), workers=1,
                   args=["--loop", "asyncio"], pythonpath=(APPS_DIR, uvloop_site))
    try:
        assert server.get("/loop").json()["loop"] == "asyncio.unix_events._UnixSelectorEventLoop"
        assert "uvloop" not in server.log()
    finally:
        stop_cleanly(server)


def test_loop_uvloop_without_uvloop_refuses_to_start_saying_so(gilgamesh_bin):
    result = run_cli(asgi_args("processes", "asgi_conformance:app", "--loop", "uvloop",
                               "--pythonpath", str(APPS_DIR)))
    assert result.returncode == 1, result
    assert "--loop uvloop, but the worker processes cannot import uvloop" in result.stderr, result.stderr
    assert "No module named 'uvloop'" in result.stderr and "--loop asyncio" in result.stderr, result.stderr


def test_loop_uvloop_with_strategy_auto_that_chose_in_process_refuses_to_start(gilgamesh_bin, uvloop_site):
    args = asgi_args("processes", "asgi_conformance:app", "--loop", "uvloop", "--pythonpath", str(APPS_DIR),
                     "--pythonpath", str(uvloop_site))
    args[args.index("--strategy") + 1] = "auto"
    result = run_cli(args)
    assert result.returncode == 1, result
    assert "--loop uvloop runs in worker processes (--strategy processes), but --strategy auto chose" \
        in result.stderr, result.stderr
