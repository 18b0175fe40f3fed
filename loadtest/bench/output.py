"""Where a run's results go: a new loadtest/results/<timestamp>/ folder, results.json,
the report (bench/report.py, or bench/soak_report.py for a soak), the `latest`
link, and the exit status that sums it up."""

import datetime
import json
import os

from . import report, soak_report


def new_folder(results_dir, is_soak):
    """A new <timestamp>[-soak][-N] folder in results_dir."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-soak" if is_soak else "")
    out_dir = os.path.join(os.path.abspath(results_dir), stamp)
    suffix = 1
    while os.path.exists(out_dir):
        suffix += 1
        out_dir = os.path.join(os.path.abspath(results_dir), "%s-%d" % (stamp, suffix))
    os.makedirs(out_dir)
    return out_dir


def finish(results, args, out_dir, interrupted):
    """Writes results.json and the report; returns the exit status (130 interrupted,
    1 if a cell or soak failed, else 0)."""
    meta = results["meta"]
    versions = {tuple(c["binary_stat"]) for c in results["cells"] if c.get("binary_stat")}
    if len(versions) > 1:
        meta["binary_changed_during_run"] = True
        print("WARNING: %s was rebuilt during the run; its cells ran %d different builds"
              % (args.binary, len(versions)))
    meta["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    meta["interrupted"] = interrupted
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.soak and results.get("soak"):
        paths = soak_report.write(results, out_dir)
        link_latest(out_dir, "latest-soak")
    elif results["cells"]:
        paths = report.write(results, out_dir)
        link_latest(out_dir)
    else:
        paths = None
        print("no cell completed; raw results in %s" % os.path.join(out_dir, "results.json"))
    if paths:
        print("report: %s" % paths["html"])
        print("        %s" % paths["md"])
    if interrupted:
        return 130
    errors = [(c["id"], c["error"]) for c in results["cells"] if c.get("error")]
    errors += [("soak-" + r["strategy"], r["error"]) for r in results.get("soak", []) if r.get("error")]
    if errors:
        print("cells with errors: %s" % ", ".join(name for name, _ in errors))
        for name, error in errors:  # whole, with the server log's tail the progress line left out
            print("  %s: %s" % (name, error.replace("\n", "\n    ")))
        return 1
    return 0


def link_latest(out_dir, name="latest"):
    """results/latest (or `name`) -> the newest run (best effort)."""
    link = os.path.join(os.path.dirname(out_dir), name)
    try:
        if os.path.islink(link):
            os.unlink(link)
        if not os.path.exists(link):
            os.symlink(os.path.basename(out_dir), link)
    except OSError:
        pass
