"""What a run finds out before it measures: the machine and the binary, which
strategies can serve the app (`gilgamesh check`, then a one-worker start of
each), which peers can, and the handlers' single-thread rates for the ideal.
Each step writes its part of the results dict."""

import datetime
import hashlib
import os
import platform
import shlex
import subprocess
import sys

from . import check, custom, procs, rates, sampling
from .peers import BUILD as PEER_BUILD, PEERS
from .servers import REPO, peer_binary, server_env
from .workloads import WORKLOADS

STRATEGIES = ["subinterpreters", "threads", "free-threaded", "processes"]
STRATEGY_BUILD = {"free-threaded": "free-threaded"}  # the rest run the default build
NCPU = os.cpu_count() or 1


def _sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


class Survey:
    def __init__(self, args, servers, results):
        self.args, self.servers, self.results = args, servers, results

    def describe_machine(self):
        a = self.args
        mem_kb = sampling.kib_field("/proc/meminfo", "MemTotal:")
        try:
            version = subprocess.run([a.binary, "--version"], capture_output=True, text=True,
                                     timeout=30)
            binary_version = (version.stdout + version.stderr).strip()
        except OSError as e:
            binary_version = "cannot run: %s" % e
        wrk_version = subprocess.run([a.wrk, "-v"], capture_output=True, text=True).stdout
        self.results["meta"] = {
            "command": shlex.join(["loadtest/run"] + sys.argv[1:]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {
                "nproc": NCPU,
                "cpu_model": _cpu_model(),
                "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
                "kernel": platform.release(),
                "load_average_at_start": os.getloadavg(),
            },
            "binary": a.binary,
            "binary_version": binary_version,
            "binary_sha256": _sha256(a.binary),
            "wrk": (wrk_version.strip().splitlines()[0].split(" Copyright")[0]
                    if wrk_version.strip() else a.wrk),
            "runner_python": platform.python_version(),
            "options": {
                "workloads": a.workloads, "workers": a.workers, "duration_s": a.duration,
                "warmup_s": a.warmup, "connections": a.connections, "wrk_threads": a.threads,
                "wrk_timeout_s": a.wrk_timeout, "sample_interval_s": a.sample_interval,
                "rate_seconds": a.rate_seconds, "rate_repeat": a.rate_repeat,
                "server_args": a.server_arg, "server_env": a.server_env, "app": a.app, "quick": a.quick,
                "wsgi": a.wsgi, "asgi": a.asgi, "pythonpath": a.pythonpath, "requests": a.request, "peers": a.peers,
                "strategies": a.strategies or "auto",
                "server_cpus": procs.cpus_text(a.server_cpus) if a.server_cpus else None,
                "wrk_cpus": procs.cpus_text(a.wrk_cpus) if a.wrk_cpus else None,
            },
            "workloads": {name: {"description": WORKLOADS[name].description,
                                 "params": WORKLOADS[name].params,
                                 "cpu_mix": WORKLOADS[name].cpu_mix,
                                 "threads": WORKLOADS[name].threads,
                                 "app": WORKLOADS[name].app,
                                 "connections": WORKLOADS[name].connections,
                                 "client": WORKLOADS[name].client,
                                 "unit": WORKLOADS[name].unit} for name in a.workloads},
        }

    def check_app(self):
        """`gilgamesh check` on the app. Returns the strategies to probe: with --strategies
        auto, every one but those the check says cannot load the app (recorded with the
        reason); named strategies are all probed (one that cannot load fails the run)."""
        a = self.args
        result = check.run(self.servers.owned, a.binary, custom.app_args(a), REPO, server_env(a))
        wanted = a.strategies or STRATEGIES
        kept, excluded = (check.plan(result, wanted, lambda s: STRATEGY_BUILD.get(s, "default"))
                          if a.strategies is None else (list(wanted), {}))
        result.update(auto=a.strategies is None, excluded=excluded)
        self.results["check"] = result
        print(check.summary(result).replace("`", ""), flush=True)
        if not kept and not a.peers:
            raise SystemExit("loadtest/run: `gilgamesh check` says no strategy can load the app:\n%s" % (
                "\n".join("%s: %s" % item for item in excluded.items())))
        return kept

    def probe_strategies(self):
        """Which strategies the binary runs: start each with one worker (those the check
        leaves in, see check_app)."""
        if not os.access(self.args.binary, os.X_OK):
            raise SystemExit("loadtest/run: no server binary at %s (build it first, or pass --binary)"
                             % self.args.binary)
        wanted = self.check_app()
        strategies = self.results["strategies"]
        for name in wanted:
            print("probing strategy %-16s" % name, end=" ", flush=True)
            try:
                proc, _port, ready = self.servers.start("gilgamesh", name, 1, "probe-" + name)
                self.servers.owned.stop(proc)
                stats = ready["stats"] or {}
                strategies["supported"].append(name)
                strategies["probes"][name] = {k: stats.get(k) for k in ("python_version", "build", "gil_enabled")}
                print("ok (%s, Python %s)" % (stats.get("build", "?"), stats.get("python_version", "?")))
            except procs.StartError as e:
                reason = str(e).strip()
                strategies["unsupported"][name] = reason
                option = procs.refused_option(reason)
                if option:  # refused by name, not broken: a binary that serves it is measured
                    print("left out: this binary refuses %s under %s (%s)" % (
                        option, name, reason.splitlines()[-1].split(option + ": ", 1)[-1][:150]))
                else:
                    print("not available: %s" % reason.splitlines()[-1][:150])
        # A strategy asked for by name (--strategies) that cannot run fails the run; only
        # the default, every strategy the binary runs, leaves one out and goes on.
        unsupported = strategies["unsupported"]
        if self.args.strategies and unsupported:
            raise SystemExit("loadtest/run: --strategies asked for %s, which cannot run:\n%s" % (
                ", ".join(unsupported), "\n".join("strategy %s could not start: %s" % item
                                                  for item in unsupported.items())))
        if not strategies["supported"] and not self.args.peers:
            excluded = self.results["check"].get("excluded") or {}
            raise SystemExit("loadtest/run: the binary runs none of %s%s" % (", ".join(wanted), "".join(
                "\nstrategy %s left out: `gilgamesh check` says it cannot load the app (%s)" % item
                for item in excluded.items())))

    def check_peers(self):
        """Peers that serve the app run it under Debian's Python: skipped, and said so, where
        it does not import. A reference runs no app: it is only described."""
        app_peers = [p for p in self.args.peers if PEERS[p].serves_app]
        reason = custom.peer_import_error(self.args, self.servers.owned) if app_peers else None
        if reason:
            for name in app_peers:
                print("peer %s skipped: %s" % (name, reason))
                self.results["peers"][name] = {"skipped": reason}
            self.args.peers = [p for p in self.args.peers if p not in app_peers]
        for name in self.args.peers:
            peer = PEERS[name]
            if not peer.serves_app:
                binary = peer_binary(self.args, name)
                self.results["peers"][name] = {
                    "label": peer.label, "binary": binary,
                    "version": peer.version(binary) if peer.version else None,
                    "workloads": list(peer.workloads)}
        if not self.results["strategies"]["supported"] and not self.args.peers:
            raise SystemExit("loadtest/run: nothing to measure (no strategy runs the app, no peer)")

    def build_of(self, strategy):
        probe = self.results["strategies"]["probes"].get(strategy) or {}
        return probe.get("build") or STRATEGY_BUILD.get(strategy, "default")

    def _rate_targets(self):
        targets = set()
        for name in self.args.workloads:
            targets.update((WORKLOADS[name].cpu_mix or {}).keys())
        return targets

    def _rates_in(self, python, copies=1):
        """handler_rate.py's rates of the run's targets in `python`, on the servers' CPUs;
        copies > 1: that many loops at once (rates.measure_side_by_side)."""
        common = ([] if self.args.requests else self._rate_targets(), REPO, self.args.app,
                  self.args.rate_seconds, self.args.rate_repeat, custom.rate_args(self.args))
        if copies == 1:
            return rates.measure(self.servers.owned, python, *common, cpus=self.args.server_cpus)
        return rates.measure_side_by_side(self.servers.owned, python, copies, *common, cpus=self.args.server_cpus)

    def measure_rates(self):
        targets = self._rate_targets()
        if not targets:
            return
        builds = {self.build_of(s) for s in self.results["strategies"]["supported"]}
        if any(PEERS[p].serves_app for p in self.args.peers):
            builds.add(PEER_BUILD)
        for build in sorted(builds):
            python = self.args.pythons.get(build)
            print("single-thread rates in %s (%s) ..." % (build, python), end=" ", flush=True)
            result = self._rates_in(python)
            self.results["rates"][build] = result
            if "error" in result:
                print("unavailable: %s" % result["error"])
                continue
            print(", ".join("%s %.0f/s" % (t, r["per_s"]) for t, r in sorted(result["targets"].items())))
            # What the machine gives that many loops at once, for each cell's cores.
            cores = len(self.args.server_cpus) if self.args.server_cpus else NCPU
            for copies in sorted({min(w, cores) for w in self.args.workers} - {1}):
                print("  %d loops side by side ..." % copies, end=" ", flush=True)
                together = self._rates_in(python, copies)
                self.results.setdefault("rates_side_by_side", {}).setdefault(build, {})[str(copies)] = together
                if "error" in together:
                    print("unavailable: %s" % together["error"])
                else:
                    print(", ".join("%s %.0f/s (%.2f of %d x alone)" % (
                        t, r["per_s"], r["per_s"] / (copies * result["targets"][t]["per_s"]), copies)
                        for t, r in sorted(together["targets"].items())))

    def measure_rates_again(self):
        """The single-thread rates once more, after the cells: a machine whose speed moved
        during the run (a VM's neighbours, a slow stretch) shows it here, and its cells'
        efficiencies are read with that in mind (the report says how far they moved)."""
        targets = self._rate_targets()
        for build, before in sorted(self.results["rates"].items()):
            if not targets or "error" in before:
                continue
            print("single-thread rates in %s again, after the cells ..." % build, end=" ", flush=True)
            after = self._rates_in(self.args.pythons.get(build))
            self.results.setdefault("rates_after", {})[build] = after
            if "error" in after:
                print("unavailable: %s" % after["error"])
            else:
                print(", ".join("%s %.0f/s (%+.0f %%)" % (t, r["per_s"], 100.0 * (
                    r["per_s"] / before["targets"][t]["per_s"] - 1)) for t, r in sorted(after["targets"].items())
                    if t in before["targets"]))
