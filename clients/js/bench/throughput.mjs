#!/usr/bin/env node
// Calls/s through wsserve-client on one socket vs a raw `ws` socket sending the same frames,
// so the client's own overhead is known. Bounded: a few thousand requests to 127.0.0.1.
//
//   node bench/throughput.mjs ws://127.0.0.1:8765/ [total=5000] [window=256] [rounds=3]
//
// Both sides keep `window` predicts (1 row on `linear`) outstanding until `total` are done.

import WebSocket from 'ws';
import { Client } from '../src/wsserve.js';

const url = process.argv[2] ?? 'ws://127.0.0.1:8765/';
const total = Number(process.argv[3] ?? 5000);
const window = Number(process.argv[4] ?? 256);
const rounds = Number(process.argv[5] ?? 3);

async function viaClient() {
  const c = new Client(url, { heartbeatMs: null });
  await c.connect();
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < total) {
      const i = next++;
      await c.predict('linear', [[i / total]]);
    }
  };
  await Promise.all(Array.from({ length: window }, worker));
  const secs = (performance.now() - t0) / 1000;
  await c.close();
  return total / secs;
}

function viaRaw() {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(url, ['wsserve.v1']);
    let sent = 0;
    let done = 0;
    let t0 = 0;
    const send = () => {
      const i = sent++;
      sock.send(`{"type":"predict","id":${i},"model":"linear","inputs":[[${i / total}]]}`);
    };
    sock.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === 'hello') {
        t0 = performance.now();
        for (let k = 0; k < window && sent < total; k++) send();
        return;
      }
      if (frame.type !== 'result') { reject(new Error(JSON.stringify(frame))); return; }
      done++;
      if (sent < total) send();
      if (done === total) {
        const secs = (performance.now() - t0) / 1000;
        sock.close();
        resolve(total / secs);
      }
    });
    sock.on('error', reject);
  });
}

const fmt = (xs) => `${Math.round(Math.max(...xs))} calls/s (best of ${xs.length}; all: ${xs.map(Math.round).join(', ')})`;
const raw = [];
const client = [];
for (let r = 0; r < rounds; r++) {
  raw.push(await viaRaw());
  client.push(await viaClient());
}
console.log(`predict linear 1 row, ${total} calls, window ${window}, one socket`);
console.log(`  raw ws:         ${fmt(raw)}`);
console.log(`  wsserve-client: ${fmt(client)}`);
console.log(`  client/raw:     ${(Math.max(...client) / Math.max(...raw)).toFixed(2)}`);
