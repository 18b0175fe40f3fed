"""What the server costs while it is loaded, read from /proc.

CPU: utime+stime of the server and every descendant (worker processes), of
wrk, and of the whole machine, as cores used over the measured window.
Memory: RSS of the server process; PSS (from smaps_rollup, so shared pages
count once in total) of the server and summed over its worker processes.
"""

import json
import os
import threading
import time

from . import procs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid):
    fields = procs.stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])  # utime, stime


def kib_field(path, key):
    """The KiB figure of the line starting with `key` in a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kb(pid):
    return kib_field("/proc/%d/status" % pid, "VmRSS:")


def pss_kb(pid):
    return kib_field("/proc/%d/smaps_rollup" % pid, "Pss:")


def machine_ticks():
    """(busy, total, process) jiffies of all CPUs together; `process` is user +
    nice + system, the part that processes' own utime+stime add up to (busy
    also holds irq and softirq time, loopback networking among it)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total, values[0] + values[1] + values[2]


def memory(server_pid):
    """Memory of the server and its worker processes now, in KiB."""
    workers = procs.descendants(server_pid)
    worker_pss = [pss_kb(p) for p in workers]
    worker_pss = [v for v in worker_pss if v is not None]
    server_pss = pss_kb(server_pid)
    return {
        "server_rss_kb": rss_kb(server_pid),
        "server_pss_kb": server_pss,
        "worker_processes": len(worker_pss),
        "workers_pss_kb": sum(worker_pss),
        "total_pss_kb": (server_pss or 0) + sum(worker_pss),
    }


def recycles_of(stats):
    """Workers recycled so far, from a /stats body: `recycles_total` where the
    server reports it, else the sum over `worker_details`; None if neither."""
    if isinstance(stats.get("recycles_total"), int):
        return stats["recycles_total"]
    details = stats.get("worker_details")
    if isinstance(details, list) and details and all(
            isinstance(w, dict) and isinstance(w.get("recycles"), int) for w in details):
        return sum(w["recycles"] for w in details)
    return None


class Sampler(threading.Thread):
    """Samples every `interval` s until stop(); summary() gives the figures."""

    def __init__(self, server_pid, wrk_pid, interval=0.5, stats_port=None):
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.wrk_pid = wrk_pid
        self.interval = interval
        self.stats_port = stats_port
        self.samples = []
        self._done = threading.Event()
        self._last_ticks = {}
        self._server_ticks = 0  # increments summed per pid, so exiting workers still count
        self.cpus = {}

    def _tree_ticks(self):
        for pid in [self.server_pid] + procs.descendants(self.server_pid):
            ticks = _cpu_ticks(pid)
            if ticks is None:
                continue
            # A pid first seen mid-window was born in it: all of its ticks count.
            self._server_ticks += max(0, ticks - self._last_ticks.get(pid, 0))
            self._last_ticks[pid] = ticks
        return self._server_ticks

    def _sample(self):
        if not self.cpus:  # where the server (its workers too) and the load ran: once, while they run
            self.cpus = {"server_cpus": procs.affinity([self.server_pid] + procs.descendants(self.server_pid)),
                         "wrk_cpus": procs.affinity([self.wrk_pid])}
        sample = {"t": time.monotonic()}
        busy, total, process = machine_ticks()
        sample["machine_busy_ticks"], sample["machine_total_ticks"] = busy, total
        sample["machine_process_ticks"] = process
        sample["server_ticks"] = self._tree_ticks()
        sample["wrk_ticks"] = _cpu_ticks(self.wrk_pid)
        sample["runner_ticks"] = _cpu_ticks(os.getpid())
        sample.update(memory(self.server_pid))
        if self.stats_port:
            try:
                status, body = procs.http_get(self.stats_port, "/stats", timeout=1.0)
                stats = json.loads(body) if status == 200 else {}
            except (OSError, ValueError):
                stats = {}
            for key in ("queue_depth", "busy_workers", "interpreters_created", "interpreters_ended"):
                if isinstance(stats.get(key), (int, float)):
                    sample[key] = stats[key]
            recycles = recycles_of(stats)
            if recycles is not None:
                sample["recycles"] = recycles
        self.samples.append(sample)

    def run(self):
        while True:
            self._sample()
            if self._done.wait(self.interval):
                break
        self._sample()

    def stop(self):
        self._done.set()
        if self.is_alive():
            self.join()

    def __enter__(self):
        """`with Sampler(...) as sampler:` samples for the body's duration, however it ends."""
        self.start()
        return self

    def __exit__(self, *_exc):
        self.stop()

    def summary(self):
        s = self.samples
        if len(s) < 2:
            return {"samples": len(s)}
        first, last = s[0], s[-1]
        seconds = last["t"] - first["t"]
        ncpu = os.cpu_count() or 1

        def cores(key):
            # Over the samples that have the key: wrk is gone by the last one.
            have = [x for x in s if x.get(key) is not None]
            if len(have) < 2 or have[-1]["t"] <= have[0]["t"]:
                return None
            return (have[-1][key] - have[0][key]) / CLOCK_TICKS / (have[-1]["t"] - have[0]["t"])

        machine_total = last["machine_total_ticks"] - first["machine_total_ticks"]

        def machine(key):
            if machine_total <= 0:
                return None
            return ncpu * (last[key] - first[key]) / machine_total

        out = {
            "samples": len(s),
            "seconds": seconds,
            "server_cpu_cores": cores("server_ticks"),
            "wrk_cpu_cores": cores("wrk_ticks"),
            "runner_cpu_cores": cores("runner_ticks"),
            "machine_busy_cores": machine("machine_busy_ticks"),
            "machine_process_cores": machine("machine_process_ticks"),
        }
        # Process CPU that neither the server, wrk nor this runner used: other
        # people's work on the machine. (irq/softirq time is left out: loopback
        # networking for the load itself lands there.)
        if out["machine_process_cores"] is not None and out["server_cpu_cores"] is not None:
            out["other_cpu_cores"] = max(0.0, out["machine_process_cores"] - out["server_cpu_cores"]
                                         - (out["wrk_cpu_cores"] or 0.0)
                                         - (out["runner_cpu_cores"] or 0.0))
        for key in ("server_rss_kb", "server_pss_kb", "workers_pss_kb", "total_pss_kb"):
            values = [x[key] for x in s if x.get(key) is not None]
            if values:
                out[key + "_peak"] = max(values)
                out[key + "_mean"] = sum(values) / len(values)
        out["worker_processes"] = max(x.get("worker_processes", 0) for x in s)
        for key in ("server_cpus", "wrk_cpus"):  # as the processes had them, for the record
            if self.cpus.get(key):
                out[key] = procs.cpus_text(self.cpus[key])
        for key in ("queue_depth", "busy_workers"):
            values = [x[key] for x in s if key in x]
            if values:
                out[key + "_mean"] = sum(values) / len(values)
                out[key + "_max"] = max(values)
        return out
