"""One gilgamesh server for the measuring tools in this folder: started on a free
loopback port, ready (/readyz 200) when the `with` block begins, stopped after it."""

import contextlib
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "loadtest"))

from bench.procs import free_port, http_get as get  # noqa: E402,F401  (get: for the tools)


def wait_ready(proc, port, deadline, pace=0.02):
    """True once GET /readyz answers 200; False once `proc` has exited or `deadline`
    (time.monotonic()) has passed."""
    while True:
        try:
            if get(port, "/readyz", timeout=10)[0] == 200:
                return True
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(pace)  # polling pace


@contextlib.contextmanager
def served(binary, args, ready_timeout=60):
    """Yields (process, port) of `binary --port P --log-level warn *args`, once ready."""
    port = free_port()
    cmd = [binary, "--port", str(port), "--log-level", "warn"] + list(args)
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not wait_ready(proc, port, time.monotonic() + ready_timeout):
            why = proc.stderr.read()[-2000:].decode(errors="replace") \
                if proc.poll() is not None else "not ready within %d s" % ready_timeout
            raise SystemExit("%s did not become ready: %s" % (" ".join(cmd), why))
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
