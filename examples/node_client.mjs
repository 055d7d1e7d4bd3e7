#!/usr/bin/env node
// A tour of the JavaScript client (clients/js) from Node.
//
//   python -m wsserve serve --port 8765 &          # in one terminal
//   (cd clients/js && npm ci)                        # Node 20: brings the `ws` fallback
//   node examples/node_client.mjs [ws://127.0.0.1:8765/]
//
// On Node 20 without `npm ci`, `node --experimental-websocket examples/node_client.mjs`
// uses Node's built-in WebSocket instead (Node >= 22 has it by default).
// In your own project: `npm install <path-to>/clients/js` and `import { Client } from 'wsserve-client'`.

import { Client, OverloadedError, WsserveError } from '../clients/js/src/wsserve.js';

const url = process.argv[2] ?? process.env.WSSERVE_URL ?? 'ws://127.0.0.1:8765/';
const client = new Client(url, { retry: true }); // retry 'overloaded' politely

try {
  const hello = await client.connect();
  console.log(`connected to ${hello.server} ${hello.version} at ${url}; models: ${hello.models.join(', ')}`);
  console.log(`round trip: ${(await client.ping()).toFixed(2)} ms\n`);

  for (const m of await client.models()) {
    console.log(`  ${m.name.padEnd(8)} v${m.version}  ${m.task.padEnd(14)} ${JSON.stringify(m.input_shape)} -> ${JSON.stringify(m.output_shape)}  ${m.parameters} params`);
  }

  // 1. One batched prediction: y ≈ 3x + 0.5
  const r = await client.predict('linear', [[0.0], [0.5], [1.0]]);
  console.log('\npredict linear:', r.outputs.map((row) => row[0].toFixed(4)).join(', '),
    `(queue ${r.timing.queue_ms} ms, batch of ${r.timing.batch_size})`);

  // 2. A streamed prediction: chunks arrive in order as batches finish
  const rows = Array.from({ length: 1000 }, (_, i) => [i / 1000]);
  const stream = client.predictStream('linear', rows, { chunkRows: 250 });
  for await (const chunk of stream) console.log(`  chunk ${chunk.seq}: rows ${chunk.offset}..${chunk.offset + chunk.outputs.length - 1}`);
  console.log('  done:', stream.done.reason, stream.done.rows, 'rows');

  // 3. Token streaming, printed as it arrives
  process.stdout.write('\ngenerate: The ');
  const gen = client.generate('charlm', 'The ', { maxTokens: 120, temperature: 0.8, seed: 42 });
  for await (const text of gen) process.stdout.write(text);
  const d = gen.done;
  console.log(`\n  -> ${d.reason}, ${d.tokens} tokens, first token ${d.timing.ttft_ms} ms, total ${d.timing.total_ms} ms`);

  // 4. Cancellation: an AbortSignal stops the generation on the server
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 200);
  const long = client.generate('charlm', 'Once ', { maxTokens: 100_000, signal: ac.signal });
  for await (const _ of long) { /* discard */ }
  console.log(`\ncancelled after 200 ms: reason=${long.done.reason}, ${long.done.tokens} tokens made`);

  // 5. Concurrency: many calls multiplexed on one socket, batched by the server
  const n = 2000;
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: n }, (_, i) => client.predict('linear', [[i / n]])));
  const secs = (performance.now() - t0) / 1000;
  const largest = Math.max(...results.map((x) => x.timing.batch_size));
  console.log(`\n${n} concurrent predicts in ${(secs * 1000).toFixed(0)} ms = ${(n / secs).toFixed(0)} calls/s on one socket (largest batch ${largest})`);

  // 6. Errors are classes that carry the wire code
  try {
    await client.predict('linaer', [[1]]);
  } catch (e) {
    if (e instanceof OverloadedError) console.log('overloaded, retry after', e.retryAfterMs, 'ms');
    else if (e instanceof WsserveError) console.log(`\n${e.name} (${e.code}): ${e.message}`);
    else throw e;
  }
} finally {
  await client.close();
}
