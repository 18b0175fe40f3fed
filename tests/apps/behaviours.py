"""Test app: one route per kind of handler result and failure the server must convert."""

import gilgamesh


@gilgamesh.route("/ok")
def ok(request):
    """Answers {"ok": true}: proves the worker still serves after a failure."""
    return {"ok": True}


@gilgamesh.route("/raise")
def raise_value_error(request):
    """Raises an unexpected ValueError: must become a 500 naming the type."""
    raise ValueError("boom from the handler")


@gilgamesh.route("/teapot")
def teapot(request):
    """Raises HTTPError(418, "teapot")."""
    raise gilgamesh.HTTPError(418, "teapot")


@gilgamesh.route("/custom", methods=("GET", "POST"))
def custom(request):
    """A full Response: status 201, an extra header and a chosen content type."""
    return gilgamesh.Response("a,b\n1,2\n", status=201, headers={"X-Custom": "1"},
                              content_type="text/csv")


@gilgamesh.route("/bytes")
def raw_bytes(request):
    """Returns bytes, including ones that are not UTF-8."""
    return b"\x00\x01binary\xff"


@gilgamesh.route("/text")
def text(request):
    """Returns a non-ASCII str."""
    return "grüße ☃"


@gilgamesh.route("/list")
def a_list(request):
    """Returns a JSON list."""
    return [1, "two", {"three": 3}, None]


@gilgamesh.route("/none")
def nothing(request):
    """Returns None: 204 without a body."""
    return None


@gilgamesh.route("/unsupported")
def unsupported(request):
    """Returns a set, which the server cannot serialise."""
    return {1, 2, 3}


@gilgamesh.route("/echo", methods=("GET", "POST", "PUT"))
def echo(request):
    """Echoes method, path, query, a header and the body length as the handler sees them."""
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "x_test": request.headers.get("x-test", None),
        "body_length": len(request.body),
        "request_id": request.request_id,
    }


@gilgamesh.route("/exit")
def exit_process(request):
    """Calls os._exit(3): under an in-process strategy it raises ProcessExitRefused (500);
    under processes the worker exits (502, replaced)."""
    import os
    os._exit(3)


@gilgamesh.route("/abort")
def abort_process(request):
    """Calls os.abort(): as /exit."""
    import os
    os.abort()


@gilgamesh.route("/exec")
def exec_program(request):
    """Calls os.execl("/bin/true", "true"), which would replace the process: under an
    in-process strategy it raises ProcessExitRefused (500)."""
    import os
    os.execl("/bin/true", "true")


@gilgamesh.route("/fork-return")
def fork_return(request):
    """Forks, and the child returns from the handler too (no os._exit): the server's copy
    exits where the answer would leave, and only the parent's reaches the client. ?sleep=S:
    the child sleeps S seconds first (it holds what it inherited meanwhile), after creating
    the file ?ready= names, if any. Where the interpreter may not fork (a sub-interpreter),
    says so."""
    import os
    import time
    try:
        pid = os.fork()
    except RuntimeError as e:  # sub-interpreters may not fork
        return {"forked": False, "why": str(e)}
    if pid == 0:
        if request.query.get("ready"):
            open(request.query["ready"], "w").close()
        time.sleep(float(request.query.get("sleep", "0")))
        return {"forked": True, "from": "the child"}
    return {"forked": True, "child": pid}


@gilgamesh.route("/signal-self")
def signal_self(request):
    """Sends this process a signal, as ?call= says (kill, killpg, raise, pthread_kill, alarm,
    setitimer), ?sig= names (TERM, KILL, STOP, USR1, 0, CHLD...): under an in-process
    strategy the ones that would end or stop the server raise ProcessExitRefused (500);
    harmless ones (0, CHLD) answer {"sent": ...}."""
    import os
    import signal
    import threading
    call = request.query.get("call", "kill")
    name = request.query.get("sig", "TERM")
    sig = 0 if name == "0" else getattr(signal, "SIG" + name)
    if call == "kill":
        os.kill(os.getpid(), sig)
    elif call == "killpg":
        os.killpg(os.getpgrp(), sig)
    elif call == "raise":
        signal.raise_signal(sig)
    elif call == "pthread_kill":
        signal.pthread_kill(threading.get_ident(), sig)
    elif call == "alarm":
        signal.alarm(1)
    elif call == "setitimer":
        signal.setitimer(signal.ITIMER_REAL, 0.5)
    else:
        raise gilgamesh.HTTPError(400, "unknown call")
    return {"sent": call, "sig": name}


@gilgamesh.route("/fork-exit")
def fork_exit(request):
    """Forks a child that calls os._exit(7) and answers its exit code: a forked child
    still exits. Where the interpreter may not fork (a sub-interpreter), says so."""
    import os
    try:
        pid = os.fork()
    except RuntimeError as e:  # sub-interpreters may not fork
        return {"forked": False, "why": str(e)}
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return {"forked": True, "exit_code": os.waitstatus_to_exitcode(status)}


@gilgamesh.route("/broken-pipe")
def broken_pipe(request):
    """Writes to a pipe whose reader is closed, as `python` lets a program do: it raises
    BrokenPipeError (with SIGPIPE's default action the process would end instead)."""
    import os
    reader, writer = os.pipe()
    os.close(reader)
    try:
        os.write(writer, b"x")
    except BrokenPipeError:
        return {"raised": "BrokenPipeError"}
    finally:
        os.close(writer)
    return {"raised": None}


@gilgamesh.route("/child-sigpipe")
def child_sigpipe(request):
    """Starts `yes` with subprocess, reads 2 bytes and closes its pipe: a child gets SIGPIPE's
    default action back (restore_signals), so `yes` ends by SIGPIPE (returncode -13), as
    under `python`; with SIGPIPE blocked or ignored it would print "Broken pipe" and exit 1."""
    import subprocess
    child = subprocess.Popen(["yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = child.stdout.read(2)
    child.stdout.close()
    stderr = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    return {"read": first.decode(), "returncode": child.wait(timeout=10), "stderr": stderr}


def in_a_spawned_child(n):
    """Runs in a spawn pool's child, which imports this module again, and with it `gilgamesh`
    (the server's pure-Python copy for such children: pyworkers/outside)."""
    import math
    return [math.factorial(n), gilgamesh.worker_info()["strategy"], gilgamesh.Response("x").status]


@gilgamesh.route("/python-child")
def python_child(request):
    """What runs sys.executable: a child Python (subprocess), and a process pool with
    multiprocessing's spawn start method (where the interpreter allows the pool's daemon
    threads: a sub-interpreter does not), given a function of this module. Both run the
    embedded CPython's own python."""
    import multiprocessing
    import subprocess
    import sys
    from concurrent.futures import ProcessPoolExecutor
    child = subprocess.run([sys.executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2], sys.prefix)"],
                           capture_output=True, text=True, timeout=30)
    answer = {"executable": sys.executable, "child": child.stdout.split(),
              "parent": ["%d.%d" % sys.version_info[:2], sys.prefix]}
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            answer["pool"] = list(pool.map(in_a_spawned_child, range(5)))
    except Exception as e:  # concurrent.futures.process.BrokenProcessPool, from the daemon thread refused
        answer["pool"] = "%s: %s" % (type(e).__name__, e)
    return answer
