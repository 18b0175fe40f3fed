#!/usr/bin/python3
"""What one request costs the server, in figures that load on the machine does not distort.

Starts the server (one strategy, N workers), runs wrk against one route, and divides by the
number of requests answered:

  ctx       voluntary / involuntary context switches of the server and its descendants
            (/proc/PID/task/*/status, before and after);
  syscalls  every system call of the server and its descendants by name, with strace -c -f
            attached for the run (strace slows the server; per-request counts stay valid);
  malloc    calls to libc malloc, counted by a uprobe with perf stat (needs root and
            `perf probe -x LIBC malloc` once; skipped when unavailable);
  profile   perf record -e cpu-clock -g of the server for the run; prints the top symbols.

Usage:
  /usr/bin/python3 loadtest/tools/dispatch_cost.py --binary build/gilgamesh \
      --strategy subinterpreters --workers 2 --measure ctx,syscalls,malloc [--connections 16] \
      [--seconds 5] [--path /hello] [-- extra server args]

Throughput figures this prints are wrk's and, on a shared machine, noise; the per-request
counts are the point.
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench.procs import Owned, descendants, free_port, wait_ready  # noqa: E402

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def tree(pid):
    return [pid] + descendants(pid)


def ctx_switches(pids):
    vol = invol = 0
    for pid in pids:
        for status in glob.glob("/proc/%d/task/*/status" % pid):
            try:
                with open(status) as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            invol += int(line.split()[1])
            except OSError:
                pass
    return vol, invol


def run_wrk(port, path, connections, seconds):
    out = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "30s",
                          "http://127.0.0.1:%d%s" % (port, path)],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError("wrk saw %s non-2xx responses:\n%s" % (non2xx.group(1), out))
    return int(m.group(1)), float(rps.group(1))


def route_requests(port):
    """Requests the server counted on its Python routes (wrk's count excludes those in flight)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/stats")
    stats = json.loads(conn.getresponse().read())
    conn.close()
    return sum(w["requests"] for w in stats["worker_details"])


def parse_strace(text):
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                pass
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="build/gilgamesh")
    ap.add_argument("--strategy", default="subinterpreters")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--path", default="/hello")
    ap.add_argument("--app", default="handlers.demo")
    ap.add_argument("--measure", default="ctx,syscalls,malloc")
    ap.add_argument("--perf-out", default=None, help="perf.data path for --measure profile")
    ap.add_argument("server_args", nargs="*")
    a = ap.parse_args()
    measures = set(a.measure.split(","))

    owned = Owned()
    port = free_port()
    cmd = [a.binary, "--host", "127.0.0.1", "--port", str(port), "--strategy", a.strategy,
           "--workers", str(a.workers), "--app", a.app] + a.server_args
    started = time.monotonic()
    proc = owned.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {"strategy": a.strategy, "workers": a.workers, "connections": a.connections,
              "path": a.path, "server_args": a.server_args}
    try:
        wait_ready(proc, started, port, a.workers, 60)
        run_wrk(port, a.path, a.connections, 1)  # warm-up
        pids = tree(proc.pid)

        if "ctx" in measures:
            before_req = route_requests(port)
            v0, i0 = ctx_switches(pids)
            n, rps = run_wrk(port, a.path, a.connections, a.seconds)
            v1, i1 = ctx_switches(tree(proc.pid))
            served = route_requests(port) - before_req
            result["rps_loaded_machine"] = rps
            result["ctx_voluntary_per_req"] = round((v1 - v0) / served, 3)
            result["ctx_involuntary_per_req"] = round((i1 - i0) / served, 3)

        if "syscalls" in measures:
            with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
                before_req = route_requests(port)
                st = subprocess.Popen(["strace", "-c", "-f", "-o", out.name] +
                                      sum((["-p", str(p)] for p in tree(proc.pid)), []),
                                      stderr=subprocess.DEVNULL)
                time.sleep(0.5)  # strace attaches to every thread; no way to ask it when done
                run_wrk(port, a.path, a.connections, a.seconds)
                st.send_signal(signal.SIGINT)
                st.wait(timeout=30)
                served = route_requests(port) - before_req - 1  # the /stats call above
                calls = parse_strace(open(out.name).read())
            per = {k: round(v / served, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])
                   if v / served >= 0.01}
            result["syscalls_per_req"] = round(sum(calls.values()) / served, 3)
            result["syscalls_by_name_per_req"] = per

        if "malloc" in measures:
            before_req = route_requests(port)
            pf = subprocess.Popen(["perf", "stat", "-x,", "-e", "probe_libc:malloc", "-p",
                                   ",".join(str(p) for p in tree(proc.pid))],
                                  stderr=subprocess.PIPE, text=True)
            time.sleep(0.3)
            run_wrk(port, a.path, a.connections, a.seconds)
            pf.send_signal(signal.SIGINT)
            err = pf.communicate(timeout=30)[1]
            served = route_requests(port) - before_req
            m = re.search(r"^(\d+),,probe_libc:malloc", err, re.M)
            result["malloc_per_req"] = round(int(m.group(1)) / served, 2) if m else "n/a: " + err.strip()[-200:]

        if "profile" in measures:
            data = a.perf_out or tempfile.mktemp(suffix=".perf.data")
            pf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", data, "-p",
                                   ",".join(str(p) for p in tree(proc.pid))],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            run_wrk(port, a.path, a.connections, a.seconds)
            pf.send_signal(signal.SIGINT)
            pf.wait(timeout=60)
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym",
                                  "--stdio", "-g", "none", "--percent-limit", "1.5"],
                                 capture_output=True, text=True).stdout
            result["profile_top"] = [l.strip() for l in rep.splitlines() if l.strip() and not l.startswith("#")][:30]
            result["perf_data"] = data
    finally:
        owned.stop_all()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
