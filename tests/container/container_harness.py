"""Runs the gilgamesh image as containers, without a Docker daemon.

`podman run` cannot start containers on these VMs (crun: cgroups), so a
container here is a buildah working container made from the image, and its
command runs with `buildah run --isolation chroot --network host`: the image's
file system, user, environment and working directory, the image's own
ENTRYPOINT (tini, then gilgamesh) with the test's arguments in place of CMD,
as `docker run IMAGE ARGS...` does. With the host's network the server answers
on a loopback port chosen per container.

Every wait is bounded; every container made here is removed and every process
it started is killed (SIGKILL to its process group and descendants) at the end,
even when a test fails.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))

from gilgamesh_harness import HOST, RawConnection, free_port  # noqa: E402,F401 (re-exported)

STORAGE = os.environ.get("GILGAMESH_STORAGE_DRIVER", "vfs")
IMAGE = os.environ.get("GILGAMESH_IMAGE", "localhost/gilgamesh:latest")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0

LIVE = set()  # every Container not yet removed, so the session can clean up leftovers


def podman(*args, timeout=120):
    return subprocess.run(["podman", "--storage-driver", STORAGE, *args], capture_output=True,
                          text=True, timeout=timeout, check=True).stdout


def buildah(*args, timeout=120, check=True):
    return subprocess.run(["buildah", "--storage-driver", STORAGE, *args], capture_output=True,
                          text=True, timeout=timeout, check=check)


def image_inspect():
    """The image's configuration as podman reports it (one dict)."""
    return json.loads(podman("image", "inspect", IMAGE))[0]


def get(port, path, timeout=15.0):
    """One GET on a fresh connection: the parsed Response."""
    with RawConnection(port, timeout=timeout) as conn:
        return conn.request("GET", path, headers={"Connection": "close"})


def wait_until(condition, timeout, what, interval=0.05):
    """Polls `condition()` until it is truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # polling interval, not synchronisation
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def children(pid):
    """Direct children of `pid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the ppid follows the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def descendants(pid):
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


# What buildah prints when it fails before the container's command runs (see _answers()).
RUNTIME_START_FAILURE = "sealing memfd copy"


class Container:
    """A working container from IMAGE; `start()` runs the image's entrypoint in it."""

    def __init__(self, name=None):
        self.name = name or "gilgamesh-test-%d-%d" % (os.getpid(), time.monotonic_ns() % 10**9)
        self.proc = None
        self.port = None
        self.log_file = tempfile.NamedTemporaryFile(prefix="gilgamesh-ctr-", suffix=".log", delete=False)
        buildah("from", "--pull=false", "--name", self.name, IMAGE, timeout=300)
        LIVE.add(self)
        self.config = image_inspect()["Config"]

    def command(self, args):
        """ENTRYPOINT + args, as `docker run IMAGE args...` runs it."""
        return list(self.config.get("Entrypoint") or []) + list(args or self.config.get("Cmd") or [])

    def run_args(self, volumes=(), env=None):
        flags = ["run", "--isolation", "chroot", "--network", "host"]
        for host_dir, container_dir, mode in volumes:
            flags += ["-v", "%s:%s:%s" % (host_dir, container_dir, mode)]
        for key, value in (env or {}).items():
            flags += ["--env", "%s=%s" % (key, value)]
        return flags

    def exec(self, argv, volumes=(), env=None, timeout=300):
        """Runs one command in the container to completion (as the image's user)."""
        return buildah(*self.run_args(volumes, env), self.name, "--", *argv, timeout=timeout, check=False)

    def start(self, args, volumes=(), env=None, port_flag=True):
        """Runs the image's command with `args` in the background, on a free port:
        `--port P` appended, or (port_flag=False) GILGAMESH_PORT=P in its environment."""
        self.port = free_port()
        env = dict(env or {})
        if port_flag:
            args = list(args) + ["--port", str(self.port)]
        else:
            env["GILGAMESH_PORT"] = str(self.port)
        self._argv = ["buildah", "--storage-driver", STORAGE, *self.run_args(volumes, env), self.name, "--",
                      *self.command(args)]
        self._restarted = False
        self._launch()
        return self

    def _launch(self):
        self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self):
        with open(self.log_file.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _answers(self, path):
        if self.proc.poll() is not None:
            if not self._restarted and RUNTIME_START_FAILURE in self.log():
                # buildah's chroot isolation could not seal the memfd copy of itself (EBUSY from
                # F_ADD_SEALS, a kernel race seen once in CI, 2026-12-07): nothing of the image
                # ran yet. Started once more; a second failure is reported.
                self._restarted = True
                self._launch()
                return False
            raise AssertionError("container exited with %s before answering:\n%s"
                                 % (self.proc.returncode, self.log()[-4000:]))
        try:
            return get(self.port, path, timeout=5).status == 200
        except OSError:
            return False

    def wait_ready(self, path="/readyz", timeout=READY_TIMEOUT_S):
        """Until `path` answers 200 (the workers are up), or fails with the log."""
        wait_until(lambda: self._answers(path), timeout, "%s on port %d" % (path, self.port))
        return self

    def init_pid(self):
        """The container's PID 1 as Docker would run it: tini, the entrypoint's first program."""
        want = Path(self.command([])[0]).name
        return wait_until(lambda: next((p for p in descendants(self.proc.pid) if process_name(p) == want), None),
                          10, "%s in the container" % want)

    def server_pid(self):
        """gilgamesh (or gilgamesh-ft after its hand-over), tini's child."""
        return wait_until(lambda: next((p for p in children(self.init_pid())
                                        if process_name(p).startswith("gilgamesh")), None),
                          10, "gilgamesh under tini")

    def terminate(self):
        """SIGTERM to PID 1, as `docker stop` sends it; returns at once."""
        os.kill(self.init_pid(), signal.SIGTERM)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM to PID 1, then the exit status of the container."""
        self.terminate()
        return self.wait(timeout)

    def wait(self, timeout=STOP_TIMEOUT_S):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("container did not exit within %.0f s:\n%s" % (timeout, self.log()[-4000:]))

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            pids = descendants(self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    def remove(self):
        self.kill()
        buildah("rm", self.name, check=False)
        LIVE.discard(self)
        try:
            os.unlink(self.log_file.name)
        except OSError:
            pass


def remove_all():
    for container in list(LIVE):
        container.remove()
