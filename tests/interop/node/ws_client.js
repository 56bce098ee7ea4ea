'use strict';
// A Node `ws` client for tether's server tests.
//
//   node ws_client.js ws://127.0.0.1:PORT/path < instructions.json
//
// Instructions (JSON on stdin, every field optional):
//   {"deflate": true,              offer permessage-deflate (ws's default offer)
//    "send": [message, ...],       sent in order once open: {"text": ...} or {"binary": b64}
//    "expect": N,                  messages to receive (default: as many as sent)
//    "close": [code, reason],      then close with these; null: wait for the server to close
//    "timeout": seconds}           give up after this long (default 20)
// Prints one JSON object on stdout and exits (0, or 2 on an error or timeout):
//   {"extensions": "<Sec-WebSocket-Extensions of the response, or null>",
//    "negotiated": "<ws.extensions: names of the extensions in use>",
//    "received": [message, ...], "close": {"code": N, "reason": "..."} or null,
//    "error": "..." or null}

const WebSocket = require('ws');
const { decodeMessage, emit, encodeMessage, readStdinJson } = require('./common');

async function main() {
  const url = process.argv[2];
  if (!url) throw new Error('usage: node ws_client.js URL < instructions.json');
  const spec = await readStdinJson();
  const send = spec.send ?? [];
  const expect = spec.expect ?? send.length;
  const closeWith = spec.close === undefined ? [1000, ''] : spec.close;
  const timeout = (spec.timeout ?? 20) * 1000;

  const result = { extensions: null, negotiated: null, received: [], close: null, error: null };
  const ws = new WebSocket(url, {
    perMessageDeflate: spec.deflate ?? true,
    maxPayload: 16 * 1024 * 1024,
    handshakeTimeout: timeout,
  });

  await new Promise((resolve) => {
    const timer = setTimeout(() => {
      result.error = `timed out after ${timeout} ms`;
      ws.terminate();
      resolve();
    }, timeout);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };

    ws.on('upgrade', (response) => {
      result.extensions = response.headers['sec-websocket-extensions'] ?? null;
    });
    ws.on('open', () => {
      result.negotiated = ws.extensions;
      for (const message of send) {
        const { data, binary } = decodeMessage(message);
        ws.send(data, { binary });
      }
      if (expect === 0 && closeWith !== null) ws.close(closeWith[0], closeWith[1]);
    });
    ws.on('message', (data, isBinary) => {
      result.received.push(encodeMessage(data, isBinary));
      if (result.received.length === expect && closeWith !== null) {
        ws.close(closeWith[0], closeWith[1]);
      }
    });
    ws.on('close', (code, reason) => {
      result.close = { code, reason: reason.toString('utf8') };
      done();
    });
    ws.on('error', (err) => {
      result.error = String(err && err.message);
      // 'close' follows an error once the socket is gone, unless it never opened.
      if (ws.readyState === WebSocket.CLOSED) done();
    });
  });
  await emit(result);
  process.exit(result.error === null ? 0 : 2);
}

main().catch(async (err) => {
  await emit({ error: String(err && err.stack) });
  process.exit(2);
});
