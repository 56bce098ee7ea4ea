'use strict';
// Shared by the Node peers of tether's interop tests: the JSON form of messages.
//
// A message is {"text": "..."} or {"binary": "<base64>"} (the same form the Python
// tests write and read).

function encodeMessage(data, isBinary) {
  if (isBinary) {
    return { binary: Buffer.from(data).toString('base64') };
  }
  return { text: Buffer.from(data).toString('utf8') };
}

function decodeMessage(message) {
  if (typeof message.text === 'string') {
    return { data: message.text, binary: false };
  }
  if (typeof message.binary === 'string') {
    return { data: Buffer.from(message.binary, 'base64'), binary: true };
  }
  throw new Error(`not a message: ${JSON.stringify(message).slice(0, 200)}`);
}

// Read all of stdin as JSON (the test's instructions).
function readStdinJson() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (chunk) => chunks.push(chunk));
    process.stdin.on('end', () => {
      try {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve(text.trim() ? JSON.parse(text) : {});
      } catch (err) {
        reject(err);
      }
    });
    process.stdin.on('error', reject);
  });
}

// Print one JSON line on stdout and flush it before the process may exit.
function emit(object) {
  return new Promise((resolve) => {
    process.stdout.write(JSON.stringify(object) + '\n', resolve);
  });
}

module.exports = { decodeMessage, emit, encodeMessage, readStdinJson };
