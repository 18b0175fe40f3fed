"""What `gilgamesh check --json` says about the app, and which strategies a run
measures because of it.

`--strategies auto` (the default) leaves out the strategies the check says
cannot load the app, and the report names them and says why. A binary without
the `check` command (it answers with a usage error, exit 2) leaves every
strategy in, and the report says that too.

The document (stdout, one JSON object):
    {"app": ..., "kind": "app"|"wsgi",
     "rows": [{"strategy", "build", "loads", "problems": [{"module", "why"}], ...}],
     "recommendation": {"strategy", "why"}}
exit 0 if some strategy loads the app, 1 if none does.
"""

import json
import subprocess
import time

TIMEOUT_S = 120  # cold: one child per strategy and build, each importing the app


def command(binary, app_args):
    """The check for the app the servers will run (`app_args`: --app or --wsgi, --pythonpath)."""
    return [binary, "check", "--json"] + list(app_args)


def run(owned, binary, app_args, cwd, env):
    """Runs the check; returns what the report and plan() need:
    {"command", "exit_code", "seconds", "document" (or None), "error" (or None),
     "available" (False: the binary has no usable check; every strategy is assumed to load)}."""
    cmd = command(binary, app_args)
    out = {"command": cmd, "exit_code": None, "document": None, "error": None, "available": False}
    started = time.monotonic()
    try:
        proc = owned.popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True)
    except OSError as e:
        out["error"] = "cannot run %s: %s" % (binary, e)
        return out
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        owned.stop(proc, grace=2.0)
        out["error"] = "`gilgamesh check` did not finish in %d s" % TIMEOUT_S
        return out
    owned.stop(proc)
    out["exit_code"] = proc.returncode
    out["seconds"] = time.monotonic() - started
    return interpret(out, proc.returncode, stdout, stderr)


def interpret(out, exit_code, stdout, stderr):
    """Fills `out` from the check's exit status and output (see run())."""
    out.update(exit_code=exit_code, document=None, error=None, available=False)
    document = None
    try:
        document = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("rows"), list) and exit_code in (0, 1):
        out["document"] = document
        out["available"] = True
        return out
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    if exit_code == 2:
        out["error"] = "this binary has no `check` command (it answered: %s)" % last[:200]
    else:
        out["error"] = "`gilgamesh check` gave no JSON document (exit %s): %s" % (exit_code, last[:200])
    return out


def row_reason(row):
    """Why a row does not load: 'lxml.etree: no per-interpreter GIL; ...'."""
    problems = row.get("problems") or []
    parts = []
    for p in problems:
        if isinstance(p, dict):
            module, why = p.get("module"), p.get("why")
            parts.append("%s: %s" % (module, why) if module and why else str(module or why or p))
        else:
            parts.append(str(p))
    return "; ".join(parts) or row.get("message") or row.get("error") or "does not load (the check gave no reason)"


def _unavailable(row):
    """A row about the binary, not the app: its Python build is not there."""
    return row.get("outcome") == "unavailable"


def plan(check, wanted, build_of):
    """(kept, excluded): the strategies of `wanted` that the check says load the app,
    and {strategy: why} for those it says cannot. `build_of(strategy)` is the Python
    build the runner uses for it: that build's row decides (any row if none matches).
    A strategy the check has no row for, or only rows saying its build is not there,
    is kept (the start-up probe decides and says why), and so is every strategy when
    the check is unavailable."""
    document = (check or {}).get("document")
    if not (check or {}).get("available") or not document:
        return list(wanted), {}
    rows = {}
    for row in document.get("rows") or []:
        if isinstance(row, dict) and row.get("strategy"):
            rows.setdefault(row["strategy"], []).append(row)
    kept, excluded = [], {}
    for name in wanted:
        candidates = rows.get(name)
        if not candidates:
            kept.append(name)
            continue
        same_build = [r for r in candidates if r.get("build") == build_of(name)]
        decisive = [r for r in same_build or candidates if not _unavailable(r)]
        if not decisive or any(r.get("loads") for r in decisive):
            kept.append(name)
        else:
            excluded[name] = "; ".join(dict.fromkeys(row_reason(r) for r in decisive))
    return kept, excluded


def summary(check):
    """One sentence: what the check found, for the verdict."""
    if not check:
        return None
    if not check.get("available"):
        return ("`gilgamesh check` unavailable: %s; every strategy was assumed to load the app "
                "(one that cannot would fail at start-up)." % check.get("error"))
    excluded = check.get("excluded") or {}
    doc = check["document"]
    rows = [r for r in doc.get("rows") or [] if isinstance(r, dict)]
    builds = {}
    for r in rows:
        builds.setdefault(r.get("strategy"), []).append(r.get("build"))
    refused = {}
    for r in rows:  # a row whose build is not there is the start-up probe's to report
        if not r.get("loads") and not _unavailable(r):
            name = r.get("strategy")
            shown = "`%s`" % name if len(builds[name]) == 1 else "`%s` (%s build)" % (name, r.get("build"))
            refused.setdefault((name, shown), row_reason(r))
    loaded = list(dict.fromkeys("`%s`" % r.get("strategy") for r in rows if r.get("loads")))
    if not refused:
        text = ("`gilgamesh check`: every strategy it tried loads the app (%s)." % ", ".join(loaded)
                if loaded else "`gilgamesh check` tried no strategy.")
    else:
        text = "`gilgamesh check`: %s." % "; ".join(
            "%s cannot load the app (%s)%s" % (shown, why, ", left out of this run" if name in excluded else "")
            for (name, shown), why in refused.items())
    rec = doc.get("recommendation") or {}
    if rec.get("strategy"):
        text += " It recommends `%s`%s." % (rec["strategy"], ": %s" % rec["why"].rstrip(".") if rec.get("why") else "")
    return text
