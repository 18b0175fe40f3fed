"""report.md, report.html and the charts of a soak run (`loadtest/run --soak`).
Can be rerun on an old results.json:

    /usr/bin/python3 -m bench.soak_report loadtest/results/<timestamp>-soak   (from loadtest/)
"""

import os
import sys

from . import page
from .figures import STRATEGY_ORDER, num as _num
from .report import COLORS


def _ordered(results):
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    return sorted(results.get("soak", []), key=lambda r: order.get(r["strategy"], 99))


def _verdict(result):
    an = result.get("analysis") or {}
    if "end_vs_baseline_pct" not in an:
        return "–"
    if not an.get("recycles"):
        word = "no recycles"
    else:
        word = "bounded" if an["bounded"] else "GROWS"
    return "%s (%+.1f %%)" % (word, an["end_vs_baseline_pct"])


def tables(results):
    soak = results["meta"]["soak"]
    out = []
    header = ["strategy", "recycles", "recycles/s", "idle PSS MiB", "PSS at %.0f s MiB" % soak["baseline_s"],
              "PSS at end MiB", "peak MiB", "growth KiB/recycle", "growth MiB/hour",
              "end vs baseline (bound: +%.0f %%)" % soak["bound_pct"]]
    rows = []
    for r in _ordered(results):
        an = r.get("analysis") or {}
        idle = (r.get("memory_idle") or {}).get("total_pss_kb")
        rows.append([r["strategy"], _num(an.get("recycles"), "%d"), _num(an.get("recycles_per_s"), "%.2f"),
                     _num(idle / 1024.0 if idle else None, "%.1f"),
                     _num(an.get("pss_baseline_mib"), "%.1f"), _num(an.get("pss_end_mib"), "%.1f"),
                     _num(an.get("pss_peak_mib"), "%.1f"),
                     _num(an.get("growth_kib_per_recycle"), "%.1f"),
                     _num(an.get("growth_mib_per_hour"), "%.1f"), _verdict(r)])
    out.append(("Memory while recycling",
                "Total PSS = the server process plus every descendant (worker processes, zygote), "
                "read from /proc/PID/smaps_rollup, so pages shared between them count once. Growth "
                "per recycle and per hour: least-squares slopes over the samples from the baseline "
                "(%.0f s into the load) to the end. A strategy is bounded when PSS at the end is "
                "at most %.0f %% above PSS at the baseline (less is fine). `threads` and `free-threaded` share one "
                "interpreter: --max-requests recycles nothing there."
                % (soak["baseline_s"], soak["bound_pct"]), header, rows))

    header = ["strategy", "seconds", "goodput/s", "non-2xx", "socket errors", "server CPU (cores)",
              "interpreters created / ended", "stopped early"]
    rows = []
    for r in _ordered(results):
        w = r.get("wrk") or {}
        an = r.get("analysis") or {}
        stats = r.get("stats_at_end") or {}
        bad = sum(n for code, n in (w.get("responses_by_status") or {}).items() if not code.startswith("2"))
        errs = sum(v for k, v in (w.get("errors") or {}).items() if k != "status_over_399")
        made = stats.get("interpreters_created")
        ended = stats.get("interpreters_ended")
        rows.append([r["strategy"], _num(an.get("seconds"), "%.0f"), _num(w.get("goodput_per_s"), "%.1f"),
                     bad if w else "–", errs if w else "–",
                     _num((r.get("load") or {}).get("server_cpu_cores"), "%.2f"),
                     "%s / %s" % (made, ended) if made is not None else "–",
                     r.get("stopped") or r.get("error") or ""])
    out.append(("Load", "What wrk sent and got; the server's own interpreter counters where /stats "
                        "reports them.", header, rows))
    return out


def charts(results, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    soak = results["meta"]["soak"]
    runs = [r for r in _ordered(results) if r.get("samples")]
    made = []
    if not runs:
        return made

    def save(fig, name, title, caption):
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)
        made.append((name, title, caption))

    # Memory and recycles against time, one panel per strategy (each its own scale).
    cols = min(2, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.4 * rows + 0.4), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[len(runs):]:
        a.set_visible(False)
    for ax, r in zip(flat, runs):
        s = [x for x in r["samples"] if x.get("total_pss_kb")]
        t0 = s[0]["t"]
        minutes = [(x["t"] - t0) / 60.0 for x in s]
        pss = [x["total_pss_kb"] / 1024.0 for x in s]
        color = COLORS.get(r["strategy"], "#333333")
        ax.plot(minutes, pss, color=color, linewidth=1.4, label="total PSS")
        an = r.get("analysis") or {}
        if an.get("pss_baseline_mib"):
            b = an["pss_baseline_mib"]
            ax.axhspan(b * (1 - soak["bound_pct"] / 100), b * (1 + soak["bound_pct"] / 100),
                       color=color, alpha=0.12, label="baseline ±%.0f %%" % soak["bound_pct"])
            ax.axvline(an["baseline_s"] / 60.0, color="black", linewidth=0.7, linestyle=":")
        ax.set_ylim(bottom=0, top=max(pss) * 1.15)
        ax.set_xlabel("minutes under load")
        ax.set_ylabel("PSS, MiB")
        ax.grid(alpha=0.3)
        title = "%s: %s" % (r["strategy"], _verdict(r))
        ax.set_title(title, fontsize=10)
        with_recycles = [(m, x["recycles"]) for m, x in zip(minutes, s) if "recycles" in x]
        if with_recycles and with_recycles[-1][1] > 0:
            ax2 = ax.twinx()
            ax2.plot([m for m, _ in with_recycles], [n for _, n in with_recycles], color="#555555",
                     linewidth=1.0, linestyle="--", label="recycles")
            ax2.set_ylabel("recycles (dashed)")
            ax2.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    fig.tight_layout()
    save(fig, "soak-memory.png", "Memory and recycles over time",
         "Total PSS (server + worker processes, left axis) and workers recycled so far (dashed, right "
         "axis). The band is PSS at the baseline (dotted line) ±%.0f %%; each panel has its own scale."
         % soak["bound_pct"])

    # Memory against recycles, all strategies that recycle.
    recycling = [r for r in runs if (r.get("analysis") or {}).get("recycles")]
    if recycling:
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        top = []
        for r in recycling:
            s = [x for x in r["samples"] if x.get("total_pss_kb") and "recycles" in x]
            ys = [x["total_pss_kb"] / 1024.0 for x in s]
            top.append(max(ys))
            an = r["analysis"]
            label = r["strategy"]
            if an.get("growth_kib_per_recycle") is not None:
                label += " (%.0f KiB/recycle)" % an["growth_kib_per_recycle"]
            ax.plot([x["recycles"] for x in s], ys, color=COLORS.get(r["strategy"]), linewidth=1.4,
                    label=label)
        low = min(min(x["total_pss_kb"] for x in r["samples"] if x.get("total_pss_kb"))
                  for r in recycling) / 1024.0
        if max(top) / max(low, 1.0) > 20:
            ax.set_yscale("log")
            ax.set_ylabel("PSS, MiB (log)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel("PSS, MiB")
        ax.set_xlabel("workers recycled")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        ax.set_title("Memory against recycles (--max-requests %d, jitter %d, %d workers)"
                     % (soak["max_requests"], soak["jitter"], soak["workers"]), fontsize=10)
        fig.tight_layout()
        save(fig, "soak-recycles.png", "Memory against recycles",
             "Total PSS against the number of workers recycled so far; the slope is the memory a "
             "recycle costs and never gives back.")
    return made


def _context(results):
    m, soak = results["meta"], results["meta"]["soak"]
    lines = page.context_head(results) + [
        "Each strategy: %d workers, `--max-requests %d --max-requests-jitter %d`, %d s of wrk (%s "
        "connections, %s threads), memory sampled every %.1f s; stopped early above %d MiB." % (
            soak["workers"], soak["max_requests"], soak["jitter"], soak["seconds"],
            m.get("options", {}).get("connections"), m.get("options", {}).get("wrk_threads"),
            soak["sample_interval_s"], soak["memory_limit_mib"]),
    ]
    extra = m.get("options", {}).get("server_args", []) + m.get("options", {}).get("server_env", [])
    if extra:
        lines.append("Also given to every server: `%s`." % " ".join(extra))
    return lines + page.workload_lines(results)


def _problems(results):
    lines = page.unavailable_strategies(results)
    for r in _ordered(results):
        if r.get("error"):
            lines.append("`%s`: %s" % (r["strategy"], r["error"].strip().splitlines()[0]))
        if r.get("stopped"):
            lines.append("`%s` stopped early: %s" % (r["strategy"], r["stopped"]))
        an = r.get("analysis") or {}
        if an.get("recycles") and not an.get("bounded"):
            lines.append("`%s` grows: %+.1f %% from %.0f s to the end, %.1f KiB per recycle, %.0f MiB "
                         "per hour." % (r["strategy"], an["end_vs_baseline_pct"], an["baseline_s"],
                                        an.get("growth_kib_per_recycle") or 0,
                                        an.get("growth_mib_per_hour") or 0))
    return lines


def soak_page(results):
    return page.Page(title="gilgamesh soak: memory while workers are recycled", short_title="gilgamesh soak",
                     context=_context(results), problems=_problems(results), tables=tables(results), lead=1)


def write(results, out_dir):
    return page.write(results, out_dir, soak_page, charts, "bench.soak_report")



if __name__ == "__main__":
    page.rerender(write, sys.argv[1])
