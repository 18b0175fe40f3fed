"""report.md, report.html (self-contained: charts as data-URI PNGs) and the
chart PNGs, from a results.json dict. Can be rerun on an old results.json:

    /usr/bin/python3 -m bench.report loadtest/results/<timestamp>   (from loadtest/)
"""

import base64
import html
import json
import os
import re
import sys

STRATEGY_ORDER = ["subinterpreters", "threads", "free-threaded", "processes"]
BASELINE = "threads"  # ratios are against the GIL baseline where it ran
COLORS = {"subinterpreters": "#1f77b4", "threads": "#7f7f7f", "free-threaded": "#2ca02c",
          "processes": "#ff7f0e", "gunicorn": "#9467bd", "gunicorn-gthread": "#c5b0d5",
          "uwsgi": "#8c564b", "nginx": "#17becf"}
HATCHES = {"gunicorn": "//", "gunicorn-gthread": "//", "uwsgi": "//", "nginx": "xx"}
REFERENCE = "nginx"  # a fixed string, no Python: the ceiling for `hello` (bench/nginx.py)
LATENCY_KEYS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9")]


# -- reading the results ------------------------------------------------------

def _measured(results):
    """The cells that ran: not those skipped (nginx on a workload other than hello)."""
    return [c for c in results["cells"] if not c.get("skipped")]


def _servers(results, workload=None):
    """Servers with a cell that ran (on `workload`, if given): strategies, then peers."""
    seen = {c["server"]: c["kind"] for c in _measured(results) if workload in (None, c["workload"])}
    gil = [s for s in STRATEGY_ORDER if s in seen] + sorted(s for s, k in seen.items()
                                                            if k == "gilgamesh" and s not in STRATEGY_ORDER)
    return gil + sorted((s for s, k in seen.items() if k == "peer"), key=lambda s: (s == REFERENCE, s))


def _label(results, server):
    cell = next(c for c in results["cells"] if c["server"] == server)
    if cell.get("label"):
        return cell["label"]
    if cell["kind"] == "peer":
        return "%s (py%s)" % (server, ".".join(str(cell.get("python_version") or "3.11").split(".")[:2]))
    return server


def _cell(results, server, workload, workers):
    for c in results["cells"]:
        if c["server"] == server and c["workload"] == workload and c["workers"] == workers:
            return c
    return None


def _goodput(cell):
    if not cell or not cell.get("wrk"):
        return None
    return cell["wrk"]["goodput_per_s"]


def _workloads(results):
    seen = {c["workload"] for c in _measured(results)}
    order = results["meta"].get("options", {}).get("workloads") or sorted(seen)
    return [w for w in order if w in seen]


def _workers(results):
    return sorted({c["workers"] for c in _measured(results)})


def _baseline(results):
    servers = [s for s in _servers(results) if s != REFERENCE]
    return BASELINE if BASELINE in servers else (servers[0] if servers else None)


def _non2xx(cell):
    return sum(n for code, n in cell["wrk"]["responses_by_status"].items() if not code.startswith("2"))


def _failed(cell):
    """'FAILED: 404 x 105309' (or the error's first line) for a failed cell, else None."""
    if not cell or not cell.get("error"):
        return None
    text = cell["error"].strip().splitlines()[0]
    return "FAILED: " + text.replace("responses other than 2xx: ", "")[:80]


def _num(value, fmt="%.0f", none="–"):
    return none if value is None else fmt % value


def _mib(kb):
    return None if kb is None else kb / 1024.0


# -- tables (shared by markdown and HTML) -------------------------------------

def tables(results):
    """[(title, intro, header, rows)]: every table of the report."""
    servers, workloads, workers = _servers(results), _workloads(results), _workers(results)
    base = _baseline(results)
    top = max(workers) if workers else None
    out = []

    header = ["workload"] + [_label(results, s) for s in servers]
    rows = []
    for w in workloads:
        ref = _goodput(_cell(results, base, w, top))
        row = [w]
        for s in servers:
            g = _goodput(_cell(results, s, w, top))
            if _failed(_cell(results, s, w, top)):
                row.append(_failed(_cell(results, s, w, top)))
            elif g is None:
                row.append("–")
            elif ref:
                row.append("%s (%.2f×)" % (_num(g, "%.1f" if g < 100 else "%.0f"), g / ref))
            else:
                row.append(_num(g, "%.1f"))
        rows.append(row)
    out.append(("Headline: goodput at %s workers" % top,
                "Responses with a 2xx status per second; in brackets the ratio to `%s` in this run.%s"
                % (base, " %s serves `hello` only (–: not run)." % _label(results, REFERENCE)
                   if REFERENCE in servers else ""), header, rows))
    reference = _reference_table(results)
    if reference:
        out.append(reference)

    header = ["server", "workload", "workers", "goodput/s", "vs %s" % base, "non-2xx",
              "connect", "read", "write", "timeout", "requests/s", "cell"]
    rows = []
    for c in _ordered_cells(results):
        if not c.get("wrk"):
            rows.append([_label(results, c["server"]), c["workload"], c["workers"], "FAILED",
                         "", "", "", "", "", "", "", _failed(c) or "FAILED"])
            continue
        w = c["wrk"]
        ref = _goodput(_cell(results, base, c["workload"], c["workers"]))
        rows.append([_label(results, c["server"]), c["workload"], c["workers"],
                     _num(w["goodput_per_s"], "%.1f"),
                     "%.2f×" % (w["goodput_per_s"] / ref) if ref else "–",
                     _non2xx(c), w["errors"]["connect"], w["errors"]["read"], w["errors"]["write"],
                     w["errors"]["timeout"], _num(w["requests_per_s"], "%.1f"), _failed(c) or "ok"])
    out.append(("Throughput and errors",
                "Goodput counts 2xx only. Socket errors by kind as wrk reports them; `timeout` counts "
                "responses slower than wrk's --timeout (%s s), which are missing from the latency "
                "figures." % results["meta"].get("options", {}).get("wrk_timeout_s", "?"), header, rows))

    header = ["server", "workload", "workers", "min", "mean", "p50", "p90", "p99", "p99.9", "max"]
    rows = []
    for c in _ordered_cells(results):
        lat = (c.get("wrk") or {}).get("latency_ms") or {}
        rows.append([_label(results, c["server"]), c["workload"], c["workers"]] +
                    [_num(lat.get(k), "%.2f") for k in ("min", "mean", "p50", "p90", "p99", "p99_9", "max")])
    out.append(("Latency (ms)", latency_note(results), header, rows))

    header = ["server", "workload", "workers", "server CPU (cores)", "wrk CPU (cores)",
              "other CPU (cores)", "server RSS MiB", "workers PSS MiB", "total PSS MiB",
              "idle total PSS MiB", "start-up s", "stop s", "queue depth max"]
    rows = []
    for c in _ordered_cells(results):
        load, idle = c.get("load") or {}, c.get("memory_idle") or {}
        rows.append([_label(results, c["server"]), c["workload"], c["workers"],
                     _num(load.get("server_cpu_cores"), "%.2f"), _num(load.get("wrk_cpu_cores"), "%.2f"),
                     _num(load.get("other_cpu_cores"), "%.2f"),
                     _num(_mib(load.get("server_rss_kb_peak")), "%.1f"),
                     _num(_mib(load.get("workers_pss_kb_peak")) if load.get("worker_processes") else None,
                          "%.1f"),
                     _num(_mib(load.get("total_pss_kb_peak")), "%.1f"),
                     _num(_mib(idle.get("total_pss_kb")), "%.1f"),
                     _num((c.get("startup") or {}).get("ready_s"), "%.2f"),
                     _num((c.get("shutdown") or {}).get("seconds"), "%.2f"),
                     _num(load.get("queue_depth_max"), "%d")])
    reported = any((c.get("startup") or {}).get("ready_reported_by_stats") for c in results["cells"])
    out.append(("CPU, memory, start-up",
                "CPU from /proc: server = the server process and every descendant; other = about "
                "what other processes on the machine used meanwhile (it skews a cell). Memory is the "
                "peak under load: RSS of the server process; PSS of its worker processes (every "
                "descendant: workers, zygote) summed; total PSS = server + those (shared pages counted "
                "once). Start-up: from exec until /healthz answers%s." % (
                    " and /stats reports every worker ready (peers: /healthz only; nginx: and its "
                    "worker processes run)" if reported else
                    " (/stats does not report per-worker readiness)"), header, rows))

    header = ["server", "workload", "workers", "cores", "build", "single-thread rate/s", "ideal/s",
              "goodput/s", "efficiency"]
    rows = []
    for c in _ordered_cells(results):
        if c.get("ideal_per_s") is None:
            continue
        cores = c["cores"]
        rows.append([_label(results, c["server"]), c["workload"], c["workers"], cores, c["build"],
                     _num(c["ideal_per_s"] / cores, "%.1f"), _num(c["ideal_per_s"], "%.1f"),
                     _num(_goodput(c), "%.1f"), _num(c.get("efficiency"), "%.2f")])
    if rows:
        out.append(("Efficiency against the ideal",
                    "Ideal = cores (min(workers, CPUs)) × the handler's single-thread rate in the same "
                    "Python build, measured without HTTP (for a mix: the weighted harmonic rate). It "
                    "ignores HTTP and dispatch costs and that wrk takes CPU from the same cores, so "
                    "1.0 is out of reach on a machine this small.", header, rows))

    header = ["build", "python", "target", "ms per call", "calls/s", "repeats"]
    rows = []
    for build, r in sorted(results.get("rates", {}).items()):
        if "error" in r:
            rows.append([build, r.get("python", ""), "–", "–", "unavailable: " + r["error"][:80], ""])
            continue
        for target, t in sorted(r["targets"].items()):
            rows.append([build, "%s (GIL %s)" % (r["python_version"], "on" if r["gil_enabled"] else "off"),
                         "`%s`" % target, "%.3f" % t["ms_per_call"], "%.1f" % t["per_s"], len(t["runs"])])
    if rows:
        out.append(("Single-thread handler rates",
                    "One thread, no HTTP: the handler called in a loop with a Request built as the "
                    "server builds it (a WSGI app: with the server's environ and calling protocol); "
                    "the best repeat is kept.", header, rows))
    return out


def _reference_table(results):
    """`hello` of every server as a ratio to nginx's fixed string at the same worker
    count, or None if nginx did not run."""
    if REFERENCE not in _servers(results, "hello"):
        return None
    servers = [s for s in _servers(results, "hello") if s != REFERENCE]
    header = ["workers", _label(results, REFERENCE)] + [_label(results, s) for s in servers]
    rows = []
    for n in _workers(results):
        ref_cell = _cell(results, REFERENCE, "hello", n)
        ref = _goodput(ref_cell)
        row = [n, _failed(ref_cell) or _num(ref)]
        for s in servers:
            c = _cell(results, s, "hello", n)
            g = _goodput(c)
            row.append(_failed(c) or ("–" if g is None else
                                      "%.0f (%.2f×)" % (g, g / ref) if ref else _num(g)))
        rows.append(row)
    return ("Headline: hello against %s" % _label(results, REFERENCE),
            "`hello` goodput (2xx/s) at each worker count; in brackets the ratio to nginx answering "
            "the same `GET /hello` with a fixed string from its configuration, with as many worker "
            "processes, in this run: the share of a C server's rate with no Python at all that each "
            "server keeps.", header, rows)


def latency_note(results):
    o = results["meta"].get("options", {})
    return ("wrk is closed-loop (coordinated omission): each of its %s connections waits for a response "
            "before sending again, so a stalled server is sent less and these percentiles understate "
            "what an open-loop client would see. wrk also shares the %s cores with the server."
            % (o.get("connections", "?"), results["meta"].get("machine", {}).get("nproc", "?")))


def _ordered_cells(results):
    order = {s: i for i, s in enumerate(_servers(results))}
    wl = {w: i for i, w in enumerate(_workloads(results))}
    return sorted(_measured(results), key=lambda c: (order.get(c["server"], 99),
                                                     wl.get(c["workload"], 99), c["workers"]))


# -- charts -------------------------------------------------------------------

def charts(results, out_dir):
    """Writes the PNG charts; returns [(file name, title, caption)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    servers, workloads, workers = _servers(results), _workloads(results), _workers(results)
    top = max(workers)
    made = []

    def grouped(ax, groups, series, value, ylabel, log=False, fmt=None):
        # Each group centres the bars it has: a server with no figure there (nginx on a
        # workload it does not serve) takes no slot.
        present = {g: [s for s in series if value(s, g) is not None] for g in groups}
        width = 0.8 / max([1] + [len(v) for v in present.values()])
        for s in series:
            xs, ys = [], []
            for j, g in enumerate(groups):
                if s in present[g]:
                    k, n = present[g].index(s), len(present[g])
                    xs.append(j - width * n / 2 + width * (k + 0.5))
                    ys.append(value(s, g))
            if not xs:
                continue
            bars = ax.bar(xs, ys, width, label=_label(results, s), color=COLORS.get(s),
                          hatch=HATCHES.get(s), edgecolor="white")
            if fmt and len(groups) * len(series) <= 16:
                ax.bar_label(bars, [fmt % y for y in ys], fontsize=7, padding=1)
        ax.set_xticks(range(len(groups)))
        values = [value(s, g) for s in series for g in groups]
        values = [v for v in values if v]
        if log and values and max(values) / min(values) < 10:
            log = False  # a narrow range reads better, and bars compare honestly, from zero
            ylabel = ylabel.replace(", log", "")
        ax.set_ylabel(ylabel)
        if log and values:  # no value at all (every cell failed): a linear, empty axis
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(values) / 2)
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: "%g" % v))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(axis="y", alpha=0.3)

    def legend_below(fig, axes, note=None):
        """One legend for every panel: a server that ran one workload only (nginx) is in
        that panel alone."""
        handles, labels = [], []
        for ax in axes:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels:
                    handles.append(h)
                    labels.append(l)
        # As many columns as the widest label lets fit across the figure (8-point text:
        # about 0.065 in a character, 0.6 in for the swatch and gaps), rows below the plots.
        width, height = fig.get_size_inches()
        column = 0.6 + 0.065 * max([len(l) for l in labels] or [1])
        ncol = max(1, min(len(labels), 6, int(width // column)))
        rows = -(-len(labels) // ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        if note:
            fig.text(0.5, 0.995, note, ha="center", va="top", fontsize=8, style="italic", wrap=True)
        fig.tight_layout(rect=(0, min(0.4, (0.05 + 0.17 * rows) / height), 1, 0.95 if note else 1))

    def save(fig, name, title, caption):
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)
        made.append((name, title, caption))

    def subplots(n):
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(max(7.0, 4.6 * cols), 3.6 * rows + 0.6),
                                 squeeze=False)
        flat = [a for row in axes for a in row]
        for a in flat[n:]:
            a.set_visible(False)
        return fig, flat[:n]

    # Throughput by strategy and worker count.
    fig, axes = subplots(len(workloads))
    for ax, w in zip(axes, workloads):
        grouped(ax, workers, _servers(results, w), lambda s, n: _goodput(_cell(results, s, w, n)),
                "goodput (2xx/s)", fmt="%.0f")
        ax.set_xticklabels(["%d worker%s" % (n, "" if n == 1 else "s") for n in workers])
        ax.set_title(w)
    legend_below(fig, axes)
    save(fig, "throughput.png", "Throughput by strategy and worker count",
         "Goodput (2xx responses per second); hatched bars are the peers on Python 3.11%s." % (
             "; cross-hatched, %s, on hello only" % _label(results, REFERENCE)
             if REFERENCE in servers else ""))

    # Latency percentiles at the top worker count.
    fig, axes = subplots(len(workloads))
    for ax, w in zip(axes, workloads):
        def lat(s, key, w=w):
            c = _cell(results, s, w, top)
            v = ((c or {}).get("wrk") or {}).get("latency_ms", {}).get(key)
            return v if v else None
        grouped(ax, [k for k, _ in LATENCY_KEYS], _servers(results, w), lat, "latency (ms, log)", log=True)
        ax.set_xticklabels([label for _, label in LATENCY_KEYS])
        ax.set_title("%s, %d workers" % (w, top))
    legend_below(fig, axes, "wrk is closed-loop (coordinated omission) and shares the cores "
                               "with the server: percentiles understate an open-loop client's")
    save(fig, "latency.png", "Latency percentiles",
         latency_note(results))

    # Memory: peak total PSS under load, by server and worker count.
    fig, ax = plt.subplots(figsize=(7, 4.2))

    def mem(s, n):
        values = [(c.get("load") or {}).get("total_pss_kb_peak") for c in _measured(results)
                  if c["server"] == s and c["workers"] == n]
        values = [v for v in values if v]
        return max(values) / 1024.0 if values else None

    grouped(ax, workers, servers, mem, "total PSS, MiB (peak)", fmt="%.0f")
    ax.set_xticklabels(["%d worker%s" % (n, "" if n == 1 else "s") for n in workers])
    ax.set_title("Memory under load (server + worker processes, highest over workloads)", fontsize=10)
    legend_below(fig, [ax])
    save(fig, "memory.png", "Memory", "PSS of the server and its worker processes, peak while loaded.")

    # Efficiency against the ideal, CPU-bound workloads.
    cpu = [w for w in workloads if any(c.get("efficiency") is not None
                                       for c in results["cells"] if c["workload"] == w)]
    if cpu:
        fig, axes = subplots(len(cpu))
        for ax, w in zip(axes, cpu):
            grouped(ax, workers, _servers(results, w),
                    lambda s, n, w=w: (_cell(results, s, w, n) or {}).get("efficiency"),
                    "goodput / ideal", fmt="%.2f")
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticklabels(["%d core%s" % (min(n, results["meta"]["machine"]["nproc"]),
                                               "" if n == 1 else "s") for n in workers])
            ax.set_title("%s: efficiency vs ideal" % w)
            ax.set_ylim(0, 1.15)
        legend_below(fig, axes)
        save(fig, "efficiency.png", "Efficiency against the ideal",
             "Ideal = cores × the single-thread rate of the same handler in the same Python build.")

    # Peers next to the strategies, as ratios to the first Python peer (to nginx if it
    # is the only peer: then on hello alone).
    peers = [s for s in servers if next(c for c in results["cells"] if c["server"] == s)["kind"] == "peer"]
    if peers:
        ref = ([s for s in peers if s != REFERENCE] or peers)[0]
        groups = [w for w in workloads if _goodput(_cell(results, ref, w, top))]
        fig, ax = plt.subplots(figsize=(max(9, 1.6 * len(groups) + 2), 4.4))

        def ratio(s, w):
            g, r = _goodput(_cell(results, s, w, top)), _goodput(_cell(results, ref, w, top))
            return g / r if g is not None and r else None

        grouped(ax, groups, servers, ratio, "goodput / %s" % ref, fmt="%.1f")
        ax.set_xticklabels(groups)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title("gilgamesh strategies vs peers at %d workers (ratio to %s)" % (top, ref), fontsize=10)
        legend_below(fig, [ax])
        save(fig, "peers.png", "Peers",
             "Goodput relative to %s at the same worker count. The Python peers serve the same app "
             "through loadtest/wsgi_demo.py on Python 3.11; gilgamesh embeds 3.13.%s" % (
                 ref, " %s answers hello only, with no Python at all." % _label(results, REFERENCE)
                 if REFERENCE in peers else ""))
    return made


# -- output -------------------------------------------------------------------

def _md_table(header, rows):
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _context(results):
    m = results["meta"]
    o, mach = m.get("options", {}), m.get("machine", {})
    lines = [
        "Command: `%s`" % m.get("command", "?"),
        "Started %s, finished %s%s." % (m.get("started", "?"), m.get("finished", "?"),
                                        " (INTERRUPTED: partial results)" if m.get("interrupted") else ""),
        "Machine: %s CPUs (%s), %s GiB memory, Linux %s; load average at start %s." % (
            mach.get("nproc"), mach.get("cpu_model"), mach.get("memory_gib"), mach.get("kernel"),
            ", ".join("%.2f" % x for x in mach.get("load_average_at_start", []))),
        "Server: `%s`: %s." % (m.get("binary"), (m.get("binary_version") or "").replace("\n", "; ")),
        "Load: %s, %s connections, %s threads, %s s warm-up then %s s measured per cell, --timeout %s s."
        % (m.get("wrk"), o.get("connections"), o.get("wrk_threads"), o.get("warmup_s"),
           o.get("duration_s"), o.get("wrk_timeout_s")),
    ]
    for name, w in m.get("workloads", {}).items():
        lines.append("Workload `%s`: %s." % (name, w["description"]))
    ref = results.get("peers", {}).get(REFERENCE)
    if ref and not ref.get("skipped"):
        skipped = sorted({c["workload"] for c in results["cells"]
                          if c["server"] == REFERENCE and c.get("skipped")})
        lines.append("Reference: %s, `%s` (%s), on %s only%s." % (
            ref.get("label", REFERENCE), ref.get("version") or "version unknown", ref.get("binary"),
            ", ".join("`%s`" % w for w in ref.get("workloads", [])),
            "; skipped on %s (no such handler in nginx: not run, not failed)" % ", ".join(
                "`%s`" % w for w in skipped) if skipped else ""))
    return lines


def _problems(results):
    lines = []
    if results["meta"].get("binary_changed_during_run"):
        lines.append("The server binary was rebuilt during this run: its cells ran different builds.")
    other = [((c.get("load") or {}).get("other_cpu_cores"), c["id"]) for c in results["cells"]]
    other = [(v, i) for v, i in other if v is not None]
    if other:
        mean = sum(v for v, _ in other) / len(other)
        worst = max(other)
        if mean > 0.2 or worst[0] > 0.5:
            lines.append("Other processes used %.2f cores on average while cells were measured (most: "
                         "%.2f in `%s`): absolute figures are low and ratios noisier than on an idle "
                         "machine." % (mean, worst[0], worst[1]))
    for name, peer in sorted(results.get("peers", {}).items()):
        if peer.get("skipped"):
            lines.append("Peer `%s` skipped: %s" % (name, peer["skipped"]))
    for name, reason in results["strategies"].get("unsupported", {}).items():
        last = reason.strip().splitlines()[-1] if reason.strip() else "?"
        last = re.sub(r"^(\[[^\]]*\]\s*)+", "", last)  # the log line's time/level/pid prefix
        lines.append("Strategy `%s` not available in this build: %s" % (name, last))
    for c in results["cells"]:
        if c.get("error"):
            lines.append("Cell `%s`: %s" % (c["id"], c["error"].strip().splitlines()[0]))
        elif c.get("wrk") and (c["wrk"]["errors"]["timeout"] or _non2xx(c)):
            lines.append("Cell `%s`: %d non-2xx responses, %d timeouts" % (
                c["id"], _non2xx(c), c["wrk"]["errors"]["timeout"]))
    return lines


def _headline_count(all_tables):
    """How many tables lead the report, before the charts."""
    return sum(1 for title, _, _, _ in all_tables if title.startswith("Headline"))


def markdown(results, chart_list):
    parts = ["# gilgamesh load test", ""]
    parts += ["- " + l for l in _context(results)]
    parts += ["", "Notes:", ""] + ["- " + n for n in results.get("notes", [])]
    problems = _problems(results)
    if problems:
        parts += ["", "## Problems", ""] + ["- " + p for p in problems]
    all_tables = tables(results)
    lead = _headline_count(all_tables)
    for title, intro, header, rows in all_tables[:lead]:
        parts += ["", "## " + title, "", intro, "", _md_table(header, rows)]
    parts += ["", "## Charts", ""]
    for name, title, caption in chart_list:
        parts += ["### " + title, "", caption, "", "![%s](%s)" % (title, name), ""]
    for title, intro, header, rows in all_tables[lead:]:
        parts += ["", "## " + title, "", intro, "", _md_table(header, rows)]
    return "\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
.problem { color: #a00; } td.failed { color: #b00; background: #fde8e8; font-weight: bold; }
figure { margin: 1em 0 2em; } img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 3px; }
"""

# Writes each chart's rendered size into the DOM, so a headless browser's
# --dump-dom shows whether the images decoded and are visible.
_RENDER_CHECK = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.chart"), ok = 0;
  imgs.forEach(function (img) {
    var r = img.getBoundingClientRect();
    img.setAttribute("data-natural", img.naturalWidth + "x" + img.naturalHeight);
    img.setAttribute("data-rendered", Math.round(r.width) + "x" + Math.round(r.height));
    if (img.complete && img.naturalWidth > 0 && r.width > 0 && r.height > 0) ok++;
  });
  var el = document.getElementById("render-check");
  el.setAttribute("data-charts", imgs.length);
  el.setAttribute("data-visible", ok);
  el.textContent = ok + " of " + imgs.length + " charts rendered";
});
"""


def _inline_code(text):
    escaped = html.escape(text)
    pieces = escaped.split("`")
    return "".join(p if i % 2 == 0 else "<code>%s</code>" % p for i, p in enumerate(pieces))


def html_page(results, chart_list, out_dir):
    e = _inline_code
    body = ["<h1>gilgamesh load test</h1>", "<ul>"]
    body += ["<li>%s</li>" % e(l) for l in _context(results)]
    body += ["</ul>", '<div class="note"><ul>']
    body += ["<li>%s</li>" % e(n) for n in results.get("notes", [])]
    body += ["</ul></div>"]
    problems = _problems(results)
    if problems:
        body += (["<h2>Problems</h2><ul>"] + ['<li class="problem">%s</li>' % e(p) for p in problems]
                 + ["</ul>"])

    def table(title, intro, header, rows):
        body.append("<h2>%s</h2><p>%s</p><table><tr>%s</tr>" % (
            e(title), e(intro), "".join("<th>%s</th>" % e(str(h)) for h in header)))
        for row in rows:
            body.append("<tr>%s</tr>" % "".join(
                '<td class="failed">%s</td>' % e(str(v)) if str(v).startswith("FAILED") else
                "<td>%s</td>" % e(str(v)) for v in row))
        body.append("</table>")

    all_tables = tables(results)
    lead = _headline_count(all_tables)
    for t in all_tables[:lead]:
        table(*t)
    body.append('<h2>Charts</h2><p id="render-check">charts not checked (no JavaScript)</p>')
    for name, title, caption in chart_list:
        with open(os.path.join(out_dir, name), "rb") as f:
            data = base64.b64encode(f.read()).decode()
        body.append('<figure><h3>%s</h3><img class="chart" alt="%s" src="data:image/png;base64,%s">'
                    '<figcaption>%s</figcaption></figure>' % (e(title), e(title), data, e(caption)))
    for t in all_tables[lead:]:
        table(*t)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>gilgamesh load test</title><style>%s</style></head><body>\n%s\n"
            "<script>%s</script></body></html>\n" % (_CSS, "\n".join(body), _RENDER_CHECK))


def write(results, out_dir, charts_of=None, markdown_of=None, html_of=None):
    """Renders results.json's figures into out_dir: charts, report.md, report.html.
    The soak report passes its own three renderers."""
    chart_list = (charts_of or charts)(results, out_dir)
    md_path = os.path.join(out_dir, "report.md")
    html_path = os.path.join(out_dir, "report.html")
    with open(md_path, "w") as f:
        f.write((markdown_of or markdown)(results, chart_list))
    with open(html_path, "w") as f:
        f.write((html_of or html_page)(results, chart_list, out_dir))
    return {"md": md_path, "html": html_path, "charts": [os.path.join(out_dir, n) for n, _, _ in chart_list]}


if __name__ == "__main__":
    folder = sys.argv[1]
    with open(os.path.join(folder, "results.json")) as f:
        print(write(json.load(f), folder))
