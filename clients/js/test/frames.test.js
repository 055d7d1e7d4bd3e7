// The client against peers that do more than today's server: frames for a call's id of a type that
// does not answer it, a binary frame that does not decode, and the events a Client dispatches
// while connection attempts fail.
// Run: `node --test test/frames.test.js` in clients/js.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';

import {
  Client, Unauthorized, ConnectionLost, ClientClosed, OverloadedError, RequestCancelled, WsserveError, MalformedFrame,
} from 'wsserve-client';
import { startServer, eventually } from './helpers/server.js';

/**
 * A WebSocket relay on loopback in front of the real server `target`: every frame passes
 * through unchanged, and before the server's answer to a request it also sends the client
 * `inject(request)` (frames of a type protocol version 1 does not have, for the request's id);
 * binary frames from the server pass through `mangleBinary`.
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
async function relay(target, inject, mangleBinary = (data) => data) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => [...p][0] ?? false });
  await new Promise((resolve) => wss.once('listening', resolve));
  wss.on('connection', (down, req) => {
    const up = new WebSocket(target, req.headers['sec-websocket-protocol']?.split(/\s*,\s*/) ?? []);
    const early = [];
    up.on('open', () => { for (const m of early.splice(0)) up.send(m); });
    up.on('message', (data, binary) => down.send(binary ? mangleBinary(data) : String(data)));
    down.on('message', (data, binary) => {
      const text = binary ? null : String(data);
      if (text !== null) {
        const msg = JSON.parse(text);
        for (const extra of inject(msg)) down.send(JSON.stringify(extra));
      }
      if (up.readyState === WebSocket.OPEN) up.send(binary ? data : text); else early.push(binary ? data : text);
    });
    down.on('close', () => up.close());
    up.on('close', () => down.close());
    up.on('error', () => down.terminate());
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/`,
    close: () => new Promise((resolve) => { for (const c of wss.clients) c.terminate(); wss.close(() => resolve()); }),
  };
}

describe('a frame of a type that does not answer the call', { timeout: 120_000 }, () => {
  let srv;
  let peer;

  before(async () => {
    srv = await startServer();
    // Before the answer to the requests marked below, a frame with the request's id that does not
    // answer it: a type a later protocol might add ("progress", to be ignored), another request
    // type's answer ("pong", "models") or the other streaming request type's items. The rest pass
    // untouched.
    peer = await relay(srv.url, (msg) => {
      const marked = msg.inputs?.[0]?.[0] === 0.25 || msg.prompt === 'X' || msg.type === 'models';
      if (msg.id === undefined || msg.type === 'auth' || !marked) return [];
      if (msg.type === 'models') return [{ type: 'pong', id: msg.id }];
      if (msg.type === 'generate') return [{ type: 'chunk', id: msg.id, seq: 0, offset: 0, outputs: [[9]] }];
      if (msg.stream) return [{ type: 'token', id: msg.id, seq: 0, text: 'X' }];
      return [{ type: 'progress', id: msg.id, fraction: 0.5 }];
    });
  });

  after(async () => {
    await peer?.close();
    await srv?.stop();
  });

  // It used to be ignored (the call then waited for its own answer); the Python client fails the
  // call with a ProtocolError, and so does this one now: MalformedFrame, that call only.
  it('fails that call only (MalformedFrame); the socket and the other calls carry on', async () => {
    const direct = new Client(srv.url);
    const c = new Client(peer.url);
    const malformed = (type) => (e) => {
      assert.ok(e instanceof MalformedFrame, `${e?.name}: ${e?.message}`);
      assert.ok(e.message.includes(`a "${type}" frame does not answer it`), e.message);
      return true;
    };
    try {
      // a type protocol version 1 does not have is ignored: the call gets its own answer
      assert.deepEqual((await c.predict('linear', [[0.25]])).outputs, (await direct.predict('linear', [[0.25]])).outputs);
      await assert.rejects(c.models(), malformed('pong'));
      await assert.rejects(c.generate('charlm', 'X', { maxTokens: 12 }).wait(), malformed('chunk'));
      await assert.rejects(c.predictStream('linear', [[0.25], [1.0]], { chunkRows: 1 }).wait(), malformed('token'));
      const r = await c.predict('linear', [[0.5], [1.0]]);
      assert.deepEqual(r.outputs, (await direct.predict('linear', [[0.5], [1.0]])).outputs);
      assert.equal(typeof await c.ping(), 'number');
      const g = c.generate('charlm', 'The ', { maxTokens: 12 });
      const tokens = [];
      for await (const t of g) tokens.push(t);
      assert.equal(g.done.reason, 'length');
      assert.equal(tokens.length, 12);
      const chunks = [];
      for await (const ch of c.predictStream('linear', [[0.5], [1.0], [2.0]], { chunkRows: 1 })) chunks.push(ch.outputs);
      assert.deepEqual(chunks.flat(), (await direct.predict('linear', [[0.5], [1.0], [2.0]])).outputs);
      assert.ok(await eventually(() => c.stats().inflight === 0), 'every slot came back with its terminal frame');
      assert.equal(c.stats().connects, 1, 'one socket throughout');
    } finally {
      await c.close();
      await direct.close();
    }
  });
});

describe('events while connection attempts fail', { timeout: 120_000 }, () => {
  const KEY = 'sk-frames-' + 'k'.repeat(24);
  let srv;

  before(async () => { srv = await startServer(['--api-key', KEY, '--models', 'linear']); });
  after(async () => { await srv?.stop(); });

  /** `{open, close, reconnecting}`: how many of each event `c` dispatched. */
  function countEvents(c) {
    const n = { open: 0, close: 0, reconnecting: 0 };
    for (const type of Object.keys(n)) c.addEventListener(type, () => { n[type]++; });
    return n;
  }

  // `close` ends a connection that opened (PROTOCOL: its detail carries the close code). A
  // failed attempt dispatched one too, after its `reconnecting`: the demo page then showed
  // "disconnected" while the client was still trying.
  it('a refused token: the connect rejects, and no close event for a connection that never opened', async () => {
    const c = new Client(srv.url, { token: 'wrong', reconnect: false });
    const n = countEvents(c);
    await assert.rejects(c.connect(), Unauthorized);
    const ok = new Client(srv.url, { token: KEY });
    await ok.ping(); // the server has seen the refused socket's close by the time it answers another
    await ok.close();
    await c.close();
    assert.deepEqual(n, { open: 0, close: 0, reconnecting: 0 });
  });

  it('nothing listening: one reconnecting per retry, no close events', async () => {
    const down = await startServer(['--models', 'linear']);
    const url = down.url;
    await down.stop();
    const c = new Client(url, { reconnect: { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 20 } });
    const n = countEvents(c);
    await assert.rejects(c.connect(), ConnectionLost);
    await c.close();
    assert.deepEqual(n, { open: 0, close: 0, reconnecting: 2 });
  });

  it('a connection that opened dispatches exactly one close when it ends', async () => {
    const c = new Client(srv.url, { token: KEY, reconnect: false });
    const n = countEvents(c);
    await c.ping();
    await c.close();
    assert.deepEqual(n, { open: 1, close: 1, reconnecting: 0 });
  });

  // close() during the backoff between two attempts left every waiting call pending until the
  // wait ended (maxDelayMs: here ten minutes) and kept a Node process alive that long.
  it('close() during the reconnect backoff settles the waiting calls at once', { timeout: 60_000 }, async () => {
    const down = await startServer(['--models', 'linear']);
    const url = down.url;
    await down.stop();
    const c = new Client(url, { reconnect: { maxAttempts: 2, baseDelayMs: 600_000, maxDelayMs: 600_000 } });
    const backingOff = new Promise((resolve) => c.addEventListener('reconnecting', resolve, { once: true }));
    const calls = [c.predict('linear', [[0.5]]), c.models(), c.connect(), c.ping()];
    const settled = Promise.allSettled(calls);
    await backingOff;
    await c.close();
    for (const r of await settled) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof ClientClosed, String(r.reason));
    }
  });
});

describe('an abort while waiting to retry an overloaded refusal', { timeout: 120_000 }, () => {
  // A 300 ms batching window and 16 queued rows: of two 12-row predicts sent together, the
  // second is refused `overloaded` (as in client.test.js).
  let srv;
  const rows = Array.from({ length: 12 }, (_, i) => [i / 12]);
  before(async () => { srv = await startServer(['--max-delay-ms', '300', '--max-queue-rows', '16']); });
  after(async () => { await srv?.stop(); });

  /** A client that retries `overloaded` after ten minutes, and a promise of its first refusal. */
  function retryingClient() {
    const c = new Client(srv.url, { retry: { maxAttempts: 2, baseDelayMs: 600_000, maxDelayMs: 600_000 } });
    const refused = new Promise((resolve) => {
      c.addEventListener('request', (ev) => { if (ev.detail.code === 'overloaded') resolve(); });
    });
    return { c, refused };
  }

  // PROTOCOL/README: an aborted predict rejects with RequestCancelled (a local one if it was
  // never sent), an aborted predictStream throws it too. Aborted in the wait before a retry
  // (nothing on the wire), they rejected with the OverloadedError of the try before.
  it('predict rejects with a local RequestCancelled', async () => {
    const { c, refused } = retryingClient();
    try {
      const ac = new AbortController();
      const first = c.predict('linear', rows).then((r) => r.outputs.length, (e) => e); // settled, whatever happens
      const second = c.predict('linear', rows, { signal: ac.signal });
      await refused;
      ac.abort();
      await assert.rejects(second, (e) => {
        assert.ok(e instanceof RequestCancelled, `${e?.name}: ${e?.message}`);
        assert.equal(e.frame, null, 'local: nothing was on the wire to cancel');
        return true;
      });
      assert.equal(await first, 12);
    } finally {
      await c.close();
    }
  });

  it('predictStream ends with a local RequestCancelled', async () => {
    const { c, refused } = retryingClient();
    try {
      const ac = new AbortController();
      const first = c.predict('linear', rows).then((r) => r.outputs.length, (e) => e); // settled, whatever happens
      const stream = c.predictStream('linear', rows, { signal: ac.signal, chunkRows: 4 });
      await refused;
      ac.abort();
      await assert.rejects(stream.wait(), (e) => {
        assert.ok(e instanceof RequestCancelled, `${e?.name}: ${e?.message}`);
        return true;
      });
      assert.ok(!(stream.error instanceof OverloadedError));
      assert.equal(await first, 12);
    } finally {
      await c.close();
    }
  });

  // Neither stream.cancel() (no signal) nor close() ended the ten-minute wait: the stream, or
  // the predict, stayed pending until it was over.
  it('stream.cancel() ends the wait at once, as a local cancel', { timeout: 60_000 }, async () => {
    const { c, refused } = retryingClient();
    try {
      const first = c.predict('linear', rows).then((r) => r.outputs.length, (e) => e);
      const stream = c.predictStream('linear', rows, { chunkRows: 4 });
      await refused;
      stream.cancel();
      await assert.rejects(stream.wait(), RequestCancelled);
      assert.equal(await first, 12);
    } finally {
      await c.close();
    }
  });

  it('close() ends the wait at once: the predict and the stream reject with ClientClosed', { timeout: 60_000 }, async () => {
    const { c, refused } = retryingClient();
    const first = c.predict('linear', rows).then((r) => r.outputs.length, (e) => e);
    const waiting = [c.predict('linear', rows), c.predictStream('linear', rows, { chunkRows: 4 }).wait()];
    const settled = Promise.allSettled(waiting);
    await refused;
    assert.ok(await eventually(() => c.stats().inflight === 1), 'only the first one is on the wire');
    await c.close();
    for (const r of await settled) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof ClientClosed, `${r.reason?.name}: ${r.reason?.message}`);
    }
    const one = await first; // answered, or cancelled by close() if still in the batching window
    assert.ok(one === 12 || one instanceof ClientClosed, String(one));
  });
});

describe('a binary frame from the server that does not decode', { timeout: 120_000 }, () => {
  let srv;
  let peer;
  before(async () => {
    srv = await startServer();
    // the tensor payload loses its last 4 bytes: the header (and its id) still reads
    peer = await relay(srv.url, () => [], (data) => data.subarray(0, data.length - 4));
  });
  after(async () => {
    await peer?.close();
    await srv?.stop();
  });

  // It was dropped without a word, so the call it answered never settled (no timeoutMs: forever).
  it('fails the call it answers, naming the problem', { timeout: 60_000 }, async () => {
    const c = new Client(peer.url);
    try {
      await assert.rejects(c.predict('linear', { data: new Float32Array([0.5, 1.0]), shape: [2, 1] }, { binary: true }), (e) => {
        assert.ok(e instanceof WsserveError, String(e));
        assert.match(e.message, /malformed binary frame/);
        assert.equal(typeof e.requestId, 'number');
        return true;
      });
      const ok = await c.predict('linear', [[0.5]]); // JSON still flows on the same connection
      assert.equal(ok.outputs.length, 1);
      assert.equal(c.stats().inflight, 0);
    } finally {
      await c.close();
    }
  });
});

describe('stream.cancel() while the stream waits for a free request slot', { timeout: 120_000 }, () => {
  // --max-inflight 1: a long generation holds the connection's one slot, so a second stream waits
  // in the client. Cancelled there, it used to be sent once the slot came free, then cancelled.
  let srv;
  before(async () => { srv = await startServer(['--max-inflight', '1', '--models', 'charlm']); });
  after(async () => { await srv?.stop(); });

  it('ends it locally: nothing is sent', async () => {
    const c = new Client(srv.url);
    try {
      const holder = c.generate('charlm', 'The ', { maxTokens: 100_000 });
      assert.ok(await eventually(() => c.stats().inflight === 1, { timeoutMs: 30_000 }), 'the long generation holds the slot');
      const sentBefore = c.stats().requestsSent;
      const queued = c.generate('charlm', 'a', { maxTokens: 5 });
      assert.ok(await eventually(() => c.stats().waiting === 1, { timeoutMs: 30_000 }), 'the second stream waits for the slot');
      queued.cancel();
      const done = await queued.wait();
      assert.equal(done.reason, 'cancelled');
      assert.equal(done.tokens, 0);
      assert.equal(c.stats().requestsSent, sentBefore, 'the cancelled stream was never sent');
      assert.equal(c.stats().waiting, 0);
      holder.cancel();
      assert.equal((await holder.wait()).reason, 'cancelled');
    } finally {
      await c.close();
    }
  });
});
