"""--reload (server/reload.cpp), for development as uvicorn's: a supervisor binds the port once,
runs the server as its child and starts a new one when a *.py file under --reload-dir changes.

On every strategy: an edit of the app's module or of a module it imports is served after the
restart, with no connection refused meanwhile; an app that fails to import stops the server
but not the supervisor, which starts it again once the file is fixed; SIGTERM stops both with
status 0; a supervisor killed outright takes its server along."""

import os
import pty
import signal
import socket
import threading
import time

import pytest

from gilgamesh_harness import GilgameshServer, free_port, run_cli, scaled, wait_for

# The supervisor is the same code whatever the server's strategy: once under the sanitizers.
SANITIZED_STRATEGIES = ("subinterpreters",)

APP_V1 = '''
import os

import gilgamesh
import helpers.text


@gilgamesh.route("/v")
def v(request):
    return {"version": VERSION, "text": helpers.text.TEXT, "pid": os.getpid()}


VERSION = 1
'''


def write(path, text):
    """Writes and moves the modification time on, so the change is seen whatever the clock's grain."""
    path.write_text(text)
    later = time.time() + 2
    os.utime(path, (later, later))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("")
    (tmp_path / "helpers" / "text.py").write_text("TEXT = 'a'\n")
    (tmp_path / "reloaded_app.py").write_text(APP_V1)
    return tmp_path


def reloading(strategy, project, workers=2, stdin=None, preexec_fn=None):
    return GilgameshServer(strategy, workers=workers, app="reloaded_app", stdin=stdin, preexec_fn=preexec_fn,
                           args=["--reload", "--reload-dir", str(project), "--pythonpath", str(project)])


def served(server):
    r = server.get("/v", timeout=scaled(10))
    assert r.status == 200, r
    return r.json()


def wait_for_answer(server, predicate, what):
    seen = []

    def check():
        try:
            seen.append(served(server))
        except (OSError, AssertionError) as e:
            seen.append(repr(e))
            return False
        return predicate(seen[-1])
    wait_for(check, what, timeout=30, interval=0.1)
    return seen[-1]


def test_edits_are_served_after_a_restart_and_connections_wait_meanwhile(strategy, project):
    server = reloading(strategy, project).start()
    try:
        first = served(server)
        assert first["version"] == 1 and first["text"] == "a", first
        # Clients keep asking through the restart: none is refused (the supervisor's socket
        # stays open, new connections wait in its backlog for the next server).
        failures, answers, done = [], [], threading.Event()

        def ask():
            while not done.is_set():
                try:
                    answers.append(served(server)["version"])
                except Exception as e:  # recorded, asserted below
                    failures.append(repr(e))
        clients = [threading.Thread(target=ask) for _ in range(2)]
        for t in clients:
            t.start()
        try:
            write(project / "reloaded_app.py", APP_V1.replace("VERSION = 1", "VERSION = 2"))
            second = wait_for_answer(server, lambda a: a["version"] == 2, "version 2 served")
        finally:
            done.set()
            for t in clients:
                t.join(timeout=30)
        assert not failures, failures[:5]
        assert answers and set(answers) <= {1, 2}, set(answers)
        assert second["pid"] != first["pid"], (first, second)  # another process serves
        assert server.alive()  # the supervisor is the process the harness started

        # A module the app imports, in a package under the watched folder.
        write(project / "helpers" / "text.py", "TEXT = 'b'\n")
        third = wait_for_answer(server, lambda a: a["text"] == "b", "helpers.text edited")
        assert third["version"] == 2, third
        assert "reloader: %s changed; restarting the server" % (project / "helpers" / "text.py") in server.log()
        assert server.stop() == 0, server.log()[-3000:]
    finally:
        server.kill()
    # Stopped as a whole: the port is free again.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))


def test_an_app_that_fails_to_import_waits_for_the_fix(project):
    server = reloading("subinterpreters", project, workers=1).start()
    try:
        write(project / "reloaded_app.py", "import gilgamesh\ndef broken(:\n")
        wait_for(lambda: "it starts again when a file changes" in server.log(), "the server's exit noticed",
                 timeout=30)
        assert server.alive()
        assert "SyntaxError" in server.log(), server.log()
        write(project / "reloaded_app.py", APP_V1.replace("VERSION = 1", "VERSION = 3"))
        assert wait_for_answer(server, lambda a: a["version"] == 3, "the fixed app served")["version"] == 3
        assert server.stop() == 0, server.log()[-3000:]
    finally:
        server.kill()


def test_a_supervisor_killed_outright_takes_its_server_along(project):
    server = reloading("threads", project, workers=1).start()
    try:
        child = served(server)["pid"]  # under threads, the server's
        assert child != server.process.pid
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=scaled(10))

        def gone():
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            with open("/proc/%d/stat" % child) as f:  # a zombie until init reaps it
                return f.read().split(")")[-1].split()[0] == "Z"
        wait_for(gone, "the server ended with its supervisor", timeout=30)
    finally:
        server.kill()


def test_sighup_to_the_supervisor_restarts_the_server(project):
    # As a file change would: a new server process, the supervisor (the harness's) stays.
    server = reloading("threads", project, workers=1).start()
    try:
        first = served(server)["pid"]  # under threads, the server's
        server.signal(signal.SIGHUP)
        again = wait_for_answer(server, lambda a: a["pid"] != first, "a new server after SIGHUP")
        assert again["version"] == 1 and server.alive(), again
        assert "reloader: received HUP; restarting the server" in server.log(), server.log()[-3000:]
        assert server.stop() == 0, server.log()[-3000:]
    finally:
        server.kill()


def test_under_nohup_the_supervisor_ignores_sighup(project):
    server = reloading("threads", project, workers=1,
                       preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)).start()
    try:
        child = served(server)["pid"]
        server.signal(signal.SIGHUP)
        time.sleep(0.5)  # what a restart would take at least: it must not begin
        assert served(server)["pid"] == child and server.alive()
        assert "HUP" not in server.log(), server.log()[-3000:]
        assert server.stop() == 0, server.log()[-3000:]
    finally:
        server.kill()


def test_a_terminal_that_hangs_up_stops_the_supervisor_and_its_server(project):
    # Closing the terminal of `gilgamesh --reload` ends the development server, as before.
    master, terminal = pty.openpty()
    try:
        server = reloading("threads", project, workers=1, stdin=terminal).start()
    finally:
        os.close(terminal)
    try:
        child = served(server)["pid"]
        os.close(master)
        server.signal(signal.SIGHUP)
        assert server.wait(timeout=30) == 0, server.log()[-3000:]
        assert "reloader: received HUP (the terminal hung up); stopping the server" in server.log(), server.log()[-3000:]
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    finally:
        server.kill()


def test_reload_include_and_exclude_choose_the_files(project):
    # As uvicorn's: a template edit restarts with --reload-include '*.html', a .env file named
    # exactly too; a module matched by --reload-exclude, or a folder, does not; *.py stays
    # watched.
    (project / "templates").mkdir()
    (project / "templates" / "page.html").write_text("<p>1</p>")
    (project / "scratch_notes.py").write_text("X = 1\n")
    (project / "vendor").mkdir()
    (project / "vendor" / "lib.py").write_text("Y = 1\n")
    server = GilgameshServer("subinterpreters", workers=1, app="reloaded_app", args=[
        "--reload", "--reload-dir", str(project), "--pythonpath", str(project),
        "--reload-include", "*.html", "--reload-include", ".env",
        "--reload-exclude", "scratch_*.py", "--reload-exclude", "vendor"]).start()
    try:
        first = served(server)
        write(project / "templates" / "page.html", "<p>2</p>")
        second = wait_for_answer(server, lambda a: a["pid"] != first["pid"], "a restart for the template")
        assert "reloader: %s changed" % (project / "templates" / "page.html") in server.log()
        write(project / "scratch_notes.py", "X = 2\n")
        write(project / "vendor" / "lib.py", "Y = 2\n")
        time.sleep(scaled(1.5))  # five polls and the settling time: a watched file would have restarted it
        assert served(server)["pid"] == second["pid"], server.log()[-3000:]
        log = server.log()
        assert "scratch_notes.py changed" not in log and "lib.py changed" not in log, log[-3000:]
        assert "(*.py *.html .env)" in log, log[-3000:]
        write(project / "reloaded_app.py", APP_V1.replace("VERSION = 1", "VERSION = 4"))
        third = wait_for_answer(server, lambda a: a["version"] == 4, "the app's edit served")
        assert third["pid"] != second["pid"], (second, third)
        # A name given exactly is watched though the default '.*' leaves hidden files out.
        write(project / ".env", "DEBUG=1\n")
        wait_for_answer(server, lambda a: a["pid"] != third["pid"], "a restart for .env")
        assert "reloader: %s changed" % (project / ".env") in server.log()
        assert server.stop() == 0, server.log()[-3000:]
    finally:
        server.kill()


def test_reload_dir_needs_reload():
    for flags in (["--reload-dir", "."], ["--reload-include", "*.html"], ["--reload-exclude", "x"]):
        result = run_cli([*flags, "--port", str(free_port())])
        assert result.returncode == 2, result
        assert "say what --reload watches; add --reload" in result.stderr, result.stderr
