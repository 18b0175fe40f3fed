"""Running tools/ws_echo_load.py, the WebSocket echo client of the ws-echo workloads,
where wrk runs for the HTTP ones: it prints the same JSON object on its last line
(bench/wrk.py's start, finish and parse read it), goodput in round trips."""

import os
import sys

from . import wrk

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "ws_echo_load.py")
PYTHON = "/usr/bin/python3"  # Debian's, with uvloop (the peers' Python)


def command(workload, port, seconds, connections, timeout_s):
    p = workload.params
    out = [PYTHON if os.path.exists(PYTHON) else sys.executable, TOOL,
           "ws://127.0.0.1:%d%s" % (port, p.get("path", "/ws/echo")),
           "--connections", str(connections), "--duration", str(seconds),
           "--timeout", str(timeout_s), "--size", str(p.get("size", 32)), "--profile", workload.name]
    return out + (["--binary"] if p.get("binary") else [])


def load_command(a, workload, port, seconds, connections):
    """The load generator's argv for a cell: wrk with the workload's profile, or this client."""
    if workload.client == "ws":
        return command(workload, port, seconds, connections, a.wrk_timeout)
    return wrk.command(a.wrk, workload, port, seconds, connections, a.threads, a.wrk_timeout)
