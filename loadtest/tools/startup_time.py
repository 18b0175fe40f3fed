"""Start-up time per strategy: from exec until every worker is ready, N starts in a row.

For each strategy, starts the server N times (8 workers by default), and for each start
records two figures:
- exec to ready: from Popen until GET /readyz answers 200 (polled every 5 ms), what a
  client or an orchestrator's readiness probe sees, Python's own initialization included;
- workers: the server's own "N workers ready in M ms" log line (the worker pool's
  start-up alone, after Python is initialized).
Then GET /hello (every start must serve), SIGTERM, and the exit status must be 0 (a
negative status is a crash: the run stops with an error).

Prints one Markdown table: median and max of both figures per strategy.

Usage (from the repository root):
    /usr/bin/python3 loadtest/tools/startup_time.py [--binary build/gilgamesh]
        [--binary-ft build/gilgamesh-ft] [--strategies subinterpreters,processes,threads,free-threaded]
        [--workers 8] [--runs 10] [--app handlers.demo]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from served import REPO, free_port, get, wait_ready

READY_RE = re.compile(r"(\d+) workers ready in (\d+) ms")


def one_start(binary, strategy, workers, app, timeout=60):
    """(exec-to-ready ms, workers-ready ms from the log)."""
    port = free_port()
    cmd = [binary, "--port", str(port), "--strategy", strategy, "--workers", str(workers),
           "--app", app]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        if not wait_ready(proc, port, started + timeout, pace=0.005):
            raise SystemExit("%s: not ready (exit status %r)" % (" ".join(cmd), proc.poll()))
        ready_ms = (time.monotonic() - started) * 1000.0
        status, _ = get(port, "/hello", timeout=10)
        if status != 200:
            raise SystemExit("%s: GET /hello answered %d" % (" ".join(cmd), status))
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit("%s: exit status %d after SIGTERM\n%s" % (
            " ".join(cmd), proc.returncode, err.decode(errors="replace")[-2000:]))
    m = READY_RE.search(err.decode(errors="replace"))
    return ready_ms, float(m.group(2)) if m else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=os.path.join(REPO, "build", "gilgamesh"))
    p.add_argument("--binary-ft", default=os.path.join(REPO, "build", "gilgamesh-ft"))
    p.add_argument("--strategies", default="subinterpreters,processes,threads,free-threaded")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--app", default="handlers.demo")
    a = p.parse_args()
    print("%d workers, %d starts each, app %s; ms" % (a.workers, a.runs, a.app))
    print("| strategy | exec to ready, median | max | workers ready (log), median | max |")
    print("|---|---:|---:|---:|---:|")
    for strategy in a.strategies.split(","):
        binary = a.binary_ft if strategy == "free-threaded" else a.binary
        if not os.access(binary, os.X_OK):
            print("| `%s` | (no %s) | | | |" % (strategy, binary))
            continue
        runs = [one_start(binary, strategy, a.workers, a.app) for _ in range(a.runs)]
        ready = [r[0] for r in runs]
        pool = [r[1] for r in runs]
        print("| `%s` | %.0f | %.0f | %.0f | %.0f |" % (
            strategy, statistics.median(ready), max(ready), statistics.median(pool), max(pool)),
            flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
