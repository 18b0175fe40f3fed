// Opens a page of gilgamesh serving tests/apps/asgi_ws_starlette.py in Debian's
// headless Chromium (playwright-core from web/node_modules), and from that page
// talks to the Starlette chat echo over the browser's own WebSocket: the
// subprotocol, a few JSON round trips, binary, a refused handshake, and the
// app's close with its code and reason. Prints one JSON object on stdout; the
// pytest suite beside it asserts on it.
//
//   node websocket_driver.js --url http://127.0.0.1:PORT/ [--timeout-ms MS]
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");

const REPO = path.resolve(__dirname, "..", "..");
const { chromium } = require(path.join(REPO, "web", "node_modules", "playwright-core"));

function parseArgs(argv) {
  const args = { url: null, timeoutMs: 30000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--url") args.url = argv[++i];
    else if (a === "--timeout-ms") args.timeoutMs = Number(argv[++i]);
    else throw new Error("unknown argument " + a);
  }
  if (!args.url) throw new Error("--url is required");
  return args;
}

// Runs in the page: the browser's WebSocket against the page's own server.
async function talk() {
  const base = location.origin.replace(/^http/, "ws");
  const report = {};
  function open(pathAndQuery, protocols) {
    return new Promise((resolve) => {
      const ws = new WebSocket(base + pathAndQuery, protocols);
      ws.binaryType = "arraybuffer";
      const inbox = [];
      let waiting = null;
      ws.onmessage = (e) => {
        if (waiting) { const w = waiting; waiting = null; w(e.data); } else inbox.push(e.data);
      };
      ws.next = () => new Promise((r) => { if (inbox.length) r(inbox.shift()); else waiting = r; });
      ws.closed = new Promise((r) => { ws.onclose = (e) => r({ code: e.code, reason: e.reason }); });
      ws.onopen = () => resolve({ ws, opened: true });
      ws.onerror = () => resolve({ ws, opened: false });
    });
  }
  // The chat: subprotocol, joined, echoes, then the app's close.
  const chat = await open("/chat?name=chromium", ["chat.v1"]);
  report.chat_opened = chat.opened;
  report.protocol = chat.ws.protocol;
  report.joined = JSON.parse(await chat.ws.next()).joined;
  report.echoes = [];
  for (let i = 0; i < 5; i++) {
    chat.ws.send(JSON.stringify({ text: "chromium says " + i }));
    report.echoes.push(JSON.parse(await chat.ws.next()));
  }
  chat.ws.send(JSON.stringify({ bye: 4001 }));
  report.chat_close = await chat.ws.closed;
  // Binary: the /bytes route sends each message back reversed.
  const bytes = await open("/bytes");
  bytes.ws.send(new Uint8Array([1, 2, 3, 250]));
  report.reversed = Array.from(new Uint8Array(await bytes.ws.next()));
  bytes.ws.close(1000);
  report.bytes_close = await bytes.ws.closed;
  // A handshake the app refuses (403): the browser sees it fail, code 1006.
  const refused = await open("/members-only");
  report.refused_opened = refused.opened;
  report.refused_close = await refused.ws.closed;
  return report;
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
      timeout: args.timeoutMs,
    });
    const page = await context.newPage();
    page.setDefaultTimeout(args.timeoutMs);
    await page.goto(args.url);
    const report = await page.evaluate(talk);
    report.page = await page.evaluate(() => document.body.innerText);
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    if (context) await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + "\n");
  process.exit(1);
});
