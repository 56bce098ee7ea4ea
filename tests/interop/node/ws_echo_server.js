'use strict';
// A Node `ws` echo server on 127.0.0.1, a free port, for tether's client tests.
//
//   node ws_echo_server.js [--no-deflate]
//
// Writes JSON lines on stdout:
//   {"event": "listening", "port": N}
//   {"event": "connection", "id": N, "path": "/...", "offer": "<Sec-WebSocket-Extensions
//    of the request, or null>", "accepted": "<of the response, or null>"}
//   {"event": "close", "id": N, "code": N, "reason": "..."}
//   {"event": "error", "id": N, "message": "..."}
// Echoes every message with its type (text or binary). Text messages that start with
// "__" are commands:
//   "__extensions__"              answers {"offer": ..., "accepted": ...} as JSON text
//   "__close__ CODE REASON..."    closes the connection with that code and reason
//   "__fragmented__ JSON"         JSON is a list of messages ({"text"} or {"binary"}):
//                                 sends them as the fragments of one message
// Exits when stdin ends (the test went away) or on SIGTERM.

const { WebSocketServer } = require('ws');
const { decodeMessage, emit } = require('./common');

const deflate = !process.argv.includes('--no-deflate');

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  // ws's defaults otherwise: context takeover both ways, 15-bit windows, and
  // messages under 1024 bytes sent uncompressed.
  perMessageDeflate: deflate,
  maxPayload: 16 * 1024 * 1024,
});

let nextId = 1;
const accepted = new WeakMap(); // request -> Sec-WebSocket-Extensions of the response

wss.on('headers', (headers, request) => {
  const prefix = 'sec-websocket-extensions:';
  const line = headers.find((h) => h.toLowerCase().startsWith(prefix));
  accepted.set(request, line === undefined ? null : line.slice(prefix.length).trim());
});

wss.on('connection', (ws, request) => {
  const id = nextId++;
  const offer = request.headers['sec-websocket-extensions'] ?? null;
  const answer = accepted.get(request) ?? null;
  emit({ event: 'connection', id, path: request.url, offer, accepted: answer });

  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const text = data.toString('utf8');
      if (text === '__extensions__') {
        ws.send(JSON.stringify({ offer, accepted: answer }));
        return;
      }
      if (text.startsWith('__close__ ')) {
        const [, code, ...reason] = text.split(' ');
        ws.close(Number(code), reason.join(' '));
        return;
      }
      if (text.startsWith('__fragmented__ ')) {
        const pieces = JSON.parse(text.slice('__fragmented__ '.length)).map(decodeMessage);
        pieces.forEach((piece, i) => {
          ws.send(piece.data, { binary: piece.binary, fin: i === pieces.length - 1 });
        });
        return;
      }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => {
    emit({ event: 'close', id, code, reason: reason.toString('utf8') });
  });
  ws.on('error', (err) => {
    emit({ event: 'error', id, message: String(err && err.message) });
  });
});

wss.on('listening', () => {
  emit({ event: 'listening', port: wss.address().port });
});

function stop() {
  for (const client of wss.clients) client.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

process.stdin.on('end', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
