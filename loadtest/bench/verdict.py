"""The answer a report opens with: which strategy and worker count to serve this
app with, and why, from the figures of the run; the runner-up and what it
would cost; what `gilgamesh check` found; and the cautions a reader needs to
read the figures right (a workload that is not CPU-bound, where "ideal" does
not apply; a peer with another concurrency model than the gilgamesh cells).

Everything here reads a results.json dict, so an old run can be re-rendered.
"""

import math

from . import figures as f

SAME = 0.05            # goodputs closer than this are not told apart by one run
WAITS_HANDLER = 0.25   # a handler that spends less than this share of its call on CPU waits
                       # (a CPU-bound one on a busy machine stays well above it)
WAITS_SERVER = 0.25    # a server busy less than this share of its request slots waits
EFFICIENCY_HIGH = 1.1  # efficiency above this needs an explanation


def _rate(value):
    return "%.1f" % value if value < 100 else "{:,.0f}".format(value)


def _unit(c):
    """" round trips" for a cell whose goodput is WebSocket round trips, else ""."""
    unit = (c.get("wrk") or {}).get("unit")
    return " " + unit if unit else ""


def _pct(fraction):
    return "%.0f %%" % (100.0 * fraction)


class Candidate:
    """One gilgamesh strategy at one worker count, over every workload of the run."""

    def __init__(self, strategy, workers, cells, best):
        self.strategy, self.workers, self.cells = strategy, workers, cells
        self.threads = max(c.get("threads_per_worker") or 1 for c in cells.values())
        ratios = [f.goodput(c) / best[w] for w, c in cells.items()]
        self.score = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        pss = [(c.get("load") or {}).get("total_pss_kb_peak") for c in cells.values()]
        pss = [v for v in pss if v]
        self.memory_mib = max(pss) / 1024.0 if pss else None

    def name(self):
        text = "`%s`, %d worker%s" % (self.strategy, self.workers, "" if self.workers == 1 else "s")
        if self.threads > 1:
            text += " × %d threads" % self.threads
        return text

    def figures(self):
        parts = []
        for w, c in self.cells.items():
            extra = []
            if c.get("efficiency") is not None:
                extra.append("%.2f of ideal" % c["efficiency"])
                if c.get("efficiency_side_by_side") is not None and c["cores"] > 1:
                    extra.append("%.2f of %d loops side by side" % (c["efficiency_side_by_side"], c["cores"]))
            p99 = ((c.get("wrk") or {}).get("latency_ms") or {}).get("p99")
            if p99 is not None:
                extra.append("p99 %.1f ms" % p99)
            parts.append("`%s` %s%s/s%s" % (w, _rate(f.goodput(c)), _unit(c),
                                             " (%s)" % ", ".join(extra) if extra else ""))
        return ", ".join(parts)


def candidates(results):
    """{strategy: [Candidate by worker count]}: the strategies and counts whose cells
    ran on every workload without an error."""
    workloads = f.workloads(results)
    strategies = [s for s in f.servers(results) if f.kind(results, s) == "gilgamesh"]
    best = {}
    for w in workloads:
        values = [f.goodput(c) for c in f.measured(results)
                  if c["kind"] == "gilgamesh" and c["workload"] == w and not c.get("error")]
        values = [v for v in values if v]
        if values:
            best[w] = max(values)
    out = {}
    for s in strategies:
        for n in f.worker_counts(results):
            cells = {w: f.cell(results, s, w, n) for w in best}
            if cells and all(c and not c.get("error") and f.goodput(c) for c in cells.values()):
                out.setdefault(s, []).append(Candidate(s, n, cells, best))
    return out


def _pick_workers(options):
    """The fewest workers within SAME of the strategy's best, and why that count."""
    top = max(options, key=lambda c: c.score)
    chosen = min((c for c in options if c.score >= top.score * (1 - SAME)), key=lambda c: c.workers)
    if len(options) == 1:
        why = "the only worker count measured (`--workers 1,2,4,...` compares others)"
    elif chosen is top:
        why = "the count with the most goodput of those measured (%s)" % ", ".join(
            str(c.workers) for c in options)
    else:
        why = ("%d workers gave %s more, within one run's noise: fewer do as well" % (
            top.workers, _pct(top.score / chosen.score - 1)))
    return chosen, why


def ranking(results):
    """[(Candidate, why this worker count)], best first: the verdict, the runner-up, the rest.
    Of the strategies within SAME of the most goodput, the one with the least memory leads."""
    ranked = sorted((_pick_workers(options) for options in candidates(results).values()),
                    key=lambda item: -item[0].score)
    if ranked:
        ties = [item for item in ranked if item[0].score >= ranked[0][0].score * (1 - SAME)
                and item[0].memory_mib is not None]
        if ties:
            lightest = min(ties, key=lambda item: item[0].memory_mib)
            ranked.remove(lightest)
            ranked.insert(0, lightest)
    return ranked


def leaders(ranked):
    """Sentences for the workloads on which another strategy than the pick served clearly
    more (the pick is best over all the workloads together, not on each)."""
    winner = ranked[0][0]
    out = []
    for w, mine in winner.cells.items():
        best = max((c for c, _ in ranked), key=lambda c: f.goodput(c.cells[w]))
        ahead = f.goodput(best.cells[w]) / f.goodput(mine) - 1
        if best is not winner and ahead > SAME:
            out.append("On `%s` alone, %s serves %s more (%s%s/s against %s/s)." % (
                w, best.name(), _pct(ahead), _rate(f.goodput(best.cells[w])), _unit(mine),
                _rate(f.goodput(mine))))
    return out


def _cost(winner, other):
    """What serving with `other` instead of `winner` costs, in this run's figures."""
    parts = []
    change = other.score / winner.score - 1
    if abs(change) < SAME:
        parts.append("about the same goodput (%+.0f %%, within one run's noise)" % (100 * change))
    else:
        parts.append("%s %s goodput" % (_pct(abs(change)), "less" if change < 0 else "more"))
    if winner.memory_mib is not None and other.memory_mib is not None:
        delta = other.memory_mib - winner.memory_mib
        if abs(delta) >= 1:
            parts.append("%.0f MiB %s memory (%.0f MiB)" % (abs(delta), "more" if delta > 0 else "less",
                                                           other.memory_mib))
        else:
            parts.append("the same memory (%.0f MiB)" % other.memory_mib)
    return ", ".join(parts)


def cpu_bound(results, workload):
    """(False, why) when `workload` is not CPU-bound, (True, share or None) when it is or
    cannot be told. The single-thread rates' CPU time per call decides where they were
    measured; else the server's CPU against its request slots."""
    rates = [(f.rate_targets(results, c["build"]), c) for c in f.measured(results)
             if c["workload"] == workload and c["kind"] == "gilgamesh"]
    mix = f.mix(results, workload)
    for targets, _c in rates:
        if not targets or not mix:
            continue
        have = [(weight, targets[t]) for t, weight in mix.items()
                if t in targets and targets[t].get("cpu_ms_per_call") is not None]
        if len(have) != len(mix):
            continue
        wall = sum(weight * t["ms_per_call"] for weight, t in have)
        cpu = sum(weight * t["cpu_ms_per_call"] for weight, t in have)
        total = sum(weight for weight, _ in have)
        share = cpu / wall if wall else None
        if share is not None and share < WAITS_HANDLER:
            return False, ("called alone, a request took %.1f ms, of which %.1f ms on CPU (%s)"
                           % (wall / total, cpu / total, _pct(share)))
        if share is not None:
            return True, share
    cells = [c for c in f.measured(results) if c["workload"] == workload and c["kind"] == "gilgamesh"
             and not c.get("error") and f.goodput(c) and (c.get("load") or {}).get("server_cpu_cores")]
    if not cells:
        return True, None
    c = max(cells, key=f.goodput)
    run_connections = (results["meta"].get("options") or {}).get("connections")

    def slots_of(x):  # a cell of a threaded workload opens more connections (matrix.py)
        if x.get("event_loop"):  # a loop holds many requests, and is busy only while it runs
            return min(x["workers"], _cpus(results))
        return min(x.get("connections") or run_connections or x["workers"],
                   x["workers"] * (x.get("threads_per_worker") or 1))

    slots = slots_of(c)
    shares = [x["load"]["server_cpu_cores"] / slots_of(x) for x in cells]
    if max(shares) < WAITS_SERVER:
        g = f.goodput(c)
        mean_ms = ((c.get("wrk") or {}).get("latency_ms") or {}).get("mean")
        if c.get("event_loop") and mean_ms is not None:
            each = "round trip" if _unit(c) else "request"
            return False, ("the server used %.2f ms of CPU per %s while a %s took %.0f ms "
                           "on average (`%s`: %.2f cores busy for %d event loop%s)"
                           % (1000.0 * c["load"]["server_cpu_cores"] / g, each, each, mean_ms,
                              c["id"], c["load"]["server_cpu_cores"], slots, "" if slots == 1 else "s"))
        return False, ("the server used %.2f ms of CPU per request while each request held a "
                       "worker for about %.1f ms (`%s`: %.2f cores busy for %d request slots)"
                       % (1000.0 * c["load"]["server_cpu_cores"] / g, 1000.0 * slots / g, c["id"],
                          c["load"]["server_cpu_cores"], slots))
    return True, None


def _cpus(results):
    """The CPUs of the run's machine."""
    return ((results.get("meta") or {}).get("machine") or {}).get("nproc") or 1


def _efficiency_top(results, workload):
    values = [(c["efficiency"], c) for c in f.measured(results)
              if c["workload"] == workload and c.get("efficiency") is not None]
    return max(values, key=lambda item: item[0]) if values else (None, None)


def cautions(results):
    """Sentences on reading the figures: workloads that are not CPU-bound, efficiency above 1."""
    out = []
    for w in f.workloads(results):
        bound, why = cpu_bound(results, w)
        top, cell = _efficiency_top(results, w)
        if not bound:
            text = "`%s` is not CPU-bound: %s." % (w, why)
            if top is not None and top > EFFICIENCY_HIGH:
                text += " Hence efficiency far above 1 (up to %.2f, in the %s cell)." % (
                    top, f.label(results, cell["server"]))
            if _event_loop(results, w):
                text += (" \"Ideal\" (cores × single-thread rate) does not apply to it: a worker's "
                         "event loop holds many waiting requests at once, so its goodput follows the "
                         "connections in flight, not the cores.")
            else:
                text += (" \"Ideal\" (cores × single-thread rate) does not apply to it: a worker that "
                         "waits leaves its core free, so more workers (or threads per worker) than cores "
                         "raise its goodput.")
            out.append(text)
        elif top is not None and top > EFFICIENCY_HIGH:
            out.append("Efficiency above 1 on `%s` (up to %.2f, %s) although it is CPU-bound%s: the "
                       "single-thread rate was measured low (short repeats, or a busy machine), so "
                       "read its ideal as approximate." % (
                           w, top, f.label(results, cell["server"]),
                           " (%s of a call on CPU)" % _pct(why) if isinstance(why, float) else ""))
    return out


def waiting_workloads(results):
    """The workloads that are not CPU-bound."""
    return [w for w in f.workloads(results) if not cpu_bound(results, w)[0]]


def _event_loop(results, workload):
    """Whether the workload's cells serve it on event loops (ASGI: many requests per worker)."""
    return any(c.get("event_loop") for c in f.measured(results) if c["workload"] == workload)


def concurrency(results, winner):
    """Peers that run another concurrency model than the gilgamesh cells (threads in a
    worker), with how far ahead or behind that puts them."""
    out = []
    gil_threads = {c.get("threads_per_worker") or 1 for c in f.measured(results) if c["kind"] == "gilgamesh"}
    waiting = waiting_workloads(results)
    for s in f.servers(results):
        if f.kind(results, s) == "gilgamesh":
            continue
        threads = {c.get("threads_per_worker") or 1 for c in f.measured(results) if c["server"] == s}
        if threads <= gil_threads:
            continue
        t = max(threads)
        n = winner.workers if winner is not None else max(f.worker_counts(results))
        text = ("%s runs %d threads in each worker process: %d requests at once at %d workers, where "
                "the gilgamesh cells hold %s: a different concurrency model." % (
                    f.label(results, s), t, t * n, n,
                    "%d (one request per worker)" % n if gil_threads == {1} else
                    "%s per worker" % "/".join(map(str, sorted(gil_threads)))))
        ratios = []
        if winner is not None:
            for w, c in winner.cells.items():
                peer = f.cell(results, s, w, winner.workers)
                if f.goodput(peer):
                    ratios.append("%.2f× `%s` on `%s`" % (f.goodput(peer) / f.goodput(c), winner.strategy, w))
        if ratios:
            text += " It reached %s." % ", ".join(ratios)
        if waiting:
            text += (" On %s, which wait%s, its threads serve more requests at once: that, not the "
                     "server, is most of the difference; more gilgamesh workers close it."
                     % (", ".join("`%s`" % w for w in waiting), "s" if len(waiting) == 1 else ""))
        else:
            text += " On CPU-bound work its threads share one GIL per process and add little."
        out.append(text)
    return out


def peers_line(results, winner):
    """The peers (those that count in ratios) as a share of the verdict's goodput."""
    parts = []
    for s in f.servers(results):
        if f.kind(results, s) == "gilgamesh" or not f.in_ratios(results, s):
            continue
        ratios = []
        for w, c in winner.cells.items():
            peer = f.cell(results, s, w, winner.workers)
            if f.goodput(peer):
                detail = ["`%s`" % w] if len(winner.cells) > 1 else []
                theirs, ours = peer.get("server_cpu_us_per_request"), c.get("server_cpu_us_per_request")
                if theirs and ours:  # what each response cost the server, whoever had more of the cores
                    detail.append("%.0f µs of server CPU per response against %.0f" % (theirs, ours))
                ratios.append("%.2f×%s" % (f.goodput(peer) / f.goodput(c),
                                           " (%s)" % "; ".join(detail) if detail else ""))
        if ratios:
            parts.append("%s %s" % (f.label(results, s), ", ".join(ratios)))
    if not parts:
        return None
    return "Peers at %d workers, as a share of `%s`'s goodput: %s." % (
        winner.workers, winner.strategy, "; ".join(parts))


def verdict(results):
    """{"headline": one sentence, "points": [sentences]} (markdown inline code in backticks)."""
    from . import check
    points = []
    ranked = ranking(results)
    if not ranked:
        headline = ("No verdict: no gilgamesh strategy completed a cell on every workload of this run "
                    "(see Problems).")
        winner = None
    else:
        winner, workers_why = ranked[0]
        headline = "Serve this app with %s." % winner.name()
        ahead = [c for c, _ in ranked[1:] if c.score > winner.score]
        if ahead:
            why = ("Why: the least memory of the strategies within one run's noise of the most goodput "
                   "(%s measured up to %s more): %s" % (
                       ", ".join("`%s`" % c.strategy for c in ahead),
                       _pct(max(c.score for c in ahead) / winner.score - 1), winner.figures()))
        else:
            why = "Why: the most goodput of the gilgamesh strategies in this run: %s" % winner.figures()
        if winner.memory_mib is not None:
            why += "; %.0f MiB PSS under load" % winner.memory_mib
        why += ". %d worker%s: %s." % (winner.workers, "" if winner.workers == 1 else "s", workers_why)
        waiting = [w for w in waiting_workloads(results) if not _event_loop(results, w)]
        if waiting and winner.workers == max(f.worker_counts(results)):
            n = winner.workers
            why += (" %s wait%s, so more workers than cores would likely serve more: measure them "
                    "(`--workers %d,%d,%d`)." % (", ".join("`%s`" % w for w in waiting),
                                                  "s" if len(waiting) == 1 else "", n, 2 * n, 4 * n))
        busy = f.busy(results)
        if busy:
            why += (" The machine was busy (other processes used %.2f cores on average): the pick may "
                    "change on an idle one." % busy[0])
        points.append(why)
        if len(ranked) >= 2:
            second = ranked[1][0]
            text = "Runner-up: %s: %s; %s." % (second.name(), _cost(winner, second), second.figures())
            rest = ["`%s` %+.0f %%" % (c.strategy, 100 * (c.score / winner.score - 1)) for c, _ in ranked[2:]]
            if rest:
                text += " Then %s." % ", ".join(rest)
            points.append(text)
            points += leaders(ranked)
        else:
            points.append("No runner-up: one gilgamesh strategy ran.")
    found = check.summary(results.get("check"))
    if found:
        points.append(found)
    for name, reason in (results.get("strategies") or {}).get("unsupported", {}).items():
        points.append("`%s` %s" % (name, f.unavailable(reason)))
    points += cautions(results)
    points += concurrency(results, winner)
    if winner is not None:
        line = peers_line(results, winner)
        if line:
            points.append(line)
    return {"headline": headline, "points": points}
