"""GET /metrics read the way Prometheus reads it: Debian's python3-prometheus-client
parser, plus the text-format rules promtool checks, after real traffic."""

import math
import re
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gilgamesh_harness import find_route_entry, wait_for_stats

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
SAMPLE = re.compile(r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)\Z')
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|\Z)')

# Every family a scrape must hold, with its type.
EXPECTED = {
    "gilgamesh_build_info": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "gilgamesh_connections_open": "gauge",
    "gilgamesh_connections_accepted_total": "counter",
    "gilgamesh_event_streams_open": "gauge",
    "gilgamesh_responses_total": "counter",
    "gilgamesh_rejected_queue_full_total": "counter",
    "gilgamesh_deadline_exceeded_total": "counter",
    "gilgamesh_workers": "gauge",
    "gilgamesh_busy_workers": "gauge",
    "gilgamesh_queue_depth": "gauge",
    "gilgamesh_queue_capacity": "gauge",
    "gilgamesh_ready_workers": "gauge",
    "gilgamesh_worker_recycles_total": "counter",
    "gilgamesh_worker_replacements_total": "counter",
    "gilgamesh_worker_interrupted_total": "counter",
    "gilgamesh_worker_abandoned_total": "counter",
    "gilgamesh_abandoned_workers": "gauge",
    "gilgamesh_abandoned_workers_limit": "gauge",
    "gilgamesh_worker_killed_total": "counter",
    "gilgamesh_dropped_disconnected_total": "counter",
    "gilgamesh_expired_in_queue_total": "counter",
    "gilgamesh_interpreters_created_total": "counter",
    "gilgamesh_interpreters_ended_total": "counter",
    "gilgamesh_interpreters_left": "gauge",
    "gilgamesh_worker_state": "gauge",
    "gilgamesh_worker_requests_total": "counter",
    "gilgamesh_route_requests_total": "counter",
    "gilgamesh_route_client_errors_total": "counter",
    "gilgamesh_route_errors_total": "counter",
    "gilgamesh_route_latency_seconds": "histogram",
}


def lint(text):
    """The rules of the text format (what `promtool check metrics` enforces), applied
    line by line: returns {family: (type, help, [(name, labels, value)])}."""
    families = {}
    current = None
    seen_series = set()
    assert text.endswith("\n"), "the exposition must end with a newline"
    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (number, line)
        assert line.strip(), "empty line: " + where
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert NAME.match(name), where
            assert name not in families, "family %s appears twice (not contiguous): %s" % (name, where)
            assert help_text.strip(), "empty HELP: " + where
            families[name] = [None, help_text, []]
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current, "TYPE without its HELP just before: " + where
            assert families[name][0] is None and not families[name][2], "TYPE after samples: " + where
            assert kind in ("counter", "gauge", "histogram", "summary"), where
            if kind == "counter":
                assert name.endswith("_total"), "counter without _total: " + where
            families[name][0] = kind
        else:
            assert not line.startswith("#"), "stray comment: " + where
            m = SAMPLE.match(line)
            assert m, "not a sample: " + where
            sample_name = m.group("name")
            assert current is not None and families[current][0], "sample before HELP/TYPE: " + where
            kind = families[current][0]
            allowed = {current}
            if kind == "histogram":
                allowed = {current + "_bucket", current + "_sum", current + "_count"}
            assert sample_name in allowed, "sample %s outside its family %s: %s" % (sample_name, current, where)
            labels = {}
            raw = m.group("labels") or ""
            pos = 0
            while pos < len(raw):
                lm = LABEL_PAIR.match(raw, pos)
                assert lm, "bad labels: " + where
                assert LABEL.match(lm.group(1)) and lm.group(1) not in labels, where
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            value = float(m.group("value"))
            assert not math.isnan(value), where
            series = (sample_name, tuple(sorted(labels.items())))
            assert series not in seen_series, "duplicate series: " + where
            seen_series.add(series)
            families[current][2].append((sample_name, labels, value))
    for name, (kind, _, samples) in families.items():
        assert kind, "family %s has no TYPE" % name
        assert samples, "family %s has no samples" % name
    return {name: tuple(v) for name, v in families.items()}


def scrape(server):
    r = server.get("/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    return r.text


def parse(text):
    """Debian's prometheus_client parser: {sample-family name: family}. A family the
    parser could not type, or split, shows up as 'unknown' or as a second family."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name not in out, "the parser saw %s twice: its samples are not contiguous" % name
        assert family.type in ("counter", "gauge", "histogram", "summary"), (family.name, family.type)
        assert family.documentation, "%s has no HELP" % family.name
        assert family.samples, "%s is empty" % family.name
        out[name] = family
    return out


def value(families, name, **labels):
    family = families[name]
    sample_name = name if family.type != "histogram" else name + "_count"
    found = [s.value for s in family.samples
             if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_every_family_is_typed_documented_and_contiguous(demo_server):
    for path in ("/hello", "/fib?n=15", "/fib?n=99", "/nope"):
        demo_server.get(path)
    text = scrape(demo_server)
    linted = lint(text)
    parsed = parse(text)
    assert set(linted) == set(parsed)
    expected = dict(EXPECTED)
    if demo_server.strategy == "processes":
        expected.update({"gilgamesh_zygote_restarts_total": "counter",
                         "gilgamesh_worker_resident_memory_bytes": "gauge",
                         "gilgamesh_worker_proportional_memory_bytes": "gauge"})
    for name, kind in expected.items():
        assert name in parsed, "missing family %s" % name
        assert parsed[name].type == kind, (name, parsed[name].type)
        assert linted[name][0] == kind


def test_values_follow_traffic(demo_server):
    before = parse(scrape(demo_server))
    stats_before = demo_server.get("/stats").json()
    for _ in range(5):
        assert demo_server.get("/hello").status == 200
    for _ in range(2):
        assert demo_server.get("/fib?n=20").status == 200
    assert demo_server.get("/fib?n=99").status == 400
    after = parse(scrape(demo_server))
    stats = demo_server.get("/stats").json()

    hello = {"route": "/hello", "methods": "GET"}
    fib = {"route": "/fib", "methods": "GET"}
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("gilgamesh_route_requests_total", **hello) == 5
    assert delta("gilgamesh_route_requests_total", **fib) == 3
    assert delta("gilgamesh_route_client_errors_total", **fib) == 1
    assert delta("gilgamesh_route_errors_total", **fib) == 0
    assert delta("gilgamesh_route_latency_seconds", **hello) == 5
    # 5 /hello, 3 /fib, plus the /metrics and /stats requests of this test itself
    assert delta("gilgamesh_responses_total", **{"class": "2xx"}) >= 7 + 2
    assert delta("gilgamesh_responses_total", **{"class": "4xx"}) == 1
    assert delta("gilgamesh_connections_accepted_total") >= 9

    # The same numbers as /stats, which was read right after the scrape.
    assert value(after, "gilgamesh_route_requests_total", **hello) == \
        find_route_entry(stats["routes"], "GET", "/hello")["count"]
    assert value(after, "gilgamesh_workers") == stats["workers"] == demo_server.workers
    assert value(after, "gilgamesh_queue_capacity") == stats["max_queue"]
    [info] = after["gilgamesh_build_info"].samples
    assert info.value == 1
    assert info.labels["strategy"] == stats["strategy"] == demo_server.strategy
    assert info.labels["python_version"] == stats["python_version"]
    assert info.labels["build"] == stats["build"]
    assert info.labels["gil_enabled"] == ("true" if stats["gil_enabled"] else "false")
    assert 5e6 < value(after, "process_resident_memory_bytes") < 64e9
    assert abs(value(after, "process_start_time_seconds") - (time.time() - stats["uptime_s"])) < 30
    assert value(after, "process_open_fds") >= 3

    # One state per worker is 1; the request counts per worker add up.
    states = [s for s in after["gilgamesh_worker_state"].samples if s.value == 1]
    assert sorted(int(s.labels["worker"]) for s in states) == list(range(demo_server.workers)), states
    per_worker = sum(s.value for s in after["gilgamesh_worker_requests_total"].samples)
    assert per_worker >= value(after, "gilgamesh_route_requests_total", **hello)
    assert value(after, "gilgamesh_worker_recycles_total") == stats["recycles_total"]
    assert value(after, "gilgamesh_ready_workers") == stats["ready_workers"] == demo_server.workers
    assert value(after, "gilgamesh_abandoned_workers_limit") == stats["max_abandoned"]
    if demo_server.strategy == "processes":
        # Each worker is its own process: its memory, with shared pages split (PSS <= RSS).
        for w in stats["worker_details"]:
            rss = value(after, "gilgamesh_worker_resident_memory_bytes", worker=str(w["worker"]))
            pss = value(after, "gilgamesh_worker_proportional_memory_bytes", worker=str(w["worker"]))
            assert 1e6 < pss <= rss < 8e9, (w, rss, pss)


def test_latency_histogram_is_cumulative_and_fits_hello_and_fib(demo_server):
    before = parse(scrape(demo_server))["gilgamesh_route_latency_seconds"]
    hello_sum_before = [s.value for s in before.samples
                        if s.name.endswith("_sum") and s.labels["route"] == "/hello"][0]
    client_s = time.monotonic()
    for _ in range(20):
        demo_server.get("/hello")
    client_s = time.monotonic() - client_s
    for _ in range(3):
        demo_server.get("/fib?n=25")
    families = parse(scrape(demo_server))
    latency = families["gilgamesh_route_latency_seconds"]
    by_route = {}
    for s in latency.samples:
        by_route.setdefault(s.labels["route"], []).append(s)
    for route, samples in by_route.items():
        buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
        count = [s.value for s in samples if s.name.endswith("_count")][0]
        total = [s.value for s in samples if s.name.endswith("_sum")][0]
        assert [b for b, _ in buckets] == sorted(b for b, _ in buckets) and buckets[-1][0] == math.inf, route
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), (route, buckets)
        assert buckets[-1][1] == count, route
        assert (count == 0) == (total == 0), route
    # The bounds sit at 25 us .. 60 s. Only lower bounds on time hold on a loaded machine:
    # fib(25) takes more than 1 ms, and what the server measured for the 20 /hello requests
    # cannot exceed what the client measured around them.
    bounds = sorted({float(s.labels["le"]) for s in latency.samples if s.name.endswith("_bucket")})
    assert bounds[0] <= 0.00005 and 60 <= bounds[-2] and len(bounds) >= 15
    hello = {float(s.labels["le"]): s.value for s in latency.samples
             if s.name.endswith("_bucket") and s.labels["route"] == "/hello"}
    fib = {float(s.labels["le"]): s.value for s in latency.samples
           if s.name.endswith("_bucket") and s.labels["route"] == "/fib"}
    hello_sum = [s.value for s in latency.samples
                 if s.name.endswith("_sum") and s.labels["route"] == "/hello"][0]
    assert 0 < hello_sum - hello_sum_before <= client_s, (hello_sum, hello_sum_before, client_s)
    assert hello[math.inf] >= 20, hello
    assert fib[0.001] < fib[math.inf], fib


def test_routes_without_traffic_have_no_quantiles(start_server):
    server = start_server(workers=1)
    stats = server.get("/stats").json()
    entry = find_route_entry(stats["routes"], "GET", "/mandelbrot")
    assert entry["count"] == 0
    assert entry["p50_ms"] is None and entry["p99_ms"] is None and entry["mean_ms"] is None, entry
    families = parse(scrape(server))
    assert value(families, "gilgamesh_route_latency_seconds", route="/mandelbrot") == 0
    assert all(s.value == 0 for s in families["gilgamesh_route_latency_seconds"].samples
               if s.labels["route"] == "/mandelbrot")
    # After traffic: quantiles in ms, rounded to the microsecond.
    assert server.get("/mandelbrot?size=16").status == 200
    entry = find_route_entry(server.get("/stats").json()["routes"], "GET", "/mandelbrot")
    for key in ("p50_ms", "p99_ms", "mean_ms"):
        assert entry[key] > 0 and round(entry[key], 3) == entry[key], entry
    assert 0 < entry["p50_ms"] <= entry["p99_ms"]


@pytest.mark.slow
def test_rejections_and_deadlines_are_counted(start_server):
    server = start_server(workers=1, args=["--max-queue", "1", "--timeout", "0.5"])
    before = parse(scrape(server))  # the harness's /readyz polls may have had 503s
    results = []

    def call(path):
        try:
            results.append(server.get(path, timeout=20).status)
        except Exception as e:  # recorded, asserted below
            results.append(repr(e))

    # One sleeps in the worker, one waits in the queue, the third finds the queue full.
    first = threading.Thread(target=call, args=("/sleep?ms=1500",))
    first.start()
    wait_for_stats(server, lambda s: s["busy_workers"] >= 1, "the first request running")
    second = threading.Thread(target=call, args=("/sleep?ms=10",))
    second.start()
    wait_for_stats(server, lambda s: s["queue_depth"] >= 1, "the second request queued")
    call("/hello")
    for t in (first, second):
        t.join(timeout=20)
    # The sleeping one gets 504 and /hello 503. The queued one usually passes its deadline
    # behind the sleeper (504), but where the stuck worker is replaced fast (processes kill
    # and fork one) it may still run within its own deadline (200): both are right, and
    # the counters below must match whichever happened.
    assert len(results) == 3 and results.count(503) == 1 and 1 <= results.count(504) <= 2 \
        and set(results) <= {200, 503, 504}, results
    families = parse(scrape(server))
    assert value(families, "gilgamesh_rejected_queue_full_total") == results.count(503) == 1
    assert value(families, "gilgamesh_deadline_exceeded_total") == results.count(504) >= 1
    stats = server.get("/stats").json()
    assert stats["rejected_queue_full"] == 1 and stats["deadline_exceeded"] == results.count(504)
    fivexx = {"class": "5xx"}
    assert value(families, "gilgamesh_responses_total", **fivexx) - value(before, "gilgamesh_responses_total", **fivexx) \
        == results.count(503) + results.count(504)
    assert value(families, "gilgamesh_route_errors_total", route="/hello") == 1
