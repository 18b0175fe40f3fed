// Opens gilgamesh's GET /dashboard in Debian's headless Chromium (driven by
// playwright-core from web/node_modules) and prints what the page shows as
// one JSON object on stdout. The pytest suite beside it starts the server and
// the load, and asserts on that JSON.
//
//   node dashboard_driver.js --url http://127.0.0.1:PORT/dashboard [--url ...] [--screenshot FILE]
//        [--snapshots N] [--block-events] [--timeout-ms MS]
//
// Each --url is opened in its own tab of one browser, all at the same time
// (one browser start-up for several servers); the report holds one entry per URL.
// --snapshots N: after the first read, wait until the page has ingested N
//   more snapshots, then read again (two reads: the charts must have grown).
// --screenshot FILE: a full-page screenshot of the first URL after the second read.
// --block-events: GET /events fails at the network level, so the page must
//   fall back to polling /stats.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");

const REPO = path.resolve(__dirname, "..", "..");
const { chromium } = require(path.join(REPO, "web", "node_modules", "playwright-core"));

function parseArgs(argv) {
  const args = { snapshots: 3, blockEvents: false, timeoutMs: 30000, screenshot: null, urls: [],
                 width: 1400, height: 1500 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--url") args.urls.push(argv[++i]);
    else if (a === "--screenshot") args.screenshot = argv[++i];
    else if (a === "--snapshots") args.snapshots = Number(argv[++i]);
    else if (a === "--block-events") args.blockEvents = true;
    else if (a === "--timeout-ms") args.timeoutMs = Number(argv[++i]);
    else if (a === "--width") args.width = Number(argv[++i]);
    else if (a === "--height") args.height = Number(argv[++i]);
    else throw new Error("unknown argument " + a);
  }
  if (!args.urls.length) throw new Error("--url is required");
  return args;
}

// What the page holds now: its own exposed state, its charts' data, its DOM.
function readPage() {
  const d = window.gilgameshDashboard;
  const charts = {};
  for (const [name, u] of Object.entries(d.charts)) {
    charts[name] = {
      points: u.data[0].length,
      series: u.series.slice(1).map((s, i) => {
        const values = u.data[i + 1].filter((v) => v !== null && v !== undefined);
        return { label: s.label, values: values.length, max: values.length ? Math.max(...values) : null };
      }),
      canvas: (() => { const c = u.root.querySelector("canvas"); return c ? [c.width, c.height] : null; })(),
    };
  }
  const cards = [...document.querySelectorAll(".worker-card")].map((c) => {
    const fields = {};
    const dts = c.querySelectorAll("dt");
    c.querySelectorAll("dd").forEach((dd, i) => { fields[dts[i].textContent] = dd.textContent; });
    return { worker: c.dataset.worker, state: c.dataset.state, fields };
  });
  const routes = [...document.querySelectorAll("#routes tbody tr")].map((tr) =>
    [...tr.querySelectorAll("td")].map((td) => td.textContent));
  const tiles = {};
  document.querySelectorAll(".tile").forEach((t) => { tiles[t.dataset.tile] = t.querySelector(".value").textContent; });
  const identity = {};
  document.querySelectorAll("#identity span").forEach((s) => { identity[s.dataset.key] = s.querySelector("b").textContent; });
  return {
    mode: d.mode,
    snapshots: d.snapshots,
    feed: document.getElementById("feed").textContent,
    last: d.last,
    charts, cards, routes, tiles, identity,
    gilAlert: document.getElementById("gil-alert").hidden ? null : document.getElementById("gil-alert").textContent,
  };
}

// Opens one URL in a new tab of `context` and reads it twice.
async function visit(context, args, url, screenshot) {
  const page = await context.newPage();
  page.setDefaultTimeout(args.timeoutMs);
  const consoleErrors = [];
  const requests = [];
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
  page.on("pageerror", (err) => consoleErrors.push("uncaught: " + err.message));
  page.on("request", (req) => requests.push(req.url()));
  if (args.blockEvents) await page.route("**/events", (route) => route.abort("connectionrefused"));

  const response = await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.gilgameshDashboard && window.gilgameshDashboard.snapshots >= 2);
  const first = await page.evaluate(readPage);
  await page.waitForFunction((n) => window.gilgameshDashboard.snapshots >= n, first.snapshots + args.snapshots);
  const second = await page.evaluate(readPage);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await page.close();
  return { url, status: response.status(), first, second, consoleErrors, requests };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "gilgamesh-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      viewport: { width: args.width, height: args.height },
      timeout: args.timeoutMs,
    });
    const pages = await Promise.all(args.urls.map((url, i) => visit(context, args, url, i === 0 ? args.screenshot : null)));
    process.stdout.write(JSON.stringify({ pages }) + "\n");
  } finally {
    if (context) await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + "\n");
  process.exit(1);
});
