"""Starting and stopping the servers a run measures: a gilgamesh strategy, or a
peer from bench/peers.py. Every process goes through one procs.Owned, so an
interrupted run stops everything it started."""

import json
import os
import shlex
import subprocess
import time

from . import custom, procs
from .peers import PEERS

LOADTEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(LOADTEST)


def log_tail(path, lines=6):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def peer_binary(args, name):
    """The peer's executable: its own flag (--nginx) where it has one, else the table's."""
    peer = PEERS[name]
    if peer.binary_option:
        return getattr(args, peer.binary_option.lstrip("-").replace("-", "_"))
    return peer.binary


def server_env(args):
    """The environment of every gilgamesh process: the runner's, plus --server-env."""
    env = dict(os.environ)
    env.update(item.split("=", 1) for item in args.server_env)
    return env


class Servers:
    """The server processes of a run, and every other process it owns (`owned`)."""

    def __init__(self, args, logs):
        self.args = args
        self.logs = logs
        os.makedirs(logs, exist_ok=True)
        self.owned = procs.Owned()

    def command(self, kind, name, workers, port):
        """(argv, env, has /stats, instance or None) to serve the app with `name` on `port`;
        an instance (a peer with a configuration of its own) is removed once it has exited."""
        a = self.args
        if kind == "gilgamesh":
            cmd = [a.binary] + custom.app_args(a) + ["--strategy", name, "--workers", str(workers),
                   "--host", "127.0.0.1", "--port", str(port), "--timeout", str(a.wrk_timeout)]
            return cmd + a.server_arg, server_env(a), True, None
        peer = PEERS[name]
        if peer.instance is not None:
            instance = peer.instance(peer_binary(a, name), port, workers, a.connections)
            return instance.command, dict(os.environ), False, instance
        env = dict(os.environ, GILGAMESH_STANDIN_STRATEGY=name, PYTHONDONTWRITEBYTECODE="1",
                   **custom.peer_env(a))
        return peer.command(peer_binary(a, name), port, workers, a.wrk_timeout), env, False, None

    def start(self, kind, name, workers, log_name, extra_args=()):
        """Starts and waits; returns (proc, port, readiness) or raises StartError
        with the log's tail in the message. `extra_args` go to a gilgamesh server."""
        last_error = None
        # Retried once: a port taken between free_port() and bind, or a start that failed
        # (said on the console with the server's log, so that it is seen, not hidden).
        for attempt in range(2):
            port = procs.free_port()
            cmd, env, has_stats, instance = self.command(kind, name, workers, port)
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
                                        cpus=self.args.server_cpus,
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
                tail = log_tail(log_path, lines=20)
                last_error = procs.StartError("%s\n%s" % (e, tail))
                if procs.refused_option(tail):  # the same every time: not retried
                    break
                if attempt == 0 and "address" not in tail.lower():
                    print("\n  %s %s failed to start (%s); its log:\n    %s\n  retrying once"
                          % (kind, name, e, tail.replace("\n", "\n    ")), flush=True)
                    os.replace(log_path, log_path + ".first")
        raise last_error

    def drain(self, has_stats, port, warm):
        """Waits until the requests that warm-up left in flight are done: the
        server still runs them after wrk has gone, and they must not eat into
        the measured run. Returns the seconds waited."""
        start = time.monotonic()
        if has_stats:
            deadline = start + self.args.wrk_timeout
            while time.monotonic() < deadline:
                stats = self.stats(port) or {}
                if stats.get("queue_depth", 0) == 0 and stats.get("busy_workers", 0) == 0 and \
                        stats.get("websockets", 0) == 0:  # the warm-up's sockets closed too
                    break
                time.sleep(0.02)
        else:  # no /stats: the slowest warm-up response is about how long a backlog takes
            slowest_ms = ((warm.get("latency_ms") or {}).get("max")) or 0
            time.sleep(min(5.0, max(0.1, 1.5 * slowest_ms / 1000.0)))
        return time.monotonic() - start

    @staticmethod
    def stats(port):
        """The server's /stats as a dict, or None if it did not answer with one. Raises nothing."""
        try:
            status, body = procs.http_get(port, "/stats")
            return json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None

    def stop(self, record, proc, wrk_proc):
        """Stops what one cell (or soak) started, load first, and records the server's
        shutdown in `record` ("error" too if processes outlived it)."""
        if wrk_proc is not None and wrk_proc.poll() is None:  # interrupted: load off first
            self.owned.stop(wrk_proc, grace=2.0)
        if proc is not None:
            stop_s, code, leftovers = self.owned.stop(proc)
            record["shutdown"] = {"seconds": stop_s, "exit_code": code, "leftover_pids": leftovers}
            if leftovers:
                record.setdefault("error", "%d worker process(es) outlived the server" % len(leftovers))

