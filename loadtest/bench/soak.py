"""The soak benchmark: does memory stay bounded while workers are recycled?

For each strategy in turn: one server with `--max-requests N --max-requests-jitter J`
under the mixed workload for S seconds, while a sampler reads PSS of the
server and every descendant (worker processes, zygote) from /proc and the
recycle count from /stats. The report plots memory against time and against
recycles, and states per strategy the growth per recycle and per hour (least
squares over the samples after the baseline point) and whether PSS at the end
is within 10 % of PSS at the baseline (the first minute).

A strategy whose PSS passes --soak-memory-limit is stopped there (wrk gets
SIGINT and still reports): a leak must not take the machine down with it.
"""

import signal
import time

from . import procs, sampling, wrk
from .workloads import WORKLOADS

BOUND_PCT = 10.0  # PSS at the end at most this much above PSS at the baseline: bounded


def default_memory_limit_mib():
    total_kb = sampling.kib_field("/proc/meminfo", "MemTotal:") or 4 * 1024 * 1024
    return int(total_kb / 1024 / 4)


def baseline_seconds(duration, requested=None):
    """Where "after the first minute" is measured from: 60 s, or a quarter of a
    shorter run (so a short run still has a baseline after its start-up)."""
    if requested is not None:
        return min(float(requested), duration / 2.0)
    return min(60.0, duration / 4.0)


def _slope(xs, ys):
    """Least-squares slope of ys over xs, or None with fewer than 3 distinct xs."""
    if len(set(xs)) < 3:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def analyse(samples, baseline_s):
    """Figures of one strategy's soak from its samples (see Sampler)."""
    s = [x for x in samples if x.get("total_pss_kb")]
    if len(s) < 2:
        return {"error": "fewer than 2 memory samples"}
    t0 = s[0]["t"]
    times = [x["t"] - t0 for x in s]
    pss_mib = [x["total_pss_kb"] / 1024.0 for x in s]
    base_i = min(range(len(s)), key=lambda i: abs(times[i] - baseline_s))
    have_recycles = [x for x in s if "recycles" in x]
    r0 = have_recycles[0]["recycles"] if have_recycles else None
    out = {
        "seconds": times[-1],
        "baseline_s": times[base_i],
        "pss_start_mib": pss_mib[0],
        "pss_baseline_mib": pss_mib[base_i],
        "pss_end_mib": pss_mib[-1],
        "pss_peak_mib": max(pss_mib),
        "recycles": (have_recycles[-1]["recycles"] - r0) if have_recycles else None,
    }
    out["end_vs_baseline_pct"] = 100.0 * (pss_mib[-1] - pss_mib[base_i]) / pss_mib[base_i]
    out["bounded"] = out["end_vs_baseline_pct"] <= BOUND_PCT  # shrinking is bounded too
    after = range(base_i, len(s))
    per_s = _slope([times[i] for i in after], [pss_mib[i] for i in after])
    out["growth_mib_per_hour"] = per_s * 3600.0 if per_s is not None else None
    out["recycles_per_s"] = (out["recycles"] / out["seconds"]
                             if out["recycles"] is not None and out["seconds"] > 0 else None)
    pairs = [(s[i]["recycles"], pss_mib[i] * 1024.0) for i in after if "recycles" in s[i]]
    per_recycle = _slope([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
    out["growth_kib_per_recycle"] = per_recycle
    return out


class Soak:
    """Runs the soak with a run's servers (bench/servers.py), survey (bench/survey.py)
    and results dict."""

    def __init__(self, args, servers, survey, results):
        self.args, self.servers, self.survey, self.results = args, servers, survey, results

    def server_args(self):
        a = self.args
        return ["--max-requests", str(a.soak_max_requests),
                "--max-requests-jitter", str(a.soak_jitter)]

    def execute(self):
        a = self.args
        run_started = time.monotonic()
        self.survey.describe_machine()
        meta = self.results["meta"]
        meta["soak"] = {
            "seconds": a.soak, "workers": a.soak_workers, "workload": a.soak_workload,
            "max_requests": a.soak_max_requests, "jitter": a.soak_jitter,
            "baseline_s": baseline_seconds(a.soak, a.soak_baseline),
            "memory_limit_mib": a.soak_memory_limit, "sample_interval_s": a.sample_interval,
            "bound_pct": BOUND_PCT,
        }
        meta["workloads"] = {a.soak_workload: {"description": WORKLOADS[a.soak_workload].description,
                                               "params": WORKLOADS[a.soak_workload].params}}
        self.survey.probe_strategies()
        strategies = self.results["strategies"]["supported"]
        print("soak: %s, %d workers, --max-requests %d --max-requests-jitter %d, %d s each "
              "(memory limit %d MiB)" % (",".join(strategies), a.soak_workers, a.soak_max_requests,
                                         a.soak_jitter, a.soak, a.soak_memory_limit), flush=True)
        self.results["soak"] = []
        for i, strategy in enumerate(strategies, 1):
            print("[%d/%d] %-16s ... " % (i, len(strategies), strategy), end="", flush=True)
            result = self.soak_one(strategy)
            self.results["soak"].append(result)
            print(_line(result), flush=True)
        meta["cells_seconds"] = time.monotonic() - run_started

    def soak_one(self, strategy):
        a, servers = self.args, self.servers
        workload = WORKLOADS[a.soak_workload]
        result = {"strategy": strategy, "workers": a.soak_workers, "build": self.survey.build_of(strategy)}
        proc = wrk_proc = None
        try:
            proc, port, ready = servers.start("gilgamesh", strategy, a.soak_workers,
                                              "soak-" + strategy, extra_args=self.server_args())
            result["startup"] = {k: v for k, v in ready.items() if k != "stats"}
            result["memory_idle"] = sampling.memory(proc.pid)
            cmd = wrk.command(a.wrk, workload, port, a.soak, a.connections, a.threads, a.wrk_timeout)
            result["wrk_command"] = " ".join(cmd)
            wrk_proc = wrk.start(servers.owned, cmd, a.wrk_cpus)
            with sampling.Sampler(proc.pid, wrk_proc.pid, a.sample_interval, port) as sampler:
                result["stopped"] = self.watch(proc, wrk_proc, sampler)
                result["wrk"] = wrk.finish(servers.owned, wrk_proc, a.soak)
            result["samples"] = sampler.samples
            result["load"] = sampler.summary()
            if proc.poll() is not None:
                result["error"] = "server exited with status %d during the soak" % proc.returncode
            else:
                stats = servers.stats(port) or {}
                result["stats_at_end"] = {k: v for k, v in stats.items() if k != "routes"}
        except (procs.StartError, wrk.WrkError) as e:
            result["error"] = str(e)
        finally:
            servers.stop(result, proc, wrk_proc)
        if result.get("samples"):
            result["analysis"] = analyse(result["samples"], self.results["meta"]["soak"]["baseline_s"])
        return result

    def watch(self, proc, wrk_proc, sampler):
        """Until wrk ends: stops the load early (SIGINT: wrk still prints its
        figures) if the server dies or its memory passes the limit. Returns
        why it stopped early, or None."""
        limit_kb = self.args.soak_memory_limit * 1024
        while wrk_proc.poll() is None:
            if proc.poll() is not None:
                wrk_proc.send_signal(signal.SIGINT)
                return "server exited"
            last = sampler.samples[-1] if sampler.samples else {}
            if (last.get("total_pss_kb") or 0) > limit_kb:
                wrk_proc.send_signal(signal.SIGINT)
                return "PSS passed the %d MiB limit after %.0f s" % (
                    self.args.soak_memory_limit, last["t"] - sampler.samples[0]["t"])
            time.sleep(0.25)  # polls the sampler's figures; not a synchronisation
        return None


def _line(result):
    if result.get("error") and not result.get("analysis"):
        return "FAILED: %s" % result["error"].splitlines()[0]
    an = result["analysis"]
    text = "PSS %.0f -> %.0f MiB (%+.1f %% from %.0f s), %s recycles" % (
        an["pss_baseline_mib"], an["pss_end_mib"], an["end_vs_baseline_pct"], an["baseline_s"],
        an["recycles"] if an["recycles"] is not None else "?")
    if an.get("growth_kib_per_recycle") is not None:
        text += ", %.1f KiB/recycle" % an["growth_kib_per_recycle"]
    if an.get("growth_mib_per_hour") is not None:
        text += ", %.0f MiB/h" % an["growth_mib_per_hour"]
    text += " [%s]" % ("bounded" if an["bounded"] else "GROWS")
    if result.get("stopped"):
        text += " (stopped early: %s)" % result["stopped"]
    if result.get("error"):
        text += " [%s]" % result["error"].splitlines()[0]
    return text
