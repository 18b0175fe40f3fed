"""The matrix: strategies and peers x workloads x worker counts, one cell each.

A cell starts its own server on a free port, waits until every worker is
ready, warms up, runs wrk for a fixed duration while sampling the server from
/proc, and stops the server; its efficiency is its goodput against the ideal
from the single-thread rates.
"""

import json
import os
import platform
import shlex
import time

from . import custom, procs, sampling, wrk, wsload
from .peers import BUILD as PEER_BUILD, PEERS
from .survey import NCPU
from .workloads import WORKLOADS, ideal_rate


def fmt_time(seconds):
    seconds = max(0, int(seconds + 0.5))
    return "%d:%02d" % (seconds // 60, seconds % 60)


def _threads_option(server_args):
    """--threads N among the servers' extra arguments, or None."""
    for i, arg in enumerate(server_args):
        if arg == "--threads" and i + 1 < len(server_args) and server_args[i + 1].isdigit():
            return int(server_args[i + 1])
        if arg.startswith("--threads=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    return None


class Matrix:
    def __init__(self, args, servers, survey, results):
        self.args, self.servers, self.survey, self.results = args, servers, survey, results
        self.load = None  # the cell's wrk process, while it has one

    def cells(self):
        # Servers innermost: the cells a ratio compares run back to back, so a
        # change in background load skews one group, not one strategy.
        servers = [("gilgamesh", s) for s in self.results["strategies"]["supported"]]
        servers += [("peer", p) for p in self.args.peers]
        return [(kind, name, workload, workers)
                for workers in self.args.workers
                for workload in self.args.workloads
                for kind, name in servers]

    @staticmethod
    def skip_reason(kind, name, workload):
        """Why a cell is not run (a peer with no handler for the workload), or None."""
        return PEERS[name].skip_reason(workload) if kind == "peer" else None

    def connections(self, workload, workers):
        """wrk's connections in a cell: the workload's own (asgi-sleep), at least a request
        per thread of every worker (sleep-tN), else the run's --connections."""
        if workload.connections:
            return workload.connections
        if workload.threads:  # every server of the cell at the workload's threads per worker
            return max(self.args.connections, workers * workload.threads)
        return self.args.connections

    def describe(self, kind, name, workload_name, workers):
        """The cell's record before it runs: what it is, and which server build."""
        cell = {"id": "%s-%s-w%d" % (name, workload_name, workers), "kind": kind, "server": name,
                "workload": workload_name, "workers": workers,
                "cores": min(workers, len(self.args.server_cpus) if self.args.server_cpus else NCPU)}
        workload = WORKLOADS[workload_name]
        threads = workload.threads
        if workload.threads or workload.connections:
            cell["connections"] = self.connections(workload, workers)
        if workload.app == "asgi":
            # One event loop per worker holds many requests at once: "busy" is its CPU, not
            # its requests (verdict.py reads this).
            cell["event_loop"] = True
        if kind == "gilgamesh":
            cell["build"] = self.survey.build_of(name)
            cell["threads_per_worker"] = threads or _threads_option(self.args.server_arg) or 1
            try:  # which build of the binary this cell runs, should it be rebuilt
                st = os.stat(self.args.binary)
                cell["binary_stat"] = [st.st_ino, st.st_size, st.st_mtime_ns]
            except OSError:
                pass
            return cell
        peer = PEERS[name]
        cell["threads_per_worker"] = threads if threads and peer.threads_args else peer.threads_per_worker
        if peer.serves_app:
            cell["build"] = PEER_BUILD
            cell["python_version"] = (self.results["rates"].get(PEER_BUILD) or {}).get(
                "python_version", platform.python_version())
        else:
            cell["build"] = name
            cell["label"] = peer.label
            cell["server_version"] = self.results["peers"][name]["version"]
        return cell

    def run_cell(self, kind, name, workload_name, workers):
        cell = self.describe(kind, name, workload_name, workers)
        skipped = self.skip_reason(kind, name, workload_name)
        if skipped:  # not run, and not a failure: the peer has no such handler
            cell["skipped"] = skipped
            return cell
        workload = WORKLOADS[workload_name]
        proc = self.load = None
        try:
            proc, port, ready = self.servers.start(kind, name, workers, cell["id"],
                                                   self.workload_args(kind, name, workload, workers))
            stats = ready.pop("stats") or {}
            cell["startup"] = ready
            cell["stats_at_start"] = stats
            if kind == "gilgamesh":
                cell["python_version"] = stats.get("python_version")
                cell["gil_enabled"] = stats.get("gil_enabled")
                cell["build"] = stats.get("build") or cell["build"]
                if isinstance(stats.get("threads_per_worker"), int):
                    cell["threads_per_worker"] = stats["threads_per_worker"]
            cell["memory_idle"] = sampling.memory(proc.pid)
            self.warm_up(cell, kind, workload, port)
            self.measure(cell, kind, workload, proc, port)
        except (procs.StartError, wrk.WrkError) as e:
            cell["error"] = str(e)
        finally:
            self.servers.stop(cell, proc, self.load)
        self.derive(cell, workload)
        return cell

    def workload_args(self, kind, name, workload, workers):
        """The arguments that give the server the workload's threads per worker, and for a
        workload with connections of its own, room for them all (gilgamesh: any worker's
        loop may hold every one of them; the peers have no such limit by default)."""
        out = []
        if workload.threads:
            out += (["--threads", str(workload.threads)] if kind == "gilgamesh"
                    else PEERS[name].threads_args(workload.threads))
        if workload.connections and kind == "gilgamesh":  # unless --server-arg gave them (once only)
            connections = self.connections(workload, workers)
            for flag, value in (("--worker-connections", connections),
                                ("--max-connections", max(4096, 2 * connections))):
                if not any(a == flag or a.startswith(flag + "=") for a in self.args.server_arg):
                    out += [flag, str(value)]
        return out

    def warm_up(self, cell, kind, workload, port):
        a = self.args
        if a.warmup <= 0:
            return
        self.load = wrk.start(self.servers.owned, wsload.load_command(
            a, workload, port, a.warmup, self.connections(workload, cell["workers"])), a.wrk_cpus)
        warm = wrk.finish(self.servers.owned, self.load, a.warmup)
        cell["warmup"] = {k: warm.get(k) for k in ("requests", "goodput", "responses_by_status", "errors")}
        cell["warmup"]["drain_s"] = self.servers.drain(kind == "gilgamesh", port, warm)

    def measure(self, cell, kind, workload, proc, port):
        """wrk for the cell's duration, the server sampled meanwhile; then /stats."""
        a = self.args
        cmd = wsload.load_command(a, workload, port, a.duration, self.connections(workload, cell["workers"]))
        cell["wrk_command"] = shlex.join(cmd)
        self.load = wrk.start(self.servers.owned, cmd, a.wrk_cpus)
        with sampling.Sampler(proc.pid, self.load.pid, a.sample_interval,
                              port if kind == "gilgamesh" else None) as sampler:
            cell["wrk"] = wrk.finish(self.servers.owned, self.load, a.duration)
        if custom.non_2xx(cell["wrk"]):  # not what was asked for: the cell failed
            cell["error"] = "responses other than 2xx: %s" % custom.non_2xx(cell["wrk"])
        cell["load"] = sampler.summary()
        cell["samples"] = sampler.samples
        if proc.poll() is not None:
            cell["error"] = "server exited with status %d during the run" % proc.returncode
        elif kind == "gilgamesh":
            try:
                status, body = procs.http_get(port, "/stats")
                cell["stats_at_end"] = json.loads(body) if status == 200 else None
            except (OSError, ValueError) as e:
                cell["stats_at_end"] = None
                cell["error"] = "GET /stats after the run failed: %s" % e

    def derive(self, cell, workload):
        """Efficiency against the ideal, from the single-thread rates; the server's CPU time
        per response (or round trip): steadier than goodput where wrk shares the cores."""
        rate = (self.results["rates"].get(cell["build"]) or {}).get("targets")
        rates_per_s = {t: r["per_s"] for t, r in rate.items()} if rate else None
        ideal = ideal_rate(workload, rates_per_s, cell["cores"])
        goodput = (cell.get("wrk") or {}).get("goodput_per_s")
        cell["ideal_per_s"] = ideal
        cell["efficiency"] = goodput / ideal if ideal and goodput is not None else None
        # The same against what this many loops gave side by side (rates.measure_side_by_side).
        together = (((self.results.get("rates_side_by_side") or {}).get(cell["build"]) or {})
                    .get(str(cell["cores"])) or {}).get("targets")
        if cell["cores"] == 1:
            together_ideal = ideal
        else:
            together_ideal = ideal_rate(workload, {t: r["per_s"] for t, r in together.items()}, 1) if together else None
        if together_ideal:
            cell["side_by_side_per_s"] = together_ideal
            cell["efficiency_side_by_side"] = goodput / together_ideal if goodput is not None else None
        cores = (cell.get("load") or {}).get("server_cpu_cores")
        answered = (cell.get("wrk") or {}).get("requests_per_s") or goodput
        cell["server_cpu_us_per_request"] = cores * 1e6 / answered if cores is not None and answered else None

    def execute(self):
        a = self.args
        run_started = time.monotonic()
        self.survey.describe_machine()
        self.survey.probe_strategies()
        self.survey.check_peers()
        self.survey.measure_rates()
        cells = self.cells()
        total = len(cells)
        # Cells that will be skipped (a peer with no handler for the workload) take no time.
        runs = [not self.skip_reason(kind, name, workload) for kind, name, workload, _ in cells]
        planned = a.warmup + a.duration + 1.5
        print("%d cells: %s x %s x workers %s; about %s" % (
            total, ",".join(self.results["strategies"]["supported"] + a.peers), ",".join(a.workloads),
            ",".join(map(str, a.workers)), fmt_time(sum(runs) * planned)), flush=True)
        started = time.monotonic()
        for i, (kind, name, workload, workers) in enumerate(cells, 1):
            in_cells = time.monotonic() - started
            done = sum(runs[:i - 1])
            per_cell = in_cells / done if done else planned
            print("[%2d/%d  %s elapsed, ~%s left] %-15s %-6s workers=%d ... " % (
                i, total, fmt_time(time.monotonic() - run_started),
                fmt_time(per_cell * sum(runs[i - 1:])), name, workload, workers), end="", flush=True)
            cell = self.run_cell(kind, name, workload, workers)
            self.results["cells"].append(cell)
            print(cell_line(cell), flush=True)
        self.results["meta"]["cells_seconds"] = time.monotonic() - started
        self.survey.measure_rates_again()


def cell_line(cell):
    """The progress line's figures for a finished cell."""
    if cell.get("skipped"):
        return "skipped: %s" % cell["skipped"]
    if cell.get("error") and not cell.get("wrk"):
        return "FAILED: %s" % cell["error"].splitlines()[0]
    w = cell["wrk"]
    lat = w.get("latency_ms") or {}
    bad = sum(n for code, n in w["responses_by_status"].items() if not code.startswith("2"))
    errs = sum(v for k, v in w["errors"].items() if k != "status_over_399")
    text = "goodput %.1f%s/s" % (w["goodput_per_s"], " " + w["unit"] if w.get("unit") else "")  # round trips
    if cell.get("efficiency") is not None:
        text += " (%.2f of ideal)" % cell["efficiency"]
    if lat.get("p99") is not None:
        text += ", p99 %.1f ms" % lat["p99"]
    load = cell.get("load") or {}
    if load.get("server_cpu_cores") is not None:
        text += ", server %.2f cores, wrk %.2f" % (load["server_cpu_cores"], load.get("wrk_cpu_cores") or 0)
    if cell.get("server_cpu_us_per_request") is not None:
        text += ", %.0f µs server CPU per %s" % (cell["server_cpu_us_per_request"],
                                                 "round trip" if w.get("unit") else "request")
    if bad or errs:
        text += ", NON-2XX %d, SOCKET ERRORS %d" % (bad, errs)
    if cell.get("error"):
        text += " [%s]" % cell["error"].splitlines()[0]
    return text
