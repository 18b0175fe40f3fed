// The live dashboard of gilgamesh: reads one /stats snapshot a second from
// GET /events (server-sent events), or polls GET /stats while the stream is
// unavailable, and draws it with uPlot. Server strings reach the page only
// through textContent.
(function () {
  "use strict";

  const HISTORY_POINTS = 300;      // 5 minutes at one snapshot a second
  const LATENCY_WINDOW_S = 5;      // quantiles over the requests of the last 5 s
  const POLL_MS = 1000;
  const STREAM_RETRY_MS = 15000;   // while polling, try the stream again this often
  const COLORS = { ok: "#1a9e55", warn: "#d98a00", bad: "#d23c3c", busy: "#2f6fdf", accent: "#6b4fd8", grey: "#8a93a3" };

  const $ = (id) => document.getElementById(id);

  // What the page knows, exposed for tests and for a curious operator's console.
  const state = {
    mode: "connecting",          // connecting | live | polling | offline
    snapshots: 0,                // snapshots received
    last: null,                  // the latest snapshot
    serverShuttingDown: false,
    charts: {},                  // name -> uPlot instance
    history: [],                 // recent snapshots (for rates and latency windows)
  };
  window.gilgameshDashboard = state;

  // ---- formatting -------------------------------------------------------
  function fmtNumber(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return x.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits,
                                       minimumFractionDigits: digits === undefined ? 0 : Math.min(digits, 1) });
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1) return fmtNumber(ms * 1000, 0) + " µs";
    if (ms < 1000) return fmtNumber(ms, ms < 10 ? 2 : 1) + " ms";
    return fmtNumber(ms / 1000, 2) + " s";
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return fmtNumber(n, i === 0 ? 0 : 1) + " " + units[i];
  }
  function fmtDuration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d) return d + "d " + h + "h " + m + "m";
    if (h) return h + "h " + m + "m " + sec + "s";
    if (m) return m + "m " + sec + "s";
    return sec + "s";
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "className") e.className = v; else e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const has = (obj, key) => obj && obj[key] !== undefined && obj[key] !== null;

  // ---- figures derived from two snapshots ---------------------------------
  // A snapshot from the same server process `seconds` before `now`, or the
  // oldest one kept if none is that old; null if there is none.
  function snapshotBefore(now, seconds) {
    let found = null;
    for (let i = state.history.length - 2; i >= 0; i--) {
      const s = state.history[i];
      if (s.pid !== now.pid || s.uptime_s >= now.uptime_s) break;
      found = s;
      if (now.uptime_s - s.uptime_s >= seconds - 0.05) break;
    }
    return found;
  }

  // Quantile q of the requests between two snapshots, from the fine latency
  // buckets (interpolated inside a bucket, as the server does); null if none.
  function windowQuantiles(now, then, qs) {
    const lat = now.latency;
    if (!lat || !Array.isArray(lat.buckets)) return qs.map(() => null);
    const before = new Map(((then && then.latency && then.latency.buckets) || []).map(([i, c]) => [i, c]));
    const delta = [];
    let total = 0;
    for (const [i, c] of lat.buckets) {
      const d = c - (before.get(i) || 0);
      if (d > 0) { delta.push([i, d]); total += d; }
    }
    if (total === 0) return qs.map(() => null);
    delta.sort((a, b) => a[0] - b[0]);
    const upper = (i) => lat.first_upper_ms * Math.pow(lat.growth, i);
    return qs.map((q) => {
      const rank = q * total;
      let below = 0;
      for (const [i, d] of delta) {
        if (below + d >= rank) {
          const lo = i === 0 ? 0 : upper(i - 1);
          return lo + (upper(i) - lo) * Math.min(1, Math.max(0, (rank - below) / d));
        }
        below += d;
      }
      return upper(delta[delta.length - 1][0]);
    });
  }

  function rate(now, then, get) {
    if (!then) return null;
    const dt = now.uptime_s - then.uptime_s;
    const a = get(now), b = get(then);
    if (!(dt > 0) || a === undefined || b === undefined) return null;
    return Math.max(0, (a - b) / dt);
  }

  function workerMemory(s, key) {
    const details = s.worker_details || [];
    let sum = 0, any = false;
    for (const w of details) if (has(w, key)) { sum += w[key]; any = true; }
    return any ? sum : null;
  }

  // ---- charts ---------------------------------------------------------------
  const series = {
    throughput: [
      { label: "2xx/s", stroke: COLORS.ok, width: 2, fill: "rgba(26,158,85,0.08)" },
      { label: "4xx/s", stroke: COLORS.warn, width: 1.5 },
      { label: "5xx/s", stroke: COLORS.bad, width: 1.5 },
    ],
    latency: [
      { label: "p50 ms", stroke: COLORS.busy, width: 2 },
      { label: "p99 ms", stroke: COLORS.bad, width: 2 },
    ],
    queue: [
      { label: "queue depth", stroke: COLORS.warn, width: 2, fill: "rgba(217,138,0,0.08)" },
      { label: "busy workers", stroke: COLORS.busy, width: 2 },
      { label: "ready workers", stroke: COLORS.ok, width: 1.5 },
      { label: "workers", stroke: COLORS.grey, width: 1, dash: [4, 4] },
    ],
    memory: [
      { label: "server RSS", stroke: COLORS.accent, width: 2 },
      { label: "workers PSS", stroke: COLORS.ok, width: 2 },
    ],
  };
  const data = {};
  for (const name of Object.keys(series)) data[name] = [[], ...series[name].map(() => [])];

  // Time ticks as a 24-hour clock, one line (the charts span minutes, not days).
  function clockTicks(u, splits) {
    return splits.map((t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false }));
  }

  // Latency ticks: 50 µs, 2.5 ms, 100 ms, 1.5 s.
  function msTick(ms) {
    if (ms === null) return "";
    if (ms < 1) return +(ms * 1000).toPrecision(3) + " µs";
    if (ms < 1000) return +ms.toPrecision(3) + " ms";
    return +(ms / 1000).toPrecision(3) + " s";
  }

  function chartSize(node) {
    return { width: Math.max(300, node.clientWidth), height: 240 };
  }

  function makeChart(name, yOpts) {
    const node = $("chart-" + name);
    const opts = Object.assign(chartSize(node), {
      series: [{ value: (u, t) => (t === null ? "–" : clockTicks(u, [t])[0]) }, ...series[name].map((s) => Object.assign({ spanGaps: false, points: { show: false } }, s))],
      scales: { x: { time: true }, y: yOpts.scale || {} },
      axes: [{ stroke: "#6b7280", grid: { stroke: "#eef0f3" }, space: 70, values: clockTicks },
             { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, size: 70, values: yOpts.values }],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    });
    state.charts[name] = new uPlot(opts, data[name], node);
  }

  function setupCharts() {
    const count = (u, splits) => splits.map((v) => fmtNumber(v, v < 10 && v % 1 ? 1 : 0));
    makeChart("throughput", { scale: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] }, values: count });
    makeChart("latency", {
      scale: { distr: 3 },
      values: (u, splits) => splits.map(msTick),
    });
    makeChart("queue", { scale: { range: (u, min, max) => [0, Math.max(2, Math.ceil(max * 1.15))] }, values: count });
    makeChart("memory", { scale: { range: (u, min, max) => [0, Math.max(8, max * 1.15)] }, values: count });
    const resize = () => {
      for (const [name, u] of Object.entries(state.charts)) u.setSize(chartSize($("chart-" + name)));
    };
    if (window.ResizeObserver) new ResizeObserver(resize).observe(document.querySelector(".charts"));
    else window.addEventListener("resize", resize);
  }

  function push(name, t, values) {
    const d = data[name];
    d[0].push(t);
    values.forEach((v, i) => d[i + 1].push(v === undefined ? null : v));
    if (d[0].length > HISTORY_POINTS) for (const arr of d) arr.shift();
    const u = state.charts[name];
    u.setData(d);
    // The legend shows the newest values unless the pointer is over the chart.
    if (!(u.cursor.left >= 0)) u.setLegend({ idx: d[0].length - 1 });
  }

  // ---- panels ---------------------------------------------------------------
  function renderIdentity(s) {
    $("version").textContent = s.version ? "v" + s.version : "";
    const gilText = s.build === "free-threaded"
      ? (s.gil_enabled ? "ON (re-enabled)" : "disabled")
      : { subinterpreters: "one per interpreter", processes: "one per process", threads: "one, shared" }[s.strategy] || "enabled";
    const parts = [
      ["strategy", s.strategy_auto ? s.strategy + " (auto: " + s.strategy_auto + ")" : s.strategy],
      ["Python", s.python_version + " (" + s.build + " build)"],
      ["GIL", gilText],
      ["workers", String(s.workers)],
      ["app", s.app],
      ["pid", String(s.pid)],
      ["uptime", fmtDuration(s.uptime_s)],
    ];
    const box = $("identity");
    box.textContent = "";
    for (const [k, v] of parts) {
      const span = el("span", { "data-key": k });
      span.append(k + " ", el("b", {}, v));
      box.append(span);
    }
    const alert = $("gil-alert");
    const gilBack = s.build === "free-threaded" && s.gil_enabled;
    alert.hidden = !gilBack;
    if (gilBack) {
      alert.textContent = "The GIL is ON in this free-threaded build: an imported extension does not declare " +
        "free-threading support, so Python turned the GIL back on for the whole process and handlers run one " +
        "at a time (the server was started with --allow-gil).";
    }
  }

  function renderTiles(s, derived) {
    const tiles = [
      ["throughput", fmtNumber(derived.ok, 1) + " /s", false, "2xx responses per second"],
      ["errors", fmtNumber(derived.errors, 1) + " /s", derived.errors > 0, "4xx + 5xx responses per second"],
      ["p50 (5 s)", fmtMs(derived.p50), false, "median latency of Python routes, last 5 s"],
      ["p99 (5 s)", fmtMs(derived.p99), false, "99th percentile latency of Python routes, last 5 s"],
      ["busy workers", (has(s, "busy_workers") ? s.busy_workers : "–") + " / " + s.workers, false,
       "workers running a handler now"],
      ["ready workers", (has(s, "ready_workers") ? s.ready_workers : "–") + " / " + s.workers,
       has(s, "ready_workers") && s.ready_workers < s.workers, "workers started and able to take a job"],
      ["queue", (has(s, "queue_depth") ? s.queue_depth : "–") + (has(s, "max_queue") ? " / " + s.max_queue : ""),
       false, "requests waiting for a worker / --max-queue"],
      ["connections", fmtNumber(s.connections_open), false,
       "open client connections (event streams and WebSockets included)"],
      ["websockets", fmtNumber(s.websockets), false, "open WebSockets (ASGI apps)"],
      ["503 queue full", fmtNumber(s.rejected_queue_full), s.rejected_queue_full > 0, "requests refused: queue full"],
      ["504 timeout", fmtNumber(s.deadline_exceeded), s.deadline_exceeded > 0, "requests past --timeout"],
      ["server RSS", fmtBytes(s.rss_bytes), false, "resident memory of the server process"],
    ];
    const pool = [["recycles_total", "recycles", "workers recycled after --max-requests"],
                  ["replacements_total", "replaced", "workers replaced after they died or hung"],
                  ["interrupted_total", "interrupted", "handlers interrupted at their deadline"],
                  ["abandoned_total", "abandoned", "workers abandoned (handler blocked in C)"],
                  ["abandoned_live", "abandoned live", "abandoned threads still running"],
                  ["draining_workers", "draining", "recycled workers still finishing their requests and WebSockets"],
                  ["killed_total", "killed", "worker processes killed at their deadline"],
                  ["zygote_restarts_total", "zygote restarts", "processes: zygotes started again after one died"]];
    for (const [key, label, title] of pool) {
      const alarming = s[key] > 0 && key !== "replacements_total" && key !== "recycles_total";
      if (has(s, key)) tiles.push([label, fmtNumber(s[key]), alarming, title]);
    }
    const box = $("tiles");
    box.textContent = "";
    for (const [label, value, bad, title] of tiles) {
      const tile = el("div", { className: "tile" + (bad ? " bad" : ""), title, "data-tile": label });
      tile.append(el("div", { className: "label" }, label), el("div", { className: "value" }, value));
      box.append(tile);
    }
  }

  function renderWorkers(s) {
    const details = Array.isArray(s.worker_details) ? s.worker_details : [];
    const box = $("workers");
    box.textContent = "";
    const states = {};
    for (const w of details) {
      const st = w.state || "unknown";
      states[st] = (states[st] || 0) + 1;
      const card = el("div", { className: "worker-card", "data-worker": String(w.worker), "data-state": st });
      const title = el("h3", {}, "worker " + w.worker);
      title.append(el("span", { className: "state" }, st));
      const dl = el("dl");
      const row = (k, v) => { dl.append(el("dt", {}, k), el("dd", {}, v)); };
      row("requests", fmtNumber(w.requests));
      row("recycles", fmtNumber(w.recycles || 0));
      if (has(w, "replacements")) row("replacements", fmtNumber(w.replacements));
      if (has(w, "busy_ms") && st === "busy") row("busy for", fmtMs(w.busy_ms));
      if (has(w, "interpreter_id")) row("interpreter", "#" + w.interpreter_id + (w.interpreter_id === 0 ? " (main, shared)" : ""));
      if (has(w, "pid") && w.pid > 0 && w.pid !== s.pid) row("pid", String(w.pid));
      if (has(w, "rss_bytes")) row("RSS", fmtBytes(w.rss_bytes));
      if (has(w, "pss_bytes")) row("PSS", fmtBytes(w.pss_bytes));
      card.append(title, dl);
      box.append(card);
    }
    $("workers-summary").textContent = details.length
      ? "(" + Object.entries(states).map(([k, v]) => v + " " + k).join(", ") + ")" : "";
  }

  function renderRoutes(s, then) {
    const body = document.querySelector("#routes tbody");
    body.textContent = "";
    const routes = Object.values(s.routes || {}).sort((a, b) => a.path.localeCompare(b.path));
    const prevRoutes = (then && then.routes) || {};
    for (const r of routes) {
      const key = (r.methods || []).join(",") + " " + r.path;
      const prev = prevRoutes[key];
      const perSecond = rate(s, then, (x) => (x === s ? r.count : prev && prev.count));
      const tr = el("tr", { "data-route": key });
      tr.append(el("td", { className: "route" }, key),
                el("td", { className: "num" }, fmtNumber(perSecond, 1)),
                el("td", { className: "num" }, fmtNumber(r.count)),
                el("td", { className: "num" + (r.client_errors > 0 ? " bad" : "") }, fmtNumber(r.client_errors)),
                el("td", { className: "num" + (r.errors > 0 ? " bad" : "") }, fmtNumber(r.errors)),
                el("td", { className: "num" }, r.p50_ms === null ? "–" : fmtNumber(r.p50_ms, 3)),
                el("td", { className: "num" }, r.p99_ms === null ? "–" : fmtNumber(r.p99_ms, 3)),
                el("td", { className: "num" }, r.mean_ms === null ? "–" : fmtNumber(r.mean_ms, 3)),
                el("td", { className: "doc" }, r.doc || ""));
      body.append(tr);
    }
  }

  // ---- one snapshot in --------------------------------------------------------
  function ingest(s) {
    const prev = state.history.length ? state.history[state.history.length - 1] : null;
    if (prev && (prev.pid !== s.pid || s.uptime_s < prev.uptime_s - 5)) {
      state.history = [];  // a new server (a container's server may have the same pid)
    } else if (prev && s.uptime_s <= prev.uptime_s) {
      return;  // a snapshot seen already, or an older one (a poll answered after the stream's)
    }
    state.history.push(s);
    if (state.history.length > LATENCY_WINDOW_S + 5) state.history.shift();
    state.snapshots++;
    state.last = s;

    const oneSecond = snapshotBefore(s, 1);
    const windowStart = snapshotBefore(s, LATENCY_WINDOW_S);
    const responses = (x) => x.responses || {};
    const ok = rate(s, oneSecond, (x) => responses(x)["2xx"]);
    const c4 = rate(s, oneSecond, (x) => responses(x)["4xx"]);
    const c5 = rate(s, oneSecond, (x) => responses(x)["5xx"]);
    const [p50, p99] = windowStart ? windowQuantiles(s, windowStart, [0.5, 0.99]) : [null, null];
    const derived = { ok, errors: c4 === null || c5 === null ? null : c4 + c5, p50, p99 };

    const t = Date.now() / 1000;
    push("throughput", t, [ok, c4, c5]);
    push("latency", t, [p50, p99]);
    push("queue", t, [s.queue_depth, s.busy_workers, s.ready_workers, s.workers]);
    const mib = (b) => (b === null || b === undefined ? null : b / 1048576);
    push("memory", t, [mib(s.rss_bytes), mib(workerMemory(s, "pss_bytes"))]);

    renderIdentity(s);
    renderTiles(s, derived);
    renderWorkers(s);
    renderRoutes(s, oneSecond);
    $("shutdown-alert").hidden = !(state.serverShuttingDown || s.shutting_down);
  }

  // ---- feed: the event stream, else polling /stats ------------------------------
  let stream = null, pollTimer = null, retryTimer = null;

  function setMode(mode) {
    state.mode = mode;
    const feed = $("feed");
    feed.dataset.mode = mode;
    feed.textContent = { connecting: "connecting…", live: "live (event stream)", polling: "polling /stats",
                         offline: "server unreachable" }[mode];
  }

  function openStream() {
    if (!window.EventSource) return startPolling();
    stream = new EventSource("events");
    stream.onmessage = (e) => {
      stopPolling();
      setMode("live");
      ingest(JSON.parse(e.data));
    };
    stream.addEventListener("shutdown", () => {
      state.serverShuttingDown = true;
      $("shutdown-alert").hidden = false;
    });
    stream.onerror = () => {
      // EventSource would retry on its own; poll /stats meanwhile instead, and
      // try the stream again later.
      stream.close();
      stream = null;
      startPolling();
    };
  }

  async function poll() {
    try {
      const r = await fetch("stats", { cache: "no-store" });
      if (!r.ok) throw new Error("GET /stats answered " + r.status);
      ingest(await r.json());
      setMode("polling");
    } catch (e) {
      setMode("offline");
    }
  }

  function startPolling() {
    if (pollTimer === null) {
      setMode("polling");
      poll();
      pollTimer = setInterval(poll, POLL_MS);
    }
    if (retryTimer === null) {
      retryTimer = setTimeout(() => { retryTimer = null; if (!stream) openStream(); }, STREAM_RETRY_MS);
    }
  }

  function stopPolling() {
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
    if (retryTimer !== null) { clearTimeout(retryTimer); retryTimer = null; }
  }

  setupCharts();
  openStream();
})();
