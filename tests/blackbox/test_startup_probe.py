"""The start-up probe (pyworkers/embedding/probe.hpp): before `subinterpreters` workers start, the
app is imported in a disposable process, so that an import that crashes CPython ends
that process and not the server; a refused app is named with every module it needs
that sub-interpreters refuse; the result is cached; `--preload` imports the app in the
main interpreter first.

The extensions come from tests/ext, built for each Python build into build/test-ext/.
"""

import os
import subprocess
import time

import pytest

from gilgamesh_harness import (APPS_DIR, REPO, GilgameshServer, assert_no_sanitizer_report,
                               binary_path, free_port, scaled, strategies)

EXT_DIR = binary_path().parent / "test-ext" / "default"




def start_and_fail(args, env=None, timeout=60):
    """Runs a server start that must be refused; returns (exit status, stderr)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([str(binary_path()), "--host", "127.0.0.1", "--port", str(free_port()),
                             "--workers", "2", "--pythonpath", str(APPS_DIR),
                             "--pythonpath", str(EXT_DIR), *args],
                            cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=scaled(timeout))
    assert_no_sanitizer_report(result.stdout + result.stderr, "gilgamesh %s" % " ".join(args))
    return result.returncode, result.stderr


def serve(strategy, app, args=(), env=None):
    return GilgameshServer(strategy, workers=2, app=app, env=env,
                           args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(EXT_DIR), *args])


def test_test_extensions_are_built(gilgamesh_bin):
    for name in ("crash_in_subinterpreter", "pyinit_imports", "pyinit_raises", "gil_unaware",
                 "shared_gil_only"):
        assert list(EXT_DIR.glob(name + ".*.so")), "%s not built in %s" % (name, EXT_DIR)


def test_import_that_kills_a_subinterpreter_is_named_and_the_server_exits_1(gilgamesh_bin, probe_cache):
    code, err = start_and_fail(["--app", "imports_crasher", "--strategy", "subinterpreters"], probe_cache)
    assert code == 1, (code, err)  # refused, not killed by a signal
    assert "during the import of crash_in_subinterpreter (imported by imports_crasher)" in err, err
    assert "SIGABRT" in err, err
    assert "--strategy processes" in err, err


def test_import_that_kills_a_subinterpreter_is_refused_on_every_start(gilgamesh_bin, probe_cache):
    # A crash is never cached: the second start probes again and refuses again.
    for _ in range(2):
        code, err = start_and_fail(["--app", "imports_crasher", "--strategy", "subinterpreters"],
                                   probe_cache)
        assert code == 1 and "crash_in_subinterpreter" in err, (code, err)
        assert "cached" not in err, err


@pytest.mark.parametrize("strategy", [s for s in strategies() if s in ("threads", "processes")])
def test_the_same_app_serves_where_it_is_imported_in_the_main_interpreter(gilgamesh_bin, strategy):
    server = serve(strategy, "imports_crasher")
    try:
        server.start()
        r = server.get("/answer")
        assert r.status == 200 and r.json() == {"answer": 42}, r
        assert server.stop() == 0
    finally:
        server.kill()


def test_every_refused_module_is_named_in_one_message(gilgamesh_bin, probe_cache):
    code, err = start_and_fail(["--app", "two_single_phase", "--strategy", "subinterpreters"], probe_cache)
    assert code == 1, (code, err)
    line = next((l for l in err.splitlines() if "cannot load app 'two_single_phase'" in l), "")
    assert "gil_unaware" in line, err
    assert any(name in line for name in ("_curses", "readline", "_tkinter", "_testsinglephase",
                                         "xxlimited_35")), err
    assert "single-phase-init C extensions, which sub-interpreters refuse" in line, err
    assert "they load under --strategy processes or --strategy threads" in line, err


def test_each_refused_extension_is_given_its_own_reason(gilgamesh_bin, probe_cache):
    # CPython's ImportError reads the same for a single-phase init and for a multi-phase one
    # that does not declare per-interpreter GIL support (Cython's builds): the message must
    # not call the second single-phase, nor tell its user to look for a multi-phase release.
    code, err = start_and_fail(["--app", "two_refusal_kinds", "--strategy", "subinterpreters"], probe_cache)
    assert code == 1, (code, err)
    line = next((l for l in err.splitlines() if "cannot load app 'two_refusal_kinds'" in l), "")
    assert "C extensions that own-GIL sub-interpreters refuse: gil_unaware: single-phase init; " \
        "shared_gil_only: no per-interpreter GIL; they load under --strategy processes" in line, err


def test_a_multi_phase_extension_without_own_gil_support_is_named_as_such(gilgamesh_bin, probe_cache,
                                                                          tmp_path):
    (tmp_path / "shared_gil_app.py").write_text(
        "import gilgamesh\nimport shared_gil_only\n\n@gilgamesh.route('/x')\ndef x(request):\n"
        "    return str(shared_gil_only.answer())\n")
    code, err = start_and_fail(["--app", "shared_gil_app", "--pythonpath", str(tmp_path),
                                "--strategy", "subinterpreters"], probe_cache)
    assert code == 1, (code, err)
    line = next((l for l in err.splitlines() if "cannot load app 'shared_gil_app'" in l), "")
    assert "shared_gil_only: a C extension that does not declare support for a per-interpreter GIL, " \
        "which own-GIL sub-interpreters refuse; it loads under --strategy processes" in line, err
    assert "single-phase" not in line, err


@pytest.mark.parametrize("extension", ["pyinit_imports", "pyinit_raises"])
def test_both_crash_shapes_are_refused_cleanly(gilgamesh_bin, probe_cache, tmp_path, extension):
    # A single-phase PyInit that imports a Python module (gh-138045) or raises (gh-144601),
    # imported first in a sub-interpreter: a clean refusal naming it on the bundled (patched)
    # CPython, the probe's crash report on an unpatched one; never the server's death.
    (tmp_path / "shape_app.py").write_text(
        "import gilgamesh\nimport %s\n\n@gilgamesh.route('/x')\ndef x(request):\n    return 'x'\n"
        % extension)
    code, err = start_and_fail(["--app", "shape_app", "--pythonpath", str(tmp_path),
                                "--strategy", "subinterpreters"], probe_cache)
    assert code == 1, (code, err)
    assert extension in err, err
    if extension == "pyinit_imports":  # loads in the main interpreter; pyinit_raises never loads
        assert "--strategy processes" in err, err


def test_fallback_app_serves_in_subinterpreters_with_and_without_preload(gilgamesh_bin):
    for args in ([], ["--preload"]):
        server = serve("subinterpreters", "single_phase_fallback", args=args)
        try:
            server.start()
            r = server.get("/implementation")
            assert r.status == 200 and r.json() == {"implementation": "python"}, (args, r)
            assert server.stop() == 0
        finally:
            server.kill()


@pytest.mark.parametrize("strategy", [s for s in strategies() if s in ("threads", "processes")])
def test_preload_is_accepted_by_the_other_strategies(gilgamesh_bin, strategy):
    server = serve(strategy, "single_phase_fallback", args=["--preload"])
    try:
        server.start()
        assert server.get("/implementation").json() == {"implementation": "c"}
        assert server.stop() == 0
    finally:
        server.kill()


def probe_log_line(server):
    return next((l for l in server.log().splitlines() if "start-up probe:" in l), "")


def test_probe_result_is_cached_until_a_file_changes(gilgamesh_bin, probe_cache, tmp_path):
    app = tmp_path / "probed_app.py"
    app.write_text("import gilgamesh\n\n@gilgamesh.route('/v')\ndef v(request):\n    return 'one'\n")
    lines = []
    for step in ("cold", "warm", "changed"):
        if step == "changed":
            app.write_text("import gilgamesh\n\n@gilgamesh.route('/v')\ndef v(request):\n    return 'two'\n")
            later = time.time() + 5
            os.utime(app, (later, later))
        server = GilgameshServer("subinterpreters", workers=1, app="probed_app", env=probe_cache,
                                 args=["--pythonpath", str(tmp_path)])
        try:
            server.start()
            assert server.get("/v").text == ("two" if step == "changed" else "one")
            lines.append(probe_log_line(server))
            assert server.stop() == 0
        finally:
            server.kill()
    cold, warm, changed = lines
    assert "loads in a sub-interpreter" in cold and "cached" not in cold, lines
    assert "loads in a sub-interpreter" in warm and "cached" in warm, lines
    assert "cached" not in changed, lines


def test_a_refusal_is_probed_again_once_the_app_is_edited(gilgamesh_bin, probe_cache, tmp_path):
    # A refusal is cached too, keyed by the files of the modules imported; the app's own
    # module, whose import failed, was not among them (it is not in sys.modules): an app
    # edited in place to drop the refused import was refused again from the cache.
    app = tmp_path / "edited_app.py"
    app.write_text("import gilgamesh\nimport single_phase_ext\n")
    for attempt in ("cold", "cached"):
        code, err = start_and_fail(["--app", "edited_app", "--pythonpath", str(tmp_path),
                                    "--strategy", "subinterpreters"], probe_cache)
        assert code == 1 and "single-phase" in err, (attempt, code, err)
        assert ("cached" in err) == (attempt == "cached"), (attempt, err)
    app.write_text("import gilgamesh\n\n@gilgamesh.route('/v')\ndef v(request):\n    return 'edited'\n")
    later = time.time() + 5
    os.utime(app, (later, later))
    server = serve("subinterpreters", "edited_app", args=["--pythonpath", str(tmp_path)], env=probe_cache)
    try:
        server.start()
        assert server.get("/v").text == "edited"
        assert "cached" not in probe_log_line(server), server.log()
        assert server.stop() == 0
    finally:
        server.kill()


def test_threads_probe_in_the_main_interpreter_and_processes_not_at_all(gilgamesh_bin, probe_cache):
    server = GilgameshServer("threads", workers=1, env=probe_cache)
    try:
        server.start()
        assert "loads in the main interpreter" in probe_log_line(server), server.log()
        assert server.stop() == 0
    finally:
        server.kill()
    # The zygote imports the app in a process of its own: a crash there ends only the zygote.
    server = GilgameshServer("processes", workers=1, env=probe_cache)
    try:
        server.start()
        assert probe_log_line(server) == "", server.log()
        assert server.stop() == 0
    finally:
        server.kill()
