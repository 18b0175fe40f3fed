"""Memory of an idle server per strategy and worker count: what a worker costs.

Starts the server for each strategy at each worker count, waits for /readyz,
sends each worker's first requests (so every worker has imported and run the
app), waits until the PSS of the server and its descendants settles, and
prints one Markdown table: total PSS in MiB, and the cost of one more worker
(the slope between the smallest and the largest count).

PSS counts a page shared by N processes as 1/N in each, so the total over the
server and its worker processes is what the strategy costs the machine.

Usage (from the repository root):
    /usr/bin/python3 loadtest/tools/idle_memory.py [--binary build/gilgamesh]
        [--binary-ft build/gilgamesh-ft] [--workers 1,2,4,8] [--app handlers.demo]
"""

import argparse
import os
import time

from served import REPO, get, served
from bench import sampling  # the load runner's PSS sampling (served puts loadtest/ on the path)


def idle_pss_mib(binary, strategy, workers, app):
    args = ["--strategy", strategy, "--workers", str(workers), "--app", app]
    with served(binary, args) as (proc, port):
        for _ in range(4 * workers):  # every worker runs the app at least once, most likely
            if get(port, "/hello")[0] != 200:
                raise SystemExit("%s: /hello failed" % strategy)
        last, stable = None, 0
        settle_deadline = time.monotonic() + 10
        while stable < 3 and time.monotonic() < settle_deadline:
            time.sleep(0.3)  # sampling pace: PSS settles once the workers are idle
            now = sampling.memory(proc.pid)["total_pss_kb"]
            stable = stable + 1 if last is not None and abs(now - last) < 256 else 0
            last = now
        return last / 1024.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=os.path.join(REPO, "build", "gilgamesh"))
    p.add_argument("--binary-ft", default=os.path.join(REPO, "build", "gilgamesh-ft"))
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--app", default="handlers.demo")
    a = p.parse_args()
    counts = [int(n) for n in a.workers.split(",")]
    plan = [("threads", a.binary), ("subinterpreters", a.binary), ("processes", a.binary)]
    if os.access(a.binary_ft, os.X_OK):
        plan.append(("free-threaded", a.binary_ft))
    print("| strategy | " + " | ".join("%d worker%s" % (n, "" if n == 1 else "s") for n in counts)
          + " | per extra worker |")
    print("|---|" + "---:|" * (len(counts) + 1))
    for strategy, binary in plan:
        mib = [idle_pss_mib(binary, strategy, n, a.app) for n in counts]
        slope = (mib[-1] - mib[0]) / (counts[-1] - counts[0]) if len(counts) > 1 else float("nan")
        print("| `%s` | %s | %.1f |" % (strategy, " | ".join("%.1f" % m for m in mib), slope),
              flush=True)


if __name__ == "__main__":
    main()
