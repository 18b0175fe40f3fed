"""nginx returning a fixed string: the ceiling reference for the `hello` workload
(and `asgi-hello`, the same GET /hello).

No Python at all: what an HTTP server in C reaches on the same machine, with
the same wrk, in the same minutes; "gilgamesh hello / nginx hello" says how
much of that the server in front of Python keeps. It serves GET /hello only;
every other workload runs a handler nginx does not have, so its cells are
skipped (and said so), not failed.

Each cell gets a throw-away instance: Debian's nginx run in the foreground as
the runner's user (as root, nginx's workers drop to `nobody` as usual) with a
prefix of its own in a temporary folder (configuration, pid file, the five
temp paths), on 127.0.0.1 and the cell's worker count as worker_processes,
keep-alive at nginx's defaults, no access log, warnings and errors to stderr
(the cell's log in the run's folder, since the prefix is removed with the
instance).
"""

import os
import shutil
import subprocess
import tempfile

BINARY = "/usr/sbin/nginx"  # Debian's package `nginx`
LABEL = "nginx (fixed string, no Python)"
WORKLOADS = ("hello", "asgi-hello")  # both GET /hello
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

_CONFIG = """\
# One cell of loadtest/run: nginx returning a fixed string (no Python), removed after the cell.
worker_processes {workers};
pid "{prefix}/nginx.pid";
error_log stderr warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        location = /hello {{ default_type text/plain; return 200 "hello"; }}
        location = /healthz {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
        location / {{ return 404; }}
    }}
}}
"""


def config(prefix, port, workers, connections):
    """nginx.conf for an instance in `prefix` on 127.0.0.1:`port`."""
    temp_paths = "\n".join('    %s_temp_path "%s/%s";' % (kind, prefix, kind) for kind in TEMP_PATHS)
    # nginx's default, 512 per worker, would refuse part of a large --connections.
    worker_connections = max(1024, connections + 64)
    return _CONFIG.format(workers=workers, prefix=prefix, port=port, temp_paths=temp_paths,
                          worker_connections=worker_connections)


class Instance:
    """The prefix folder of one nginx instance and the command that runs it;
    `remove()` deletes the folder once the process has exited."""

    def __init__(self, binary, port, workers, connections):
        self.prefix = tempfile.mkdtemp(prefix="gilgamesh-loadtest-nginx-")
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        self.conf = config(self.prefix, port, workers, connections)
        with open(self.conf_path, "w") as f:
            f.write(self.conf)
        # -e stderr: the error log nginx opens before it reads the configuration
        # (Debian's default, /var/log/nginx/error.log, is root's).
        self.command = [binary, "-p", self.prefix, "-e", "stderr", "-c", self.conf_path,
                        "-g", "daemon off;"]

    def remove(self):
        shutil.rmtree(self.prefix, ignore_errors=True)


def version(binary):
    """'nginx/1.22.1', or None if it cannot be run."""
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stderr or out.stdout).strip()
    return text.split(":", 1)[1].strip() if ":" in text else text or None
