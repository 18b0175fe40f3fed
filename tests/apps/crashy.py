"""Test app for `--strategy processes`: handlers that end their own process.

If the environment names a file in CRASHY_DIE_AT_START and that file exists
when a worker is forked, the worker exits with status 7 before it is ready:
a worker that keeps dying at start-up.
"""

import os
import signal
import time

import gilgamesh


def _die_at_start_if_asked():
    marker = os.environ.get("CRASHY_DIE_AT_START")
    if marker and os.path.exists(marker):
        os._exit(7)


# Runs in each worker right after the zygote forks it (PyOS_AfterFork_Child).
os.register_at_fork(after_in_child=_die_at_start_if_asked)


@gilgamesh.route("/hello")
def hello(request):
    """Plain text: the worker is alive."""
    return "hello"


@gilgamesh.route("/pid")
def pid(request):
    """The process and worker index that answered."""
    info = gilgamesh.worker_info()
    return {"pid": os.getpid(), "worker": info["worker"], "strategy": info["strategy"]}


@gilgamesh.route("/slow")
def slow(request):
    """Sleeps ?ms= milliseconds (default 50), then answers like /pid."""
    time.sleep(int(request.query.get("ms", "50")) / 1000.0)
    return {"pid": os.getpid(), "worker": gilgamesh.worker_info()["worker"]}


@gilgamesh.route("/crash")
def crash(request):
    """Ends this worker process: ?how=segv (SIGSEGV, the default), exit (os._exit(3)), abort."""
    how = request.query.get("how", "segv")
    if how == "exit":
        os._exit(3)
    if how == "abort":
        os.abort()
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)  # not reached: the signal is delivered before kill() returns
    return "survived"


@gilgamesh.route("/echo", methods=("POST",))
def echo(request):
    """The request body, as bytes."""
    return gilgamesh.Response(request.body, content_type="application/octet-stream")
