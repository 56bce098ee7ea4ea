'use strict';
// Headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, for
// tether's browser tests.
//
//   node chromium.js http://127.0.0.1:PORT/page < instructions.json
//
// Opens the page (served by the test's tether server), then runs each session in the
// page, one after the other: `new WebSocket(url)`, send the messages, wait for
// `expect` messages, then close with `close` (or wait for the server to close: null).
// Instructions (JSON on stdin):
//   {"sessions": [{"url": "ws://127.0.0.1:PORT/...", "send": [message, ...],
//                  "expect": N, "close": [code, reason] | null}],
//    "timeout": seconds}           for the whole run (default 40)
// A message is {"text": ...} or {"binary": "<base64>"}.
// Prints one JSON object on stdout and exits (0, or 2 on an error or timeout):
//   {"userAgent": "...", "sessions": [{"extensions": "<ws.extensions>",
//     "protocol": "...", "received": [message, ...],
//     "close": {"code": N, "reason": "...", "wasClean": bool} | null, "error": ...}],
//    "error": "..." or null}

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');
const { emit, readStdinJson } = require('./common');

const CHROMIUM = process.env.TETHER_CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-proxy-server',
];

// Runs inside the page: one WebSocket session, bounded by `timeoutMs`.
async function pageSession({ session, timeoutMs }) {
  const toBytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const toBase64 = (buffer) => {
    const bytes = new Uint8Array(buffer);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  };
  const result = { extensions: null, protocol: null, received: [], close: null, error: null };
  await new Promise((resolve) => {
    const timer = setTimeout(() => {
      result.error = `timed out after ${timeoutMs} ms`;
      resolve();
    }, timeoutMs);
    let ws;
    try {
      ws = new WebSocket(session.url);
    } catch (err) {
      result.error = String(err);
      clearTimeout(timer);
      resolve();
      return;
    }
    ws.binaryType = 'arraybuffer';
    const closeWith = session.close === undefined ? [1000, ''] : session.close;
    const expect = session.expect ?? (session.send ?? []).length;
    const maybeClose = () => {
      if (result.received.length === expect && closeWith !== null) {
        ws.close(closeWith[0], closeWith[1]);
      }
    };
    ws.onopen = () => {
      result.extensions = ws.extensions;
      result.protocol = ws.protocol;
      for (const message of session.send ?? []) {
        ws.send(typeof message.text === 'string' ? message.text : toBytes(message.binary));
      }
      maybeClose();
    };
    ws.onmessage = (event) => {
      result.received.push(
        typeof event.data === 'string' ? { text: event.data } : { binary: toBase64(event.data) },
      );
      maybeClose();
    };
    ws.onerror = () => {
      // The browser gives no detail; onclose follows with code 1006.
      result.error = result.error ?? 'error event';
    };
    ws.onclose = (event) => {
      result.close = { code: event.code, reason: event.reason, wasClean: event.wasClean };
      clearTimeout(timer);
      resolve();
    };
  });
  return result;
}

async function main() {
  const pageUrl = process.argv[2];
  if (!pageUrl) throw new Error('usage: node chromium.js PAGE_URL < instructions.json');
  const spec = await readStdinJson();
  const deadline = Date.now() + (spec.timeout ?? 40) * 1000;
  const output = { userAgent: null, sessions: [], error: null };

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-chromium-'));
  let context = null;
  const watchdog = setTimeout(async () => {
    output.error = 'timed out';
    await emit(output);
    process.exit(2);
  }, deadline - Date.now() + 2000);
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      timeout: 30000,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(Math.max(1000, deadline - Date.now()));
    const response = await page.goto(pageUrl);
    if (!response || response.status() !== 200) {
      throw new Error(`page ${pageUrl}: status ${response && response.status()}`);
    }
    output.userAgent = await page.evaluate(() => navigator.userAgent);
    for (const session of spec.sessions ?? []) {
      const timeoutMs = Math.max(1000, deadline - Date.now() - 1000);
      output.sessions.push(await page.evaluate(pageSession, { session, timeoutMs }));
    }
  } catch (err) {
    output.error = String(err && err.stack);
  } finally {
    if (context !== null) {
      await context.close().catch(() => {});
    }
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  clearTimeout(watchdog);
  const failed = output.error !== null || output.sessions.some((s) => s.error !== null);
  await emit(output);
  process.exit(failed ? 2 : 0);
}

main().catch(async (err) => {
  await emit({ error: String(err && err.stack) });
  process.exit(2);
});
