"""report.md, report.html (self-contained: charts as data-URI PNGs) and the
chart PNGs, from a results.json dict. Can be rerun on an old results.json:

    /usr/bin/python3 -m bench.report loadtest/results/<timestamp>   (from loadtest/)
"""

import os
import sys

from . import figures as f
from . import page, peers, procs, verdict

STRATEGY_COLORS = {"subinterpreters": "#1f77b4", "threads": "#7f7f7f", "free-threaded": "#2ca02c",
                   "processes": "#ff7f0e"}
COLORS = dict(STRATEGY_COLORS, **{name: p.color for name, p in peers.PEERS.items()})
HATCHES = {name: p.hatch for name, p in peers.PEERS.items()}
LATENCY_KEYS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9")]


# -- tables (shared by markdown and HTML) -------------------------------------

def tables(results):
    """[(title, intro, header, rows)]: every table of the report."""
    servers, workloads, workers = f.servers(results), f.workloads(results), f.worker_counts(results)
    base = f.baseline(results)
    top = max(workers) if workers else None
    out = []

    header = ["workload"] + [f.label(results, s) for s in servers]
    rows = []
    for w in workloads:
        ref = f.goodput(f.cell(results, base, w, top))
        row = [w]
        for s in servers:
            g = f.goodput(f.cell(results, s, w, top))
            if f.failed(f.cell(results, s, w, top)):
                row.append(f.failed(f.cell(results, s, w, top)))
            elif g is None:
                row.append("–")
            elif ref:
                row.append("%s (%.2f×)" % (f.num(g, "%.1f" if g < 100 else "%.0f"), g / ref))
            else:
                row.append(f.num(g, "%.1f"))
        rows.append(row)
    out.append(("Headline: goodput at %s workers" % top,
                "Responses with a 2xx status per second%s; in brackets the ratio to `%s` in this run.%s"
                % (_round_trips_intro(results), base, "".join(" %s serves %s only (–: not run)." % (f.label(results, r), _only(r))
                                 for r in f.references(results) if f.peer(r).workloads)), header, rows))
    for r in f.references(results):
        out += _reference_tables(results, r)

    header = ["server", "workload", "workers", "goodput/s", "vs %s" % base, "non-2xx",
              "connect", "read", "write", "timeout", "requests/s", "cell"]
    rows = []
    for c in _ordered_cells(results):
        if not c.get("wrk"):
            rows.append([f.label(results, c["server"]), c["workload"], c["workers"], "FAILED",
                         "", "", "", "", "", "", "", f.failed(c) or "FAILED"])
            continue
        w = c["wrk"]
        ref = f.goodput(f.cell(results, base, c["workload"], c["workers"]))
        rows.append([f.label(results, c["server"]), c["workload"], c["workers"],
                     f.num(w["goodput_per_s"], "%.1f"),
                     "%.2f×" % (w["goodput_per_s"] / ref) if ref else "–",
                     f.non2xx(c), w["errors"]["connect"], w["errors"]["read"], w["errors"]["write"],
                     w["errors"]["timeout"], f.num(w["requests_per_s"], "%.1f"), f.failed(c) or "ok"])
    out.append(("Throughput and errors",
                "Goodput counts 2xx only. Socket errors by kind as wrk reports them; `timeout` counts "
                "responses slower than wrk's --timeout (%s s), which are missing from the latency "
                "figures.%s" % (results["meta"].get("options", {}).get("wrk_timeout_s", "?"),
                                _round_trips_errors(results)), header, rows))

    header = ["server", "workload", "workers", "min", "mean", "p50", "p90", "p99", "p99.9", "max"]
    rows = []
    for c in _ordered_cells(results):
        lat = (c.get("wrk") or {}).get("latency_ms") or {}
        rows.append([f.label(results, c["server"]), c["workload"], c["workers"]] +
                    [f.num(lat.get(k), "%.2f") for k in ("min", "mean", "p50", "p90", "p99", "p99_9", "max")])
    out.append(("Latency (ms)", latency_note(results), header, rows))

    header = ["server", "workload", "workers", "server CPU (cores)", "server CPU µs per response",
              "wrk CPU (cores)", "other CPU (cores)", "server RSS MiB", "workers PSS MiB", "total PSS MiB",
              "idle total PSS MiB", "start-up s", "stop s", "queue depth max"]
    rows = []
    for c in _ordered_cells(results):
        load, idle = c.get("load") or {}, c.get("memory_idle") or {}
        rows.append([f.label(results, c["server"]), c["workload"], c["workers"],
                     f.num(load.get("server_cpu_cores"), "%.2f"), f.num(c.get("server_cpu_us_per_request"), "%.0f"),
                     f.num(load.get("wrk_cpu_cores"), "%.2f"), f.num(load.get("other_cpu_cores"), "%.2f"),
                     f.num(f.mib(load.get("server_rss_kb_peak")), "%.1f"),
                     f.num(f.mib(load.get("workers_pss_kb_peak")) if load.get("worker_processes") else None,
                          "%.1f"),
                     f.num(f.mib(load.get("total_pss_kb_peak")), "%.1f"),
                     f.num(f.mib(idle.get("total_pss_kb")), "%.1f"),
                     f.num((c.get("startup") or {}).get("ready_s"), "%.2f"),
                     f.num((c.get("shutdown") or {}).get("seconds"), "%.2f"),
                     f.num(load.get("queue_depth_max"), "%d")])
    reported = any((c.get("startup") or {}).get("ready_reported_by_stats") for c in results["cells"])
    out.append(("CPU, memory, start-up",
                "CPU from /proc: server = the server process and every descendant; per response = "
                "its CPU time over the responses (round trips) wrk counted, a steadier figure than "
                "goodput where the load generator shares the server's cores;%s other = about "
                "what other processes on the machine used meanwhile (it skews a cell). Memory is the "
                "peak under load: RSS of the server process; PSS of its worker processes (every "
                "descendant: workers, zygote) summed; total PSS = server + those (shared pages counted "
                "once). Start-up: from exec until /healthz answers%s." % (
                    " wrk = the load generator (ws_echo_load.py on %s);" % ", ".join(
                        "`%s`" % w for w in f.round_trip_workloads(results))
                    if f.round_trip_workloads(results) else "",
                    " and /stats reports every worker ready (peers: /healthz only; %s: and its "
                    "worker processes run)" % ", ".join(f.references(results)) if reported and f.references(results) else
                    " and /stats reports every worker ready (peers: /healthz only)" if reported else
                    " (/stats does not report per-worker readiness)"), header, rows))

    header = ["server", "workload", "workers", "cores", "build", "single-thread rate/s", "ideal/s",
              "goodput/s", "efficiency", "side by side/s", "of side by side"]
    rows = []
    for c in _ordered_cells(results):
        if c.get("ideal_per_s") is None:
            continue
        cores = c["cores"]
        rows.append([f.label(results, c["server"]), c["workload"], c["workers"], cores, c["build"],
                     f.num(c["ideal_per_s"] / cores, "%.1f"), f.num(c["ideal_per_s"], "%.1f"),
                     f.num(f.goodput(c), "%.1f"), f.num(c.get("efficiency"), "%.2f"),
                     f.num(c.get("side_by_side_per_s"), "%.1f"), f.num(c.get("efficiency_side_by_side"), "%.2f")])
    if rows:
        out.append(("Efficiency against the ideal",
                    "Ideal = cores (min(workers, CPUs)) × the handler's single-thread rate in the same "
                    "Python build, measured without HTTP (for a mix: the weighted harmonic rate). It "
                    "ignores HTTP and dispatch costs and that wrk takes CPU from the same cores, so "
                    "1.0 is out of reach on a machine this small. Side by side = what that many "
                    "single-thread loops gave together, run at once (one process each) before the "
                    "cells: below the ideal where the cores share a physical core (SMT) or a VM's "
                    "vCPUs share the host's, and so the part of the gap to the ideal that is the "
                    "machine's, not the server's.%s" % _side_by_side_summary(results), header, rows))

    header = ["build", "python", "target", "ms per call", "calls/s", "repeats", "after the cells"]
    rows = []
    for build, r in sorted(results.get("rates", {}).items()):
        if "error" in r:
            rows.append([build, r.get("python", ""), "–", "–", "unavailable: " + r["error"][:80], "", ""])
            continue
        after = ((results.get("rates_after") or {}).get(build) or {}).get("targets") or {}
        for target, t in sorted(r["targets"].items()):
            again = (after.get(target) or {}).get("per_s")
            rows.append([build, "%s (GIL %s%s)" % (r["python_version"], "on" if r["gil_enabled"] else "off",
                                                   ", " + r["optimization"] if r.get("optimization") else ""),
                         "`%s`" % target, "%.3f" % t["ms_per_call"], "%.1f" % t["per_s"], len(t["runs"]),
                         "%.1f (%+.0f %%)" % (again, 100.0 * (again / t["per_s"] - 1)) if again else "–"])
    if rows:
        out.append(("Single-thread handler rates",
                    "One thread, no HTTP: the handler called in a loop with a Request built as the "
                    "server builds it (a WSGI app: with the server's environ and calling protocol); "
                    "the best repeat is kept. Measured before the cells (the ideal uses these) and "
                    "again after them: a rate that moved by more than a few per cent means the "
                    "machine's speed changed during the run, and the efficiencies move with it.%s"
                    % _rates_moved(results), header, rows))
    return out


def _round_trips_intro(results):
    """The headline's words for the WebSocket workloads, whose goodput is round trips."""
    ws = f.round_trip_workloads(results)
    if not ws:
        return ""
    return ("; on %s, WebSocket round trips per second instead (a message sent and its echo "
            "received and checked, by loadtest/tools/ws_echo_load.py)" % ", ".join("`%s`" % w for w in ws))


def _round_trips_errors(results):
    ws = f.round_trip_workloads(results)
    if not ws:
        return ""
    return (" On %s goodput and requests/s are echoed round trips, and the errors are "
            "ws_echo_load.py's: connect a connection or handshake that failed (a handshake answered "
            "with another status than 101 is a non-2xx), read the server closing, breaking the protocol "
            "or echoing something else, timeout no echo within --timeout." % ", ".join("`%s`" % w for w in ws))


def _only(reference):
    """"`hello`": the workloads a reference serves."""
    return ", ".join("`%s`" % w for w in f.peer(reference).workloads)


def _reference_tables(results, reference):
    """Each workload the reference serves, on every server, as a ratio to the reference
    at the same worker count (none if it did not run)."""
    out = []
    for workload in f.peer(reference).workloads or f.workloads(results):
        if reference not in f.servers(results, workload):
            continue
        servers = [s for s in f.servers(results, workload) if s != reference]
        header = ["workers", f.label(results, reference)] + [f.label(results, s) for s in servers]
        rows = []
        for n in f.worker_counts(results):
            ref_cell = f.cell(results, reference, workload, n)
            ref = f.goodput(ref_cell)
            row = [n, f.failed(ref_cell) or f.num(ref)]
            for s in servers:
                c = f.cell(results, s, workload, n)
                g = f.goodput(c)
                row.append(f.failed(c) or ("–" if g is None else
                                           "%.0f (%.2f×)" % (g, g / ref) if ref else f.num(g)))
            rows.append(row)
        out.append(("Headline: %s against %s" % (workload, f.label(results, reference)),
                    "`%s` goodput (2xx/s) at each worker count; %s" % (workload, f.peer(reference).reference_intro),
                    header, rows))
    return out


def wrk_placement(results):
    """Where wrk ran against the servers: '' when it had CPUs of its own (--server-cpus and
    --wrk-cpus apart), else the sentence that says it shared theirs."""
    o = results["meta"].get("options", {})
    server, load = o.get("server_cpus"), o.get("wrk_cpus")
    if server and load:
        shared = set(procs.parse_cpus(server)) & set(procs.parse_cpus(load))
        if not shared:
            return ""
        return " wrk shares CPU%s %s with the servers." % ("s" if len(shared) > 1 else "",
                                                           procs.cpus_text(shared))
    return " wrk also shares the %s cores with the server." % results["meta"].get(
        "machine", {}).get("nproc", "?")


def latency_note(results):
    o = results["meta"].get("options", {})
    ws = f.round_trip_workloads(results)
    return ("wrk is closed-loop (coordinated omission): each of its %s connections waits for a response "
            "before sending again, so a stalled server is sent less and these percentiles understate "
            "what an open-loop client would see.%s%s"
            % (o.get("connections", "?"), wrk_placement(results),
               " On %s the latency is a WebSocket round trip's (send to the whole echo), measured by "
               "loadtest/tools/ws_echo_load.py, closed-loop in the same way%s."
               % (", ".join("`%s`" % w for w in ws), " and on the same cores" if wrk_placement(results) else "")
               if ws else ""))


def _rates_moved(results, by=0.05):
    """" Here ...": the single-thread rates that moved by more than `by` between before
    and after the cells."""
    moved = []
    for build, after in sorted((results.get("rates_after") or {}).items()):
        before = ((results.get("rates") or {}).get(build) or {}).get("targets") or {}
        for target, r in sorted((after.get("targets") or {}).items()):
            first = (before.get(target) or {}).get("per_s")
            if first and abs(r["per_s"] / first - 1) > by:
                moved.append("%s `%s` %+.0f %%" % (build, target, 100.0 * (r["per_s"] / first - 1)))
    return " Here they moved: %s." % "; ".join(moved) if moved else ""


def _side_by_side_summary(results):
    """" Here: ..." for the measured side-by-side rates: what N loops at once gave against
    N x one loop alone, per build and target."""
    parts = []
    for build, by_copies in sorted((results.get("rates_side_by_side") or {}).items()):
        alone = ((results.get("rates") or {}).get(build) or {}).get("targets") or {}
        for copies, together in sorted(by_copies.items(), key=lambda kv: int(kv[0])):
            for target, r in sorted((together.get("targets") or {}).items()):
                one = (alone.get(target) or {}).get("per_s")
                if one:
                    parts.append("%s `%s`: %s loops %.2f of %s × alone" % (build, target, copies,
                                                                          r["per_s"] / (int(copies) * one), copies))
    return " Here: %s." % "; ".join(parts) if parts else ""


def _ordered_cells(results):
    order = {s: i for i, s in enumerate(f.servers(results))}
    wl = {w: i for i, w in enumerate(f.workloads(results))}
    return sorted(f.measured(results), key=lambda c: (order.get(c["server"], 99),
                                                     wl.get(c["workload"], 99), c["workers"]))


# -- charts -------------------------------------------------------------------

def charts(results, out_dir):
    """Writes the PNG charts; returns [(file name, title, caption)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    servers, workloads, workers = f.servers(results), f.workloads(results), f.worker_counts(results)
    top = max(workers)
    made = []

    def grouped(ax, groups, series, value, ylabel, log=False, fmt=None):
        # Each group centres the bars it has: a server with no figure there (a reference on a
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
            bars = ax.bar(xs, ys, width, label=f.label(results, s), color=COLORS.get(s),
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
        """One legend for every panel: a server that ran one workload only (a reference) is in
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
        grouped(ax, workers, f.servers(results, w), lambda s, n: f.goodput(f.cell(results, s, w, n)),
                "goodput (%s)" % f.per_s(results, w), fmt="%.0f")
        ax.set_xticklabels(["%d worker%s" % (n, "" if n == 1 else "s") for n in workers])
        ax.set_title(w)
    legend_below(fig, axes)
    save(fig, "throughput.png", "Throughput by strategy and worker count",
         "Goodput (2xx responses per second%s); hatched bars are the peers on Python 3.11%s." % (
             "; WebSocket round trips per second on %s" % ", ".join(f.round_trip_workloads(results))
             if f.round_trip_workloads(results) else "",
             "".join("; cross-hatched, %s, on %s only" % (f.label(results, r), _only(r).replace("`", ""))
                     for r in f.references(results) if f.peer(r).workloads)))

    # Latency percentiles at the top worker count.
    fig, axes = subplots(len(workloads))
    for ax, w in zip(axes, workloads):
        def lat(s, key, w=w):
            c = f.cell(results, s, w, top)
            v = ((c or {}).get("wrk") or {}).get("latency_ms", {}).get(key)
            return v if v else None
        grouped(ax, [k for k, _ in LATENCY_KEYS], f.servers(results, w), lat, "latency (ms, log)", log=True)
        ax.set_xticklabels([label for _, label in LATENCY_KEYS])
        ax.set_title("%s, %d workers" % (w, top))
    legend_below(fig, axes, "wrk is closed-loop (coordinated omission)%s: percentiles understate "
                            "an open-loop client's" % (" and shares the cores with the server"
                                                       if wrk_placement(results) else ""))
    save(fig, "latency.png", "Latency percentiles",
         latency_note(results))

    # Memory: peak total PSS under load, by server and worker count.
    fig, ax = plt.subplots(figsize=(7, 4.2))

    def mem(s, n):
        values = [(c.get("load") or {}).get("total_pss_kb_peak") for c in f.measured(results)
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
            grouped(ax, workers, f.servers(results, w),
                    lambda s, n, w=w: (f.cell(results, s, w, n) or {}).get("efficiency"),
                    "goodput / ideal", fmt="%.2f")
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticklabels(["%d core%s" % (min(n, results["meta"]["machine"]["nproc"]),
                                               "" if n == 1 else "s") for n in workers])
            ax.set_title("%s: efficiency vs ideal" % w)
            tops = [c.get("efficiency") or 0 for c in f.measured(results) if c["workload"] == w]
            ax.set_ylim(0, max([1.15] + [1.1 * t for t in tops]))  # above 1: not CPU-bound (the verdict says)
        legend_below(fig, axes)
        save(fig, "efficiency.png", "Efficiency against the ideal",
             "Ideal = cores × the single-thread rate of the same handler in the same Python build.")

    # Peers next to the strategies, as ratios to the first peer that counts in ratios (to a reference if it
    # is the only peer: then on hello alone).
    peer_servers = [s for s in servers if f.kind(results, s) == "peer"]
    if peer_servers:
        # (in the peers table's order: gunicorn for a WSGI app, uvicorn for an ASGI one)
        ref = min([s for s in peer_servers if f.in_ratios(results, s)] or peer_servers,
                  key=lambda s: list(peers.PEERS).index(s) if s in peers.PEERS else len(peers.PEERS))
        groups = [w for w in workloads if f.goodput(f.cell(results, ref, w, top))]
        fig, ax = plt.subplots(figsize=(max(9, 1.6 * len(groups) + 2), 4.4))

        def ratio(s, w):
            g, r = f.goodput(f.cell(results, s, w, top)), f.goodput(f.cell(results, ref, w, top))
            return g / r if g is not None and r else None

        grouped(ax, groups, servers, ratio, "goodput / %s" % ref, fmt="%.1f")
        ax.set_xticklabels(groups)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title("gilgamesh strategies vs peers at %d workers (ratio to %s)" % (top, ref), fontsize=10)
        legend_below(fig, [ax])
        save(fig, "peers.png", "Peers",
             "Goodput relative to %s at the same worker count. The Python peers serve the same app "
             "through loadtest/%s.py on Python 3.11; gilgamesh embeds 3.13.%s" % (
                 ref, "asgi_demo" if results["meta"].get("options", {}).get("asgi") else "wsgi_demo", "".join(" %s answers %s only, with no Python at all." % (
                     f.label(results, r), _only(r).replace("`", ""))
                     for r in f.references(results) if f.peer(r).workloads)))
    return made


# -- the page -------------------------------------------------------------------

def _context(results):
    m = results["meta"]
    o = m.get("options", {})
    own = ["%s: %d" % (name, w["connections"]) for name, w in m.get("workloads", {}).items()
           if w.get("connections")]  # workloads with connections of their own (asgi-sleep)
    lines = page.context_head(results) + [
        "Load: %s, %s connections%s, %s threads, %s s warm-up then %s s measured per cell, --timeout %s s."
        % (m.get("wrk"), o.get("connections"), " (%s)" % ", ".join(own) if own else "",
           o.get("wrk_threads"), o.get("warmup_s"), o.get("duration_s"), o.get("wrk_timeout_s")),
    ]
    ws = f.round_trip_workloads(results)
    if ws:
        lines.append("WebSocket load: loadtest/tools/ws_echo_load.py (one process, /usr/bin/python3 with "
                     "uvloop) on %s: each connection opens with its own handshake, then sends a message "
                     "and waits for its echo before the next, for the same warm-up and measured seconds."
                     % ", ".join("`%s`" % w for w in ws))
    lines += page.workload_lines(results)
    for name, ref in sorted(results.get("peers", {}).items()):
        if ref.get("skipped") or not f.peer(name) or f.peer(name).in_ratios:
            continue
        skipped = sorted({c["workload"] for c in results["cells"]
                          if c["server"] == name and c.get("skipped")})
        lines.append("Reference: %s, `%s` (%s), on %s only%s." % (
            ref.get("label", name), ref.get("version") or "version unknown", ref.get("binary"),
            ", ".join("`%s`" % w for w in ref.get("workloads", [])),
            "; skipped on %s (no such handler in %s: not run, not failed)" % (", ".join(
                "`%s`" % w for w in skipped), name) if skipped else ""))
    return lines


def _problems(results):
    lines = []
    if results["meta"].get("binary_changed_during_run"):
        lines.append("The server binary was rebuilt during this run: its cells ran different builds.")
    busy = f.busy(results)
    if busy:
        lines.append("Other processes used %.2f cores on average while cells were measured (most: "
                     "%.2f in `%s`): absolute figures are low and ratios noisier than on an idle "
                     "machine." % busy)
    for name, peer in sorted(results.get("peers", {}).items()):
        if peer.get("skipped"):
            lines.append("Peer `%s` skipped: %s" % (name, peer["skipped"]))
    lines += page.unavailable_strategies(results)
    for c in results["cells"]:
        if c.get("error"):
            lines.append("Cell `%s`: %s" % (c["id"], c["error"].strip().splitlines()[0]))
        elif c.get("wrk") and (c["wrk"]["errors"]["timeout"] or f.non2xx(c)):
            lines.append("Cell `%s`: %d non-2xx responses, %d timeouts" % (
                c["id"], f.non2xx(c), c["wrk"]["errors"]["timeout"]))
    return lines


def report_page(results):
    all_tables = tables(results)
    return page.Page(
        title="gilgamesh load test", short_title="gilgamesh load test",
        verdict=verdict.verdict(results), context=_context(results), notes=results.get("notes", []),
        problems=_problems(results), tables=all_tables,
        lead=sum(1 for title, _, _, _ in all_tables if title.startswith("Headline")))


def write(results, out_dir):
    """Renders results.json's figures into out_dir: charts, report.md, report.html."""
    return page.write(results, out_dir, report_page, charts, "bench.report")



if __name__ == "__main__":
    page.rerender(write, sys.argv[1])
