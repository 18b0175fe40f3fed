"""Reading a results.json dict: the cells that ran, the servers in report order,
labels, goodput. Shared by the report, the verdict and the soak report."""

import re

from . import peers, procs
from .workloads import WORKLOADS

STRATEGY_ORDER = ["subinterpreters", "threads", "free-threaded", "processes"]
BASELINE = "threads"  # ratios are against the GIL baseline where it ran


def measured(results):
    """The cells that ran: not those skipped (a peer on a workload it has no handler for)."""
    return [c for c in results["cells"] if not c.get("skipped")]


def kind(results, server):
    """"gilgamesh" or "peer"."""
    return next(c["kind"] for c in results["cells"] if c["server"] == server)


def peer(server):
    """The peer's properties (bench/peers.py), or None for a gilgamesh strategy or an unknown name."""
    return peers.PEERS.get(server)


def in_ratios(results, server):
    """Whether `server` is compared in ratios and "vs" columns (a reference is not: it serves a
    fixed answer, not the app)."""
    p = peer(server) if kind(results, server) == "peer" else None
    return p is None or p.in_ratios


def servers(results, workload=None):
    """Servers with a cell that ran (on `workload`, if given): strategies, then peers, the
    references last."""
    seen = {c["server"]: c["kind"] for c in measured(results) if workload in (None, c["workload"])}
    gil = [s for s in STRATEGY_ORDER if s in seen] + sorted(s for s, k in seen.items()
                                                            if k == "gilgamesh" and s not in STRATEGY_ORDER)
    return gil + sorted((s for s, k in seen.items() if k == "peer"),
                        key=lambda s: (not in_ratios(results, s), s))


def references(results, workload=None):
    """The servers that are references (not compared in ratios), in report order."""
    return [s for s in servers(results, workload) if not in_ratios(results, s)]


def label(results, server):
    c = next(c for c in results["cells"] if c["server"] == server)
    if c.get("label"):
        return c["label"]
    if c["kind"] == "peer":
        return "%s (py%s)" % (server, ".".join(str(c.get("python_version") or "3.11").split(".")[:2]))
    return server


def cell(results, server, workload, workers):
    for c in results["cells"]:
        if c["server"] == server and c["workload"] == workload and c["workers"] == workers:
            return c
    return None


def goodput(c):
    if not c or not c.get("wrk"):
        return None
    return c["wrk"]["goodput_per_s"]


def unit(results, workload):
    """What the workload's goodput counts: "responses" (2xx) or "round trips" (WebSocket echoes)."""
    described = results["meta"].get("workloads", {}).get(workload) or {}
    known = WORKLOADS.get(workload)
    return described.get("unit") or (known.unit if known else "responses")


def per_s(results, workload):
    """The workload's goodput unit per second: "2xx/s" or "round trips/s"."""
    u = unit(results, workload)
    return "2xx/s" if u == "responses" else u + "/s"


def round_trip_workloads(results):
    """The workloads whose goodput is WebSocket round trips, not responses."""
    return [w for w in workloads(results) if unit(results, w) != "responses"]


def workloads(results):
    seen = {c["workload"] for c in measured(results)}
    order = results["meta"].get("options", {}).get("workloads") or sorted(seen)
    return [w for w in order if w in seen]


def worker_counts(results):
    return sorted({c["workers"] for c in measured(results)})


def baseline(results):
    names = [s for s in servers(results) if in_ratios(results, s)]
    return BASELINE if BASELINE in names else (names[0] if names else None)


def non2xx(c):
    return sum(n for code, n in c["wrk"]["responses_by_status"].items() if not code.startswith("2"))


def failed(c):
    """'FAILED: 404 x 105309' (or the error's first line) for a failed cell, else None."""
    if not c or not c.get("error"):
        return None
    text = c["error"].strip().splitlines()[0]
    return "FAILED: " + text.replace("responses other than 2xx: ", "")[:80]


def num(value, fmt="%.0f", none="–"):
    return none if value is None else fmt % value


def mib(kb):
    return None if kb is None else kb / 1024.0


def rate_targets(results, build):
    """target -> single-thread figures (per_s, ms_per_call, cpu_ms_per_call) in `build`, or None."""
    return (results.get("rates", {}).get(build) or {}).get("targets")


def mix(results, workload):
    """The workload's CPU mix (target -> weight), from the run's record or the workload table."""
    described = results["meta"].get("workloads", {}).get(workload) or {}
    if "cpu_mix" in described:
        return described["cpu_mix"]
    known = WORKLOADS.get(workload)
    return known.cpu_mix if known else None


def last_line(reason):
    """The last line of a start-up failure, without the log line's time/level/pid prefix."""
    last = reason.strip().splitlines()[-1] if reason.strip() else "?"
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", last)


def unavailable(reason):
    """Why a strategy the binary could not start is missing, after its name: refused by name
    ("left out: ..."), or "not available in this build: <its last line>"."""
    option = procs.refused_option(reason)
    if option:
        return ("left out: this binary refuses `%s` under it at start-up (\"%s\"); one that serves "
                "it is measured by the same command." % (option, last_line(reason).split(option + ": ", 1)[-1]))
    return "not available in this build: %s" % last_line(reason)


def busy(results):
    """(mean, most, cell id) of the CPU other processes used while cells were measured, in
    cores, when it was enough to skew the figures (mean over 0.2 or one cell over 0.5); else None."""
    other = [((c.get("load") or {}).get("other_cpu_cores"), c["id"]) for c in results["cells"]]
    other = [(v, i) for v, i in other if v is not None]
    if not other:
        return None
    mean = sum(v for v, _ in other) / len(other)
    worst = max(other)
    return (mean, worst[0], worst[1]) if mean > 0.2 or worst[0] > 0.5 else None
