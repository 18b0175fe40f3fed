"""The load-test runner: a matrix of strategies x workloads x worker counts.

Each cell starts its own server on a free 127.0.0.1 port, waits until every
worker is ready, warms up, runs wrk for a fixed duration while sampling the
server from /proc, and stops the server. Results go to
loadtest/results/<timestamp>/: results.json (every raw figure), report.md,
report.html (self-contained) and the charts.

`--soak SECONDS` runs the soak benchmark instead (bench/soak.py): every
strategy recycling its workers under the mixed load, memory against time and
recycles; results in loadtest/results/<timestamp>-soak/.

This module reads the options and runs the parts, each a module of its own:
  survey.py   before measuring: the machine, `gilgamesh check` (check.py), which
              strategies start, which peers (peers.py) import the app, single-thread rates
  servers.py  starting and stopping servers; every process the run owns
  matrix.py   the cells: warm-up, wrk (wrk.py) while sampling.py reads /proc, efficiency
  soak.py     the soak, instead of the matrix
  output.py   results.json, the report (report.py or soak_report.py on page.py, with
              verdict.py's answer first), the `latest` link, the exit status
"""

import argparse
import os
import resource
import signal
import subprocess
import sys

from . import custom, output, procs, rates, soak
from .matrix import Matrix
from .peers import APP_PEERS, ASGI_PEERS, BUILD as PEER_BUILD, PEERS, PYTHON as PEER_PYTHON, WSGI_PEERS
from .servers import LOADTEST, REPO, Servers, peer_binary
from .survey import NCPU, STRATEGIES, Survey
from .workloads import ASGI_GROUPS, ASGI_WORKLOADS, WORKLOADS

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
    p.add_argument("--strategies", default="auto",
                   help="comma list of %s, or auto (the default): every one the binary supports "
                   "except those `gilgamesh check` says cannot load the app (the report names them "
                   "and says why); one named here that cannot run fails the run" % ",".join(STRATEGIES))
    p.add_argument("--workloads", help="comma list of %s (default: all but %s; --quick: hello,fib); "
                   "sleep-tN runs every server at N threads per worker; %s serve the ASGI app "
                   "loadtest/asgi_bench.py on every server, and run apart from the others (`asgi`: "
                   "%s; `ws`: %s, WebSocket echo round trips by tools/ws_echo_load.py instead of wrk)" % (
                       ",".join(WORKLOADS), ",".join(n for n, w in WORKLOADS.items() if not w.in_default),
                       ",".join(ASGI_WORKLOADS), ",".join(ASGI_GROUPS["asgi"]), ",".join(ASGI_GROUPS["ws"])))
    p.add_argument("--workers", help="comma list of worker counts (default: 1,%d; --quick: %d)"
                   % (NCPU, NCPU))
    p.add_argument("--peers", default="", help="comma list of %s: %s serve the same app on Debian's "
                   "Python 3.11: %s a route or WSGI app (through loadtest/wsgi_demo.py), %s an ASGI "
                   "app (--asgi or the ASGI workloads, through loadtest/asgi_demo.py)%s" % (
                       ",".join(PEERS), ", ".join(APP_PEERS), ", ".join(WSGI_PEERS),
                       ", ".join(ASGI_PEERS), "".join(
                           "; %s is a reference with no Python at all, a fixed string on GET /%s, so "
                           "it runs only %s (its other cells are skipped)" % (
                               name, peer.workloads[0], ",".join(peer.workloads))
                           for name, peer in PEERS.items() if not peer.serves_app)))
    for name, peer in PEERS.items():
        if peer.binary_option:
            p.add_argument(peer.binary_option, default=peer.binary, help="%s for --peers %s (default: "
                           "%%(default)s, Debian's package %s)" % (name, name, peer.packages))
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
    p.add_argument("--asgi", metavar="MODULE:APP", help="an ASGI app to measure instead of --app "
                   "(needs --request); the peers (uvicorn, hypercorn) serve the same app")
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
    p.add_argument("--server-cpus", metavar="LIST",
                   help="CPUs every server runs on, with its workers and the single-thread rates, in "
                        "taskset's form (0-3,8); with --wrk-cpus, the load generator keeps off the "
                        "servers' cores on a machine that has enough of them. A cell's ideal then "
                        "counts these CPUs (default: any CPU this runner may use)")
    p.add_argument("--wrk-cpus", metavar="LIST",
                   help="CPUs the load generator (wrk, tools/ws_echo_load.py) runs on, in taskset's "
                        "form (default: any CPU this runner may use)")
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
    g.add_argument("--soak-workload", default="mixed",
                   choices=sorted(n for n, w in WORKLOADS.items() if w.app == "route"),
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
    allowed = sorted(os.sched_getaffinity(0))
    for flag in ("--server-cpus", "--wrk-cpus"):
        attr = flag[2:].replace("-", "_")
        text = getattr(args, attr)
        if text is None:
            continue
        try:
            cpus = procs.parse_cpus(text)
        except ValueError as e:
            p.error("%s: %s" % (flag, e))
        outside = [c for c in cpus if c not in allowed]
        if outside:
            p.error("%s %s: CPU %s is not one this runner may use (%s)" % (
                flag, text, procs.cpus_text(outside), procs.cpus_text(allowed)))
        setattr(args, attr, cpus)
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
        _names(pick(args.workloads, ",".join(n for n, w in WORKLOADS.items() if w.in_default),
                    "hello,fib"), WORKLOADS, "workload", ASGI_GROUPS)
    custom.check_workloads(args, p.error)
    args.workers = [int(x) for x in pick(args.workers, "1,%d" % NCPU, str(NCPU)).split(",") if x]
    args.workers = sorted(set(args.workers))
    if not args.workers or min(args.workers) < 1:
        p.error("--workers needs positive counts")
    args.duration = pick(args.duration, 7, 2)
    args.warmup = pick(args.warmup, 2, 1)
    args.rate_seconds = pick(args.rate_seconds, 0.5, 0.2)
    auto = args.strategies.strip() in ("", "auto")
    args.strategies = None if auto else _names(args.strategies, STRATEGIES, "strategy")
    args.peers = _names(args.peers, PEERS, "peer") if args.peers else []
    interface = "asgi" if args.asgi else "wsgi"
    for name in args.peers:
        binary, peer = peer_binary(args, name), PEERS[name]
        if peer.serves_app and peer.interface != interface:
            p.error("peer %s serves %s apps; this run's app is %s: its peers are %s" % (
                name, peer.interface.upper(), "an ASGI app" if args.asgi else "a WSGI app or route "
                "handlers", ", ".join(ASGI_PEERS if args.asgi else WSGI_PEERS)))
        missing = not os.access(binary, os.X_OK) or _missing_modules(peer.modules)
        if missing:
            p.error("peer %s needs %s, which %s: install Debian's %s "
                    "(`make deps` runs scripts/install-deps.sh, which installs every peer; or "
                    "`sudo apt-get install %s`)%s" % (
                        name, binary if missing is True else "the Python modules %s in %s" % (
                            ", ".join(missing), PEER_PYTHON),
                        "is missing or not executable" if missing is True else "are missing",
                        peer.packages, peer.packages,
                        ", or pass %s PATH" % peer.binary_option if peer.binary_option else ""))
    pythons = rates.default_pythons()
    if args.python_default:
        pythons["default"] = args.python_default
    if args.python_free_threaded:
        pythons["free-threaded"] = args.python_free_threaded
    pythons[PEER_BUILD] = PEER_PYTHON
    args.pythons = pythons
    return args


def _names(text, known, what, groups=None):
    """The comma list `text` of names in `known`; a name in `groups` stands for its members."""
    names = []
    for n in (n.strip() for n in text.split(",") if n.strip()):
        if groups and n in groups:
            names += [m for m in groups[n] if m not in names]
        elif n not in known:
            raise SystemExit("loadtest/run: unknown %s %r (known: %s)" % (
                what, n, ", ".join(list(known) + list(groups or ()))))
        elif n not in names:
            names.append(n)
    return names


def _missing_modules(modules):
    """The modules of `modules` that Debian's Python (the peers') cannot import, or []."""
    if not modules:
        return []
    probe = ("import importlib.util, sys\n"
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
    try:
        out = subprocess.run([PEER_PYTHON, "-c", probe] + list(modules), capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return list(modules)
    return out.stdout.split() if out.returncode == 0 else list(modules)


def raise_fd_limit(args):
    """Raises this process's open-file limit (the servers and wrk inherit it) to what the
    run's connections need: each one is a socket in wrk and one in the server. Exits if
    the hard limit is too low."""
    # (the "app" workload of --request is registered later, by custom.prepare: the run's own)
    connections = max([getattr(WORKLOADS.get(w), "connections", 0) or args.connections
                       for w in args.workloads] or [args.connections])
    needed = 2 * connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit("loadtest/run: %d connections need about %d open files, and the hard "
                             "limit is %d: raise it (`ulimit -Hn %d` as root, or LimitNOFILE)"
                             % (connections, needed, hard, needed))
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _pinning_note(args):
    """NOTES' line on where wrk runs, for a run with --server-cpus or --wrk-cpus; else None."""
    if not (args.server_cpus or args.wrk_cpus):
        return None
    server = set(args.server_cpus or os.sched_getaffinity(0))
    load = set(args.wrk_cpus or os.sched_getaffinity(0))
    def cpus(which):
        return "CPU%s %s" % ("s" if len(which) > 1 else "", procs.cpus_text(which))
    return ("The servers (and the single-thread rates) run on %s, the load generator on %s%s; "
            "a cell's ideal counts the servers' CPUs." % (
                cpus(server), cpus(load),
                ": they share %s" % procs.cpus_text(server & load) if server & load else
                ", apart from the servers'"))


def new_results(args):
    """The results dict a run fills in (results.json)."""
    notes = [custom.peer_note(args) or n if n.startswith("Peers") else
             _pinning_note(args) or n if n.startswith("wrk runs on the same machine") else n for n in NOTES]
    notes += [PEERS[name].note for name in args.peers if PEERS[name].note]
    return {
        "meta": {},
        "strategies": {"supported": [], "unsupported": {}, "probes": {}},
        "peers": {},
        "rates": {},
        "cells": [],
        "notes": notes,
    }


class Run:
    """One run: its results, its servers (every process it owns), what it finds out before
    measuring (survey), and what it measures: the matrix, or the soak."""

    def __init__(self, args, out_dir):
        self.args = args
        self.out_dir = out_dir
        self.results = new_results(args)
        self.servers = Servers(args, os.path.join(out_dir, "logs"))
        self.owned = self.servers.owned
        self.survey = Survey(args, self.servers, self.results)

    def start_server(self, kind, name, workers, log_name, extra_args=()):
        return self.servers.start(kind, name, workers, log_name, extra_args)

    def check_peers(self):
        self.survey.check_peers()

    def execute(self):
        if self.args.soak:
            soak.Soak(self.args, self.servers, self.survey, self.results).execute()
        else:
            Matrix(self.args, self.servers, self.survey, self.results).execute()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit(args)
    out_dir = output.new_folder(args.results_dir, args.soak)
    print("results: %s" % out_dir, flush=True)
    custom.prepare(args, out_dir)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    run = Run(args, out_dir)
    interrupted = False
    try:
        run.execute()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process this run started", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        run.owned.stop_all()
    return output.finish(run.results, args, out_dir, interrupted)
