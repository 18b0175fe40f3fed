"""What one recycle costs a worker, per strategy: the time a request waits for it.

Starts the server twice per strategy with one worker, once with
`--max-requests 1` (the worker recycles after every request, so each request
waits for the recycle the previous one caused) and once without, sends the
same sequential GET /hello requests over one keep-alive connection, and prints
the median and p90 latency of each and their difference: the recycle.

Usage (from the repository root):
    /usr/bin/python3 loadtest/tools/recycle_cost.py [--binary build/gilgamesh] [--requests 200]
        [--strategies subinterpreters,processes] [--app handlers.demo]
"""

import argparse
import http.client
import os
import statistics
import sys
import time

from served import REPO, served


def latencies(binary, strategy, app, max_requests, count):
    args = ["--strategy", strategy, "--workers", "1", "--app", app,
            "--max-requests", str(max_requests)]
    with served(binary, args) as (_, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out = []
        for _ in range(count):
            start = time.perf_counter()
            conn.request("GET", "/hello")
            r = conn.getresponse()
            body = r.read()
            out.append((time.perf_counter() - start) * 1000.0)
            if r.status != 200 or body != b"hello":
                raise SystemExit("unexpected answer %d %r" % (r.status, body[:100]))
        conn.close()
        return out[1:]  # the first request comes before any recycle


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=os.path.join(REPO, "build", "gilgamesh"))
    p.add_argument("--strategies", default="subinterpreters,processes")
    p.add_argument("--app", default="handlers.demo")
    p.add_argument("--requests", type=int, default=200)
    a = p.parse_args()
    print("%-16s %22s %22s %14s" % ("strategy", "no recycling p50/p90", "recycle each p50/p90",
                                     "recycle ms p50"))
    for strategy in [s for s in a.strategies.split(",") if s]:
        base = latencies(a.binary, strategy, a.app, 0, a.requests)
        each = latencies(a.binary, strategy, a.app, 1, a.requests)

        def p(values, q):
            return statistics.quantiles(values, n=10)[q - 1] if q != 5 else statistics.median(values)

        print("%-16s %10.2f / %6.2f ms %10.2f / %6.2f ms %11.2f ms" % (
            strategy, p(base, 5), p(base, 9), p(each, 5), p(each, 9), p(each, 5) - p(base, 5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
