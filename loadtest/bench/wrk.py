"""Running wrk with one of the profiles and reading the JSON its done() prints."""

import json
import os
import subprocess

PROFILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")


class WrkError(RuntimeError):
    pass


def command(wrk, workload, port, seconds, connections, threads, timeout_s):
    return [wrk, "-t%d" % min(threads, connections), "-c%d" % connections, "-d%ds" % seconds,
            "--timeout", "%ds" % timeout_s,
            "-s", os.path.join(PROFILES, workload.profile_name + ".lua"),
            "http://127.0.0.1:%d" % port, "--"] + workload.profile_args()


def start(owned, cmd, cpus=None):
    """Starts the load generator `cmd` (wrk, or tools/ws_echo_load.py) on `cpus` (None: any)."""
    return owned.popen(cmd, cpus=cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(owned, proc, seconds):
    """Waits for wrk (with a margin over its duration) and parses its JSON."""
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        owned.stop(proc, grace=2.0)
        raise WrkError("wrk did not finish in %d s" % (seconds + 60))
    owned.stop(proc)
    return parse(out, err, proc.returncode)


def parse(stdout, stderr, returncode):
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise WrkError("wrk printed no JSON (exit %s): %s" % (returncode, (stderr or stdout)[-500:]))
    result = json.loads(lines[-1])
    result["wrk_stdout"] = stdout[:stdout.rfind(lines[-1])].rstrip()
    return result
