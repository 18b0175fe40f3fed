"""The page both reports are made of (the load test's and the soak's): a title, a
verdict (the load test's), the run's context, notes, problems, the leading
tables, the charts and the other tables; written as report.md and as a
self-contained report.html (charts as data-URI PNGs) next to the chart PNGs."""

import base64
import html
import json
import os
from dataclasses import dataclass, field

from . import figures as f

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
.verdict { background: #e8f4ea; border-left: 4px solid #2ca02c; padding: 0.5em 1em; margin: 1em 0; }
.verdict h2 { margin: 0.2em 0 0.4em; } .verdict .pick { font-size: 1.15em; font-weight: bold; }
.problem { color: #a00; } td.failed { color: #b00; background: #fde8e8; font-weight: bold; }
figure { margin: 1em 0 2em; } img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 3px; }
"""

# Writes each chart's rendered size into the DOM, so a headless browser's
# --dump-dom shows whether the images decoded and are visible.
RENDER_CHECK = """
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


@dataclass
class Page:
    title: str                                   # the h1
    short_title: str                             # the HTML <title>
    context: list                                # lines: command, machine, server, load...
    tables: list                                 # [(title, intro, header, rows)]
    lead: int = 0                                # how many of `tables` come before the charts
    notes: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    charts_missing: str = ""                     # why there are no charts (no matplotlib)
    verdict: dict = None                         # {"headline": str, "points": [str]}, first


# -- what both reports say about a run ------------------------------------------

def context_head(results):
    """Command, when, the machine and the server: the first lines of every report."""
    m = results["meta"]
    mach = m.get("machine", {})
    return [
        "Command: `%s`" % m.get("command", "?"),
        "Started %s, finished %s%s." % (m.get("started", "?"), m.get("finished", "?"),
                                        " (INTERRUPTED: partial results)" if m.get("interrupted") else ""),
        "Machine: %s CPUs (%s), %s GiB memory, Linux %s; load average at start %s." % (
            mach.get("nproc"), mach.get("cpu_model"), mach.get("memory_gib"), mach.get("kernel"),
            ", ".join("%.2f" % x for x in mach.get("load_average_at_start", []))),
        "Server: `%s`: %s." % (m.get("binary"), (m.get("binary_version") or "").replace("\n", "; ")),
    ]


def workload_lines(results):
    return ["Workload `%s`: %s." % (name, w["description"])
            for name, w in results["meta"].get("workloads", {}).items()]


def unavailable_strategies(results):
    """A problem line per strategy left out: the check says it cannot load the app, or the
    binary could not start it."""
    lines = ["Strategy `%s` left out: `gilgamesh check` says it cannot load the app (%s)." % item
             for item in ((results.get("check") or {}).get("excluded") or {}).items()]
    return lines + ["Strategy `%s` %s" % (name, f.unavailable(reason))
                    for name, reason in results["strategies"].get("unsupported", {}).items()]


# -- rendering ------------------------------------------------------------------

def md_table(header, rows):
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def inline_code(text):
    escaped = html.escape(text)
    pieces = escaped.split("`")
    return "".join(p if i % 2 == 0 else "<code>%s</code>" % p for i, p in enumerate(pieces))


def markdown(page, chart_list):
    parts = ["# " + page.title, ""]
    if page.verdict:
        parts += ["## Verdict", "", "**%s**" % page.verdict["headline"], ""]
        parts += ["- " + p for p in page.verdict["points"]] + [""]
    parts += ["- " + l for l in page.context]
    if page.notes:
        parts += ["", "Notes:", ""] + ["- " + n for n in page.notes]
    if page.problems:
        parts += ["", "## Problems", ""] + ["- " + p for p in page.problems]
    for title, intro, header, rows in page.tables[:page.lead]:
        parts += ["", "## " + title, "", intro, "", md_table(header, rows)]
    parts += ["", "## Charts", ""]
    if page.charts_missing:
        parts += [page.charts_missing, ""]
    for name, title, caption in chart_list:
        parts += ["### " + title, "", caption, "", "![%s](%s)" % (title, name), ""]
    for title, intro, header, rows in page.tables[page.lead:]:
        parts += ["", "## " + title, "", intro, "", md_table(header, rows)]
    return "\n".join(parts) + "\n"


def html_page(page, chart_list, out_dir):
    e = inline_code
    body = ["<h1>%s</h1>" % e(page.title)]
    if page.verdict:
        body += ['<div class="verdict" id="verdict"><h2>Verdict</h2>',
                 '<p class="pick">%s</p><ul>' % e(page.verdict["headline"])]
        body += ["<li>%s</li>" % e(p) for p in page.verdict["points"]]
        body += ["</ul></div>"]
    body += ["<ul>"] + ["<li>%s</li>" % e(l) for l in page.context] + ["</ul>"]
    if page.notes:
        body += ['<div class="note"><ul>'] + ["<li>%s</li>" % e(n) for n in page.notes] + ["</ul></div>"]
    if page.problems:
        body += (["<h2>Problems</h2><ul>"] + ['<li class="problem">%s</li>' % e(p) for p in page.problems]
                 + ["</ul>"])

    def table(title, intro, header, rows):
        body.append("<h2>%s</h2><p>%s</p><table><tr>%s</tr>" % (
            e(title), e(intro), "".join("<th>%s</th>" % e(str(h)) for h in header)))
        for row in rows:
            body.append("<tr>%s</tr>" % "".join(
                '<td class="failed">%s</td>' % e(str(v)) if str(v).startswith("FAILED") else
                "<td>%s</td>" % e(str(v)) for v in row))
        body.append("</table>")

    for t in page.tables[:page.lead]:
        table(*t)
    body.append('<h2>Charts</h2><p id="render-check">charts not checked (no JavaScript)</p>')
    if page.charts_missing:
        body.append('<p class="problem" id="charts-missing">%s</p>' % e(page.charts_missing))
    for name, title, caption in chart_list:
        with open(os.path.join(out_dir, name), "rb") as fh:
            data = base64.b64encode(fh.read()).decode()
        body.append('<figure><h3>%s</h3><img class="chart" alt="%s" src="data:image/png;base64,%s">'
                    '<figcaption>%s</figcaption></figure>' % (e(title), e(title), data, e(caption)))
    for t in page.tables[page.lead:]:
        table(*t)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>%s</title><style>%s</style></head><body>\n%s\n"
            "<script>%s</script></body></html>\n" % (html.escape(page.short_title), CSS, "\n".join(body),
                                                     RENDER_CHECK))


def write(results, out_dir, page_of, charts_of, module):
    """Charts, report.md and report.html of `results` in out_dir; `page_of(results)` makes
    the Page, `charts_of(results, out_dir)` writes the PNGs and lists them. Without
    matplotlib the report has every table and says how to add the charts (`module`, the
    report's own, renders it again)."""
    page = page_of(results)
    try:
        chart_list = charts_of(results, out_dir)
    except ImportError as e:
        chart_list = []
        page.charts_missing = (
            "No charts: %s. Where matplotlib is installed (Debian: python3-matplotlib), "
            "`cd loadtest && python3 -m %s %s` writes this report again with them."
            % (e, module, out_dir))
        print("WARNING: %s" % page.charts_missing)
    md_path = os.path.join(out_dir, "report.md")
    html_path = os.path.join(out_dir, "report.html")
    with open(md_path, "w") as fh:
        fh.write(markdown(page, chart_list))
    with open(html_path, "w") as fh:
        fh.write(html_page(page, chart_list, out_dir))
    return {"md": md_path, "html": html_path, "charts": [os.path.join(out_dir, n) for n, _, _ in chart_list]}


def rerender(write, folder):
    """`python -m bench.report FOLDER`: the report of an old results.json again."""
    with open(os.path.join(folder, "results.json")) as fh:
        print(write(json.load(fh), folder))
