"""The load-test runner: a matrix of strategies x workloads x worker counts.

Each cell starts its own server on a free 127.0.0.1 port, waits until every
worker is ready, warms up, runs wrk for a fixed duration while sampling the
server from /proc, and stops the server. Results go to
loadtest/results/<timestamp>/: results.json (every raw figure), report.md,
report.html (self-contained) and the charts.

`--soak SECONDS` runs the soak benchmark instead (bench/soak.py): every
strategy recycling its workers under the mixed load, memory against time and
recycles; results in loadtest/results/<timestamp>-soak/.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

from . import custom, nginx, procs, rates, report, sampling, soak, soak_report, wrk
from .workloads import WORKLOADS, ideal_rate

LOADTEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(LOADTEST)
STRATEGIES = ["subinterpreters", "threads", "free-threaded", "processes"]
STRATEGY_BUILD = {"free-threaded": "free-threaded"}  # the rest run the default build
PEERS = {"gunicorn": "/usr/bin/gunicorn", "gunicorn-gthread": "/usr/bin/gunicorn", "uwsgi": "/usr/bin/uwsgi",
         "nginx": nginx.BINARY}
PYTHON_PEERS = ("gunicorn", "gunicorn-gthread", "uwsgi")  # serve the app through wsgi_demo.py
# The Debian packages a peer needs (scripts/install-deps.sh installs them all).
PEER_PACKAGES = {"gunicorn": "gunicorn", "gunicorn-gthread": "gunicorn",
                 "uwsgi": "uwsgi uwsgi-plugin-python3", "nginx": "nginx"}
# gunicorn's documented setting for keep-alive clients: gthread workers, a thread pool per
# process, connections kept open (its sync workers close after each response).
GUNICORN_GTHREAD = ["--worker-class", "gthread", "--threads", "4", "--keep-alive", "5"]
PEER_BUILD = "system"  # Debian's /usr/bin/python3, which both peers embed
NCPU = os.cpu_count() or 1

NOTES = [
    "wrk is closed-loop: each connection sends its next request only after the previous "
    "response, so when the server stalls wrk stops sending (coordinated omission) and "
    "latency percentiles understate what an open-loop client would see.",
    "wrk runs on the same machine and shares its cores with the server; its own CPU use is "
    "reported per cell (wrk cores).",
    "Goodput counts 2xx responses only; other statuses and socket errors are reported by kind.",
    "Compare strategies by ratios within one run, not by absolute numbers across runs or machines.",
    "Peers (if run) serve the same handlers through loadtest/wsgi_demo.py on Debian's Python 3.11, "
    "gunicorn with sync workers and uWSGI with --http-socket: both close the connection after "
    "each response, so every wrk connection is served in turn; gunicorn-gthread is gunicorn at "
    "its documented keep-alive setting (gthread workers, 4 threads each, --keep-alive 5).",
]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="loadtest/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny matrix proving the pipeline: workloads hello,fib; workers %d; "
                        "1 s warm-up, 2 s per cell, 0.2 s rate repeats" % NCPU)
    p.add_argument("--strategies", help="comma list (default: every one the binary supports, of %s); "
                   "one named here that cannot run fails the run" % ",".join(STRATEGIES))
    p.add_argument("--workloads", help="comma list of %s (default: all; --quick: hello,fib)"
                   % ",".join(WORKLOADS))
    p.add_argument("--workers", help="comma list of worker counts (default: 1,%d; --quick: %d)"
                   % (NCPU, NCPU))
    p.add_argument("--peers", default="", help="comma list of %s: %s serve the same app through "
                   "loadtest/wsgi_demo.py on Debian's Python 3.11; nginx is a reference with no "
                   "Python at all, a fixed string on GET /hello, so it runs the hello workload only "
                   "(its other cells are skipped)" % (",".join(PEERS), ", ".join(PYTHON_PEERS)))
    p.add_argument("--nginx", default=nginx.BINARY, help="nginx for --peers nginx (default: "
                   "%(default)s, Debian's package nginx)")
    p.add_argument("--duration", type=int, help="measured seconds per cell (default 7; --quick 2)")
    p.add_argument("--warmup", type=int, help="warm-up seconds per cell (default 2; --quick 1)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default: %(default)s)")
    p.add_argument("--wrk-timeout", type=int, default=30,
                   help="wrk --timeout and the server's --timeout, s: long enough that no "
                        "response is dropped from the latency figures (default: %(default)s)")
    p.add_argument("--binary", default=os.environ.get("GILGAMESH_BINARY",
                                                      os.path.join(REPO, "build", "gilgamesh")),
                   help="server (default: $GILGAMESH_BINARY or build/gilgamesh)")
    p.add_argument("--app", help="module of @gilgamesh.route handlers (default: handlers.demo)")
    p.add_argument("--wsgi", metavar="MODULE:CALLABLE", help="a WSGI app to measure instead of --app "
                   "(needs --request); the peers serve the same app")
    p.add_argument("--pythonpath", action="append", default=[], metavar="DIR",
                   help="directory the app imports from (repeatable): for the server, the "
                        "single-thread rates and the peers")
    p.add_argument("--request", action="append", default=[], metavar="'METHOD /path?query [@body-file] [weight]'",
                   help="a request of your own (repeatable): together they replace the demo's "
                        "workloads with one workload, '%s', sent in proportion to their weights" % custom.NAME)
    p.add_argument("--wrk", default="/usr/bin/wrk", help="(default: %(default)s)")
    p.add_argument("--python-default", help="3.13 default build, for the single-thread rates "
                   "(default: $GILGAMESH_PYTHON_DEFAULT or the gilgamesh cache)")
    p.add_argument("--python-free-threaded", help="3.13t build (default: $GILGAMESH_PYTHON_FREE_THREADED "
                   "or the gilgamesh cache)")
    p.add_argument("--rate-seconds", type=float, help="seconds per single-thread rate repeat "
                   "(default 0.5; --quick 0.2)")
    p.add_argument("--rate-repeat", type=int, default=3,
                   help="repeats per rate, best kept (default: %(default)s)")
    p.add_argument("--sample-interval", type=float,
                   help="/proc sampling period, s (default 0.5; --soak 1)")
    p.add_argument("--start-timeout", type=float, default=60.0,
                   help="s for a server to become ready (default: %(default)s)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every gilgamesh server (repeatable)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for every gilgamesh server, e.g. PYTHONMALLOC=mimalloc "
                        "(repeatable; the runner's own environment is left alone)")
    p.add_argument("--results-dir", default=os.path.join(LOADTEST, "results"),
                   help="where the <timestamp>/ folder is made (default: loadtest/results)")
    g = p.add_argument_group("soak", "--soak SECONDS: memory while workers are recycled, "
                                     "instead of the matrix")
    g.add_argument("--soak", type=int, metavar="SECONDS",
                   help="run every strategy (--strategies) for SECONDS under recycling and load; "
                        "`make soak` runs 600")
    g.add_argument("--soak-max-requests", type=int, default=200, metavar="N",
                   help="the servers' --max-requests (default: %(default)s)")
    g.add_argument("--soak-jitter", type=int, default=50, metavar="J",
                   help="the servers' --max-requests-jitter (default: %(default)s)")
    g.add_argument("--soak-workers", type=int, default=NCPU, metavar="N",
                   help="workers per server (default: %(default)s, the CPUs)")
    g.add_argument("--soak-workload", default="mixed", choices=sorted(WORKLOADS),
                   help="wrk profile (default: %(default)s)")
    g.add_argument("--soak-baseline", type=float, metavar="S",
                   help="the point PSS at the end is compared with, s from the start of the load "
                        "(default: 60, or a quarter of a shorter soak)")
    g.add_argument("--soak-memory-limit", type=int, default=soak.default_memory_limit_mib(),
                   metavar="MIB", help="stop a strategy's soak when its PSS passes this "
                                       "(default: %(default)s, a quarter of this machine's memory)")
    args = p.parse_args(argv)
    if args.soak is not None and args.soak < 1:
        p.error("--soak needs a positive number of seconds")
    if args.soak is not None and (args.soak_max_requests < 1 or args.soak_workers < 1):
        p.error("--soak-max-requests and --soak-workers must be positive")
    for item in args.server_env:
        if "=" not in item or not item.split("=", 1)[0]:
            p.error("--server-env needs NAME=VALUE, got %r" % item)
    if args.sample_interval is None:
        args.sample_interval = 1.0 if args.soak else 0.5

    def pick(value, default, quick):
        return value if value is not None else (quick if args.quick else default)

    args.app_given = args.app is not None
    args.app = args.app or "handlers.demo"
    custom.check_args(args, p.error)
    if args.requests and args.workloads:
        p.error("--workloads and --request are exclusive: --request makes the one workload '%s'" % custom.NAME)
    args.workloads = [custom.NAME] if args.requests else \
        _names(pick(args.workloads, ",".join(WORKLOADS), "hello,fib"), WORKLOADS, "workload")
    args.workers = [int(x) for x in pick(args.workers, "1,%d" % NCPU, str(NCPU)).split(",") if x]
    args.workers = sorted(set(args.workers))
    if not args.workers or min(args.workers) < 1:
        p.error("--workers needs positive counts")
    args.duration = pick(args.duration, 7, 2)
    args.warmup = pick(args.warmup, 2, 1)
    args.rate_seconds = pick(args.rate_seconds, 0.5, 0.2)
    args.strategies = _names(args.strategies, STRATEGIES, "strategy") if args.strategies else None
    args.peers = _names(args.peers, PEERS, "peer") if args.peers else []
    for name in args.peers:
        binary = _peer_binary(args, name)
        if not os.access(binary, os.X_OK):
            p.error("peer %s needs %s, which is missing or not executable: install Debian's %s "
                    "(`make deps` runs scripts/install-deps.sh, which installs every peer; or "
                    "`sudo apt-get install %s`)%s" % (
                        name, binary, PEER_PACKAGES[name], PEER_PACKAGES[name],
                        ", or pass --nginx PATH" if name == "nginx" else ""))
    pythons = rates.default_pythons()
    if args.python_default:
        pythons["default"] = args.python_default
    if args.python_free_threaded:
        pythons["free-threaded"] = args.python_free_threaded
    pythons[PEER_BUILD] = "/usr/bin/python3"
    args.pythons = pythons
    return args


def _peer_binary(args, name):
    return args.nginx if name == "nginx" else PEERS[name]


def _names(text, known, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in known:
            raise SystemExit("loadtest/run: unknown %s %r (known: %s)" % (what, n, ", ".join(known)))
    return names


def _fmt_time(seconds):
    seconds = max(0, int(seconds + 0.5))
    return "%d:%02d" % (seconds // 60, seconds % 60)


def _log_tail(path, lines=6):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


class Run:
    def __init__(self, args, out_dir):
        self.args = args
        self.out_dir = out_dir
        self.logs = os.path.join(out_dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.owned = procs.Owned()
        self.sampler = None
        self.results = {
            "meta": {},
            "strategies": {"supported": [], "unsupported": {}, "probes": {}},
            "peers": {},
            "rates": {},
            "cells": [],
            "notes": [custom.peer_note(args) or n if n.startswith("Peers") else n for n in NOTES],
        }
        if "nginx" in args.peers:
            self.results["notes"].append(
                "%s is a reference, not a peer: Debian's nginx answering GET /hello with a fixed "
                "string from its configuration (no Python, no handler), as many worker processes "
                "as the cell's workers, keep-alive at nginx's defaults, no access log. It shows "
                "what an HTTP server in C reaches on this machine with the same wrk; it runs the "
                "hello workload only." % nginx.LABEL)

    # -- servers ------------------------------------------------------------

    def server_command(self, kind, name, workers, port):
        """(argv, env, has /stats, nginx.Instance or None) to serve the demo with `name`
        on `port`; an nginx instance's folder must be removed once it has exited."""
        a = self.args
        if kind == "gilgamesh":
            cmd = [a.binary] + custom.app_args(a) + ["--strategy", name, "--workers", str(workers),
                   "--host", "127.0.0.1", "--port", str(port), "--timeout", str(a.wrk_timeout)]
            env = dict(os.environ)
            env.update(item.split("=", 1) for item in a.server_env)
            return cmd + a.server_arg, env, True, None
        if name == "nginx":
            instance = nginx.Instance(a.nginx, port, workers, a.connections)
            return instance.command, dict(os.environ), False, instance
        env = dict(os.environ, GILGAMESH_STANDIN_STRATEGY=name, PYTHONDONTWRITEBYTECODE="1",
                   **custom.peer_env(a))
        if name in ("gunicorn", "gunicorn-gthread"):
            cmd = [PEERS[name], "--chdir", LOADTEST, "--workers", str(workers),
                   "--bind", "127.0.0.1:%d" % port, "--timeout", str(a.wrk_timeout),
                   "--graceful-timeout", "5", "--log-level", "warning"]
            cmd += (GUNICORN_GTHREAD if name == "gunicorn-gthread" else []) + ["wsgi_demo:app"]
        else:
            # --http-socket, not --http11-socket: with keep-alive each uWSGI worker serves one
            # connection until it closes, so all but `workers` of wrk's connections would starve.
            # It closes after each response without saying so, which wrk counts as a read
            # error: say so.
            cmd = [PEERS[name], "--plugin", "python3", "--http-socket", "127.0.0.1:%d" % port,
                   "--add-header", "Connection: close",
                   "--processes", str(workers), "--master", "--chdir", LOADTEST,
                   "--module", "wsgi_demo:app", "--need-app", "--die-on-term", "--disable-logging"]
        return cmd, env, False, None

    def start_server(self, kind, name, workers, log_name, extra_args=()):
        """Starts and waits; returns (proc, port, readiness) or raises StartError
        with the log's tail in the message. `extra_args` go to a gilgamesh server."""
        last_error = None
        for _attempt in range(2):  # a port taken between free_port() and bind: retry once
            port = procs.free_port()
            cmd, env, has_stats, instance = self.server_command(kind, name, workers, port)
            cmd = cmd + list(extra_args)
            log_path = os.path.join(self.logs, log_name + ".log")
            with open(log_path, "w") as log:
                log.write("$ %s\n" % shlex.join(cmd))
                if instance is not None:  # the prefix goes with the instance: keep its configuration
                    log.write("# %s, removed after the cell:\n" % instance.conf_path)
                    log.write("".join("#   " + line for line in instance.conf.splitlines(True)))
                log.flush()
                started = time.monotonic()
                proc = self.owned.popen(cmd, cleanup=instance.remove if instance else None, cwd=REPO,
                                        env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            try:
                ready = procs.wait_ready(proc, started, port, workers, self.args.start_timeout, has_stats)
                if instance is not None:
                    ready.update(procs.wait_children(proc, started, workers, self.args.start_timeout))
                    ready["prefix"] = instance.prefix
                ready["command"] = cmd
                return proc, port, ready
            except procs.StartError as e:
                self.owned.stop(proc, grace=5.0)
                last_error = procs.StartError("%s\n%s" % (e, _log_tail(log_path)))
                if "address" not in _log_tail(log_path).lower():
                    break
        raise last_error

    # -- steps --------------------------------------------------------------

    def describe_machine(self):
        a = self.args
        model = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
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
                "cpu_model": model,
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
                "wsgi": a.wsgi, "pythonpath": a.pythonpath, "requests": a.request, "peers": a.peers,
            },
            "workloads": {name: {"description": WORKLOADS[name].description,
                                 "params": WORKLOADS[name].params} for name in a.workloads},
        }

    def probe_strategies(self):
        """Which strategies the binary runs: start each with one worker."""
        wanted = self.args.strategies or STRATEGIES
        if not os.access(self.args.binary, os.X_OK):
            raise SystemExit("loadtest/run: no server binary at %s (build it first, or pass --binary)"
                             % self.args.binary)
        for name in wanted:
            print("probing strategy %-16s" % name, end=" ", flush=True)
            try:
                proc, _port, ready = self.start_server("gilgamesh", name, 1, "probe-" + name)
                self.owned.stop(proc)
                stats = ready["stats"] or {}
                self.results["strategies"]["supported"].append(name)
                self.results["strategies"]["probes"][name] = {
                    k: stats.get(k) for k in ("python_version", "build", "gil_enabled")}
                print("ok (%s, Python %s)" % (stats.get("build", "?"), stats.get("python_version", "?")))
            except procs.StartError as e:
                reason = str(e).strip()
                self.results["strategies"]["unsupported"][name] = reason
                print("not available: %s" % reason.splitlines()[-1][:150])
        # A strategy asked for by name (--strategies) that cannot run fails the run; only
        # the default, every strategy the binary runs, leaves one out and goes on.
        unsupported = self.results["strategies"]["unsupported"]
        if self.args.strategies and unsupported:
            raise SystemExit("loadtest/run: --strategies asked for %s, which cannot run:\n%s" % (
                ", ".join(unsupported), "\n".join("strategy %s could not start: %s" % item
                                                  for item in unsupported.items())))
        if not self.results["strategies"]["supported"] and not self.args.peers:
            raise SystemExit("loadtest/run: the binary runs none of %s" % ", ".join(wanted))

    def check_peers(self):
        """Python peers run the app under Debian's Python: skipped, and said so, where it
        does not import. nginx runs no app: it is only described."""
        python_peers = [p for p in self.args.peers if p in PYTHON_PEERS]
        reason = custom.peer_import_error(self.args, self.owned) if python_peers else None
        if reason:
            for name in python_peers:
                print("peer %s skipped: %s" % (name, reason))
                self.results["peers"][name] = {"skipped": reason}
            self.args.peers = [p for p in self.args.peers if p not in python_peers]
        if "nginx" in self.args.peers:
            self.results["peers"]["nginx"] = {
                "label": nginx.LABEL, "binary": self.args.nginx, "version": nginx.version(self.args.nginx),
                "workloads": list(nginx.WORKLOADS)}
        if not self.results["strategies"]["supported"] and not self.args.peers:
            raise SystemExit("loadtest/run: nothing to measure (no strategy runs the app, no peer)")

    def build_of(self, strategy):
        probe = self.results["strategies"]["probes"].get(strategy) or {}
        return probe.get("build") or STRATEGY_BUILD.get(strategy, "default")

    def measure_rates(self):
        targets = set()
        for name in self.args.workloads:
            targets.update((WORKLOADS[name].cpu_mix or {}).keys())
        if not targets:
            return
        builds = {self.build_of(s) for s in self.results["strategies"]["supported"]}
        if any(p in PYTHON_PEERS for p in self.args.peers):
            builds.add(PEER_BUILD)
        for build in sorted(builds):
            python = self.args.pythons.get(build)
            print("single-thread rates in %s (%s) ..." % (build, python), end=" ", flush=True)
            result = rates.measure(self.owned, python, [] if self.args.requests else targets, REPO,
                                   self.args.app, self.args.rate_seconds, self.args.rate_repeat,
                                   custom.rate_args(self.args))
            self.results["rates"][build] = result
            if "error" in result:
                print("unavailable: %s" % result["error"])
            else:
                print(", ".join("%s %.0f/s" % (t, r["per_s"]) for t, r in sorted(result["targets"].items())))

    def cells(self):
        # Servers innermost: the cells a ratio compares run back to back, so a
        # change in background load skews one group, not one strategy.
        servers = [("gilgamesh", s) for s in self.results["strategies"]["supported"]]
        servers += [("peer", p) for p in self.args.peers]
        return [(kind, name, workload, workers)
                for workers in self.args.workers
                for workload in self.args.workloads
                for kind, name in servers]

    def run_cell(self, kind, name, workload_name, workers):
        a = self.args
        workload = WORKLOADS[workload_name]
        cell_id = "%s-%s-w%d" % (name, workload_name, workers)
        build = self.build_of(name) if kind == "gilgamesh" else "nginx" if name == "nginx" else PEER_BUILD
        cell = {"id": cell_id, "kind": kind, "server": name, "workload": workload_name,
                "workers": workers, "cores": min(workers, NCPU), "build": build}
        if name == "nginx":
            cell["label"] = nginx.LABEL
            cell["server_version"] = self.results["peers"]["nginx"]["version"]
            skipped = nginx.skip_reason(workload_name)
            if skipped:  # not run, and not a failure: nginx has no such handler
                cell["skipped"] = skipped
                return cell
        elif kind == "peer":
            cell["python_version"] = (self.results["rates"].get(PEER_BUILD) or {}).get(
                "python_version", platform.python_version())
        proc = wrk_proc = None
        if kind == "gilgamesh":  # which build of the binary this cell runs, should it be rebuilt
            try:
                st = os.stat(a.binary)
                cell["binary_stat"] = [st.st_ino, st.st_size, st.st_mtime_ns]
            except OSError:
                pass
        try:
            proc, port, ready = self.start_server(kind, name, workers, cell_id)
            stats = ready.pop("stats") or {}
            cell["startup"] = ready
            cell["stats_at_start"] = stats
            if kind == "gilgamesh":
                cell["python_version"] = stats.get("python_version")
                cell["gil_enabled"] = stats.get("gil_enabled")
                cell["build"] = stats.get("build") or build
            cell["memory_idle"] = sampling.memory(proc.pid)
            if a.warmup > 0:
                wrk_proc = wrk.start(self.owned, wrk.command(
                    a.wrk, workload, port, a.warmup, a.connections, a.threads, a.wrk_timeout))
                warm = wrk.finish(self.owned, wrk_proc, a.warmup)
                cell["warmup"] = {k: warm.get(k) for k in ("requests", "goodput", "responses_by_status",
                                                           "errors")}
                cell["warmup"]["drain_s"] = self.drain(kind, port, warm)
            cmd = wrk.command(a.wrk, workload, port, a.duration, a.connections, a.threads, a.wrk_timeout)
            cell["wrk_command"] = shlex.join(cmd)
            wrk_proc = wrk.start(self.owned, cmd)
            self.sampler = sampling.Sampler(proc.pid, wrk_proc.pid, a.sample_interval,
                                            port if kind == "gilgamesh" else None)
            self.sampler.start()
            try:
                cell["wrk"] = wrk.finish(self.owned, wrk_proc, a.duration)
            finally:
                self.sampler.stop()
            if custom.non_2xx(cell["wrk"]):  # not what was asked for: the cell failed
                cell["error"] = "responses other than 2xx: %s" % custom.non_2xx(cell["wrk"])
            cell["load"] = self.sampler.summary()
            cell["samples"] = self.sampler.samples
            self.sampler = None
            if proc.poll() is not None:
                cell["error"] = "server exited with status %d during the run" % proc.returncode
            elif kind == "gilgamesh":
                try:
                    status, body = procs.http_get(port, "/stats")
                    cell["stats_at_end"] = json.loads(body) if status == 200 else None
                except (OSError, ValueError) as e:
                    cell["stats_at_end"] = None
                    cell["error"] = "GET /stats after the run failed: %s" % e
        except (procs.StartError, wrk.WrkError) as e:
            cell["error"] = str(e)
        finally:
            self.end_cell(cell, proc, wrk_proc)
        self._derive(cell, workload)
        return cell

    def drain(self, kind, port, warm):
        """Waits until the requests that warm-up left in flight are done: the
        server still runs them after wrk has gone, and they must not eat into
        the measured run. Returns the seconds waited."""
        start = time.monotonic()
        if kind == "gilgamesh":
            deadline = start + self.args.wrk_timeout
            while time.monotonic() < deadline:
                try:
                    status, body = procs.http_get(port, "/stats")
                    stats = json.loads(body) if status == 200 else {}
                except (OSError, ValueError):
                    stats = {}
                if stats.get("queue_depth", 0) == 0 and stats.get("busy_workers", 0) == 0:
                    break
                time.sleep(0.02)
        else:  # no /stats: the slowest warm-up response is about how long a backlog takes
            slowest_ms = ((warm.get("latency_ms") or {}).get("max")) or 0
            time.sleep(min(5.0, max(0.1, 1.5 * slowest_ms / 1000.0)))
        return time.monotonic() - start

    def end_cell(self, cell, proc, wrk_proc):
        """Stops what one cell (or soak) started, load first, and records the server's
        shutdown in `cell` ("error" too if processes outlived it)."""
        if wrk_proc is not None and wrk_proc.poll() is None:  # interrupted: load off first
            self.owned.stop(wrk_proc, grace=2.0)
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if proc is not None:
            stop_s, code, leftovers = self.owned.stop(proc)
            cell["shutdown"] = {"seconds": stop_s, "exit_code": code, "leftover_pids": leftovers}
            if leftovers:
                cell.setdefault("error", "%d worker process(es) outlived the server" % len(leftovers))

    def _derive(self, cell, workload):
        """Efficiency against the ideal, from the single-thread rates."""
        rate = (self.results["rates"].get(cell["build"]) or {}).get("targets")
        rates_per_s = {t: r["per_s"] for t, r in rate.items()} if rate else None
        ideal = ideal_rate(workload, rates_per_s, cell["cores"])
        goodput = (cell.get("wrk") or {}).get("goodput_per_s")
        cell["ideal_per_s"] = ideal
        cell["efficiency"] = goodput / ideal if ideal and goodput is not None else None

    # -- the whole run ------------------------------------------------------

    def execute(self):
        a = self.args
        run_started = time.monotonic()
        self.describe_machine()
        self.probe_strategies()
        self.check_peers()
        self.measure_rates()
        cells = self.cells()
        total = len(cells)
        # Cells that will be skipped (nginx on a workload other than hello) take no time.
        runs = [name != "nginx" or not nginx.skip_reason(workload) for _, name, workload, _ in cells]
        planned = a.warmup + a.duration + 1.5
        print("%d cells: %s x %s x workers %s; about %s" % (
            total, ",".join(self.results["strategies"]["supported"] + a.peers), ",".join(a.workloads),
            ",".join(map(str, a.workers)), _fmt_time(sum(runs) * planned)), flush=True)
        started = time.monotonic()
        for i, (kind, name, workload, workers) in enumerate(cells, 1):
            in_cells = time.monotonic() - started
            done = sum(runs[:i - 1])
            per_cell = in_cells / done if done else planned
            print("[%2d/%d  %s elapsed, ~%s left] %-15s %-6s workers=%d ... " % (
                i, total, _fmt_time(time.monotonic() - run_started),
                _fmt_time(per_cell * sum(runs[i - 1:])), name, workload, workers), end="", flush=True)
            cell = self.run_cell(kind, name, workload, workers)
            self.results["cells"].append(cell)
            print(_cell_line(cell), flush=True)
        self.results["meta"]["cells_seconds"] = time.monotonic() - started


def _sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _cell_line(cell):
    if cell.get("skipped"):
        return "skipped: %s" % cell["skipped"]
    if cell.get("error") and not cell.get("wrk"):
        return "FAILED: %s" % cell["error"].splitlines()[0]
    w = cell["wrk"]
    lat = w.get("latency_ms") or {}
    bad = sum(n for code, n in w["responses_by_status"].items() if not code.startswith("2"))
    errs = sum(v for k, v in w["errors"].items() if k != "status_over_399")
    text = "goodput %.1f/s" % w["goodput_per_s"]
    if cell.get("efficiency") is not None:
        text += " (%.2f of ideal)" % cell["efficiency"]
    if lat.get("p99") is not None:
        text += ", p99 %.1f ms" % lat["p99"]
    load = cell.get("load") or {}
    if load.get("server_cpu_cores") is not None:
        text += ", server %.2f cores, wrk %.2f" % (load["server_cpu_cores"], load.get("wrk_cpu_cores") or 0)
    if bad or errs:
        text += ", NON-2XX %d, SOCKET ERRORS %d" % (bad, errs)
    if cell.get("error"):
        text += " [%s]" % cell["error"].splitlines()[0]
    return text


def _on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-soak" if args.soak else "")
    out_dir = os.path.join(os.path.abspath(args.results_dir), stamp)
    suffix = 1
    while os.path.exists(out_dir):
        suffix += 1
        out_dir = os.path.join(os.path.abspath(args.results_dir), "%s-%d" % (stamp, suffix))
    os.makedirs(out_dir)
    print("results: %s" % out_dir, flush=True)
    custom.prepare(args, out_dir)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    run = Run(args, out_dir)
    interrupted = False
    try:
        if args.soak:
            soak.Soak(run).execute()
        else:
            run.execute()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process this run started", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        run.owned.stop_all()
        if run.sampler is not None:
            run.sampler.stop()
    meta = run.results["meta"]
    versions = {tuple(c["binary_stat"]) for c in run.results["cells"] if c.get("binary_stat")}
    if len(versions) > 1:
        meta["binary_changed_during_run"] = True
        print("WARNING: %s was rebuilt during the run; its cells ran %d different builds"
              % (args.binary, len(versions)))
    meta["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    run.results["meta"]["interrupted"] = interrupted
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(run.results, f, indent=1)
    if args.soak and run.results.get("soak"):
        paths = soak_report.write(run.results, out_dir)
        _link_latest(out_dir, "latest-soak")
        print("report: %s" % paths["html"])
        print("        %s" % paths["md"])
    elif run.results["cells"]:
        paths = report.write(run.results, out_dir)
        _link_latest(out_dir)
        print("report: %s" % paths["html"])
        print("        %s" % paths["md"])
    else:
        print("no cell completed; raw results in %s" % os.path.join(out_dir, "results.json"))
    if interrupted:
        return 130
    failed = [c["id"] for c in run.results["cells"] if c.get("error")]
    failed += ["soak-" + r["strategy"] for r in run.results.get("soak", []) if r.get("error")]
    if failed:
        print("cells with errors: %s" % ", ".join(failed))
        return 1
    return 0


def _link_latest(out_dir, name="latest"):
    """results/latest (or `name`) -> the newest run (best effort)."""
    link = os.path.join(os.path.dirname(out_dir), name)
    try:
        if os.path.islink(link):
            os.unlink(link)
        if not os.path.exists(link):
            os.symlink(os.path.basename(out_dir), link)
    except OSError:
        pass
