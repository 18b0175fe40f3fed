"""Starting, watching and stopping the processes a run owns.

Every child starts in its own session (its own process group), so that
Ctrl-C reaches only the runner, which then stops each child in order, and so
that a server's worker processes can be found and ended with it. `Owned`
keeps the list of live children; `Owned.stop_all()` runs on every exit path.
"""

import ctypes
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time


class StartError(RuntimeError):
    """A server exited or never became ready; the message says why."""


# A gilgamesh start-up refusal of one of its options ("[critical] [pid N] --asgi: the processes
# strategy does not serve ASGI apps yet; ..."): a property of the binary, not a mishap.
_REFUSED = re.compile(r"\[critical\] (\[pid \d+\] )?(--[a-z][a-z-]*): ")


def refused_option(log_text):
    """The option a server refused by name at start-up ('--asgi'), from its log, or None."""
    match = _REFUSED.search(log_text)
    return match.group(2) if match else None


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=2.0):
    """(status, body bytes) of GET http://127.0.0.1:port/path; raises OSError."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (0: state, 1: parent pid,
    2: process group, 11/12: utime/stime), or None if the process is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def live_processes():
    """(pid, stat_fields) of every live process (zombies excluded)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(entry)
            if fields is not None and fields[0] != "Z":
                yield int(entry), fields


def group_members(pgid):
    """Pids of the live processes in process group `pgid`."""
    return [pid for pid, fields in live_processes() if int(fields[2]) == pgid]


def descendants(pid):
    """Pids of every live descendant of `pid` (children, their children...)."""
    children = {}
    for child, fields in live_processes():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


_PR_SET_PDEATHSIG = 1


def parse_cpus(text):
    """The CPUs of a list in taskset's form ("0-3,8"), sorted; ValueError if it is not one."""
    cpus = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError("%r is not a CPU list such as 0-3,8" % text)
        cpus.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return sorted(cpus)


def cpus_text(cpus):
    """A sorted CPU list in taskset's form: [0, 1, 2, 3, 8] -> "0-3,8"."""
    runs = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join("%d" % a if a == b else "%d-%d" % (a, b) for a, b in runs)


def affinity(pids):
    """The CPUs any of `pids` may run on now (those that still exist), or None."""
    found = set()
    for pid in pids:
        try:
            found |= os.sched_getaffinity(pid)
        except OSError:
            pass
    return sorted(found) or None


def _end_with_parent():
    """In the child before exec: SIGTERM it if the runner dies without cleaning
    up (SIGKILL, a crash), since its own session keeps it out of reach of the
    terminal's signals."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Owned:
    """The children this run started and has not yet stopped."""

    def __init__(self):
        self._live = []
        self._cleanups = {}

    def popen(self, cmd, cleanup=None, cpus=None, **kwargs):
        """Starts `cmd`; `cleanup()` (if given) runs once the process and its group
        are gone (in stop()), or at once if it cannot be started. `cpus`: the CPUs
        it (and whatever it starts: threads, worker processes) may run on."""
        def in_child():
            _end_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)
        try:
            proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=in_child, **kwargs)
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise
        self._live.append(proc)
        if cleanup is not None:
            self._cleanups[proc] = cleanup
        return proc

    def stop(self, proc, grace=15.0):
        """SIGTERM, wait up to `grace` s, then SIGKILL the whole group.

        Returns (seconds to exit, exit code, pids of its process group or of
        its former descendants that outlived it and had to be killed)."""
        start = time.monotonic()
        tree = descendants(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start

        # A worker that outlives its server is a leak: end it, and say so.
        def survivors():
            return sorted(set(group_members(proc.pid)) | {p for p in tree if _alive(p)})

        leftovers = survivors()
        deadline = time.monotonic() + 2.0
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = survivors()
        if leftovers:
            _kill_group(proc.pid)
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proc in self._live:
            self._live.remove(proc)
        cleanup = self._cleanups.pop(proc, None)
        if cleanup is not None:
            cleanup()
        return seconds, proc.returncode, leftovers

    def stop_all(self):
        for proc in list(reversed(self._live)):
            self.stop(proc, grace=5.0)


def _alive(pid):
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _ready_workers(stats):
    """Workers that /stats reports ready, or None if it does not say."""
    for key in ("ready_workers", "workers_ready"):
        if isinstance(stats.get(key), int):
            return stats[key]
    details = stats.get("worker_details")
    if isinstance(details, list) and details and all(isinstance(w, dict) for w in details):
        if all("ready" in w for w in details):
            return sum(1 for w in details if w["ready"] is True)
        if all("state" in w for w in details):
            return sum(1 for w in details if w["state"] in ("ready", "idle", "busy"))
    return None


def wait_ready(proc, started_at, port, workers, timeout, has_stats=True):
    """Waits until /healthz answers 200 (the listener is up) and, where /stats reports it, all
    `workers` are ready. Returns the seconds from `started_at` (monotonic, taken
    just before the process was started) to each, and the last /stats.
    Raises StartError."""
    start = started_at
    deadline = start + timeout
    healthz_s = None
    while True:
        if proc.poll() is not None:
            raise StartError("exited with status %d before it was ready" % proc.returncode)
        if time.monotonic() > deadline:
            raise StartError("not ready after %.0f s" % timeout)
        try:
            status, _ = http_get(port, "/healthz", timeout=1.0)
            if status == 200:
                healthz_s = time.monotonic() - start
                break
        except OSError:
            pass
        time.sleep(0.01)
    stats, ready_reported = None, False
    if has_stats:
        while True:
            try:
                status, body = http_get(port, "/stats", timeout=2.0)
                stats = json.loads(body) if status == 200 else None
                answered = True
            except (OSError, ValueError):
                stats, answered = None, False
            ready = _ready_workers(stats) if isinstance(stats, dict) else None
            if not answered or proc.poll() is not None:
                # A server whose workers failed to start closes its listener and exits:
                # not an answer, and never "ready".
                if proc.poll() is not None:
                    raise StartError("exited with status %d before all workers were ready"
                                     % proc.returncode)
                if time.monotonic() > deadline:
                    raise StartError("/stats did not answer within %.0f s" % timeout)
                time.sleep(0.01)
                continue
            if ready is None or ready >= workers:
                ready_reported = ready is not None
                break
            if proc.poll() is not None:
                raise StartError("exited with status %d before all workers were ready"
                                 % proc.returncode)
            if time.monotonic() > deadline:
                raise StartError("only %d of %d workers ready after %.0f s" % (ready, workers, timeout))
            time.sleep(0.01)
    return {"healthz_s": healthz_s, "ready_s": time.monotonic() - start,
            "ready_reported_by_stats": ready_reported, "stats": stats}


def wait_children(proc, started_at, count, timeout):
    """Waits until `proc` has `count` child processes (nginx's workers, which /healthz
    alone does not count). Returns {"ready_s": seconds from `started_at`, "worker_processes":
    children seen}. Raises StartError."""
    deadline = started_at + timeout
    while True:
        children = [pid for pid, fields in live_processes() if int(fields[1]) == proc.pid]
        if len(children) >= count:
            return {"ready_s": time.monotonic() - started_at, "worker_processes": len(children)}
        if proc.poll() is not None:
            raise StartError("exited with status %d before its %d workers ran" % (proc.returncode, count))
        if time.monotonic() > deadline:
            raise StartError("%d of %d worker processes after %.0f s" % (len(children), count, timeout))
        time.sleep(0.01)
