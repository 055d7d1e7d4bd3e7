// The client against a hostile or buggy server: scripted fake peers on loopback (real sockets, the
// `ws` package's server, or raw TCP for a peer that never finishes the close handshake) that flood
// a stream nobody reads, ask for absurd retry waits, send garbage in `hello`, speak another protocol
// version, ignore the close handshake, stall a stream, or send malformed frames. Each must stay in
// the call it concerns: the socket and the other calls carry on.
// Run: `node --test test/hostile.test.js` in clients/js.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';

import {
  Client, WsserveError, ClientClosed, DeadlineExceeded, StreamOverflow, ProtocolError, MalformedFrame, UnsupportedProtocol,
  LIMIT_NAMES, DEFAULT_RETRY, DEFAULT_STREAM_BUFFER_BYTES, DEFAULT_CLOSE_TIMEOUT_MS, DEFAULT_CANCEL_TIMEOUT_MS, PROTOCOL_VERSION,
  errorFromFrame, retryDelayMs, logprobsProblem,
} from 'wsserve-client';
import { eventually } from './helpers/server.js';

const HELLO = Object.freeze({
  type: 'hello', server: 'wsserve', version: '0.1.0', protocol: 1,
  limits: { max_message_bytes: 1048576, max_inflight: 256, max_rows: 65536, max_tokens: 100000 },
  models: ['m'],
});

// The frames that end a predict or generate on the server (the only requests a cancel concerns).
const TERMINAL = new Set(['result', 'done', 'error']);

/**
 * A scripted wsserve peer on loopback. It sends `hello`, then answers each request: with
 * `scripts[model or type](msg, send)` when there is one, else like a tiny server (`pong`,
 * an empty `models`, a `result` of ones, three tokens then `done`). A `cancel` for a request
 * it has not ended yet is answered as the real server does (`done` reason `cancelled` for a
 * generate, an `error` `cancelled` otherwise), unless `answerCancels` is false. `received` holds
 * every request it got.
 */
async function fakeServer({ hello = HELLO, scripts = {}, answerCancels = true } = {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => [...p][0] ?? false });
  await once(wss, 'listening');
  const received = [];
  let connections = 0;
  wss.on('connection', (sock) => {
    connections++;
    const open = new Map(); // id → request type, until its terminal frame is sent
    const send = (f) => {
      if (typeof f !== 'string' && TERMINAL.has(f.type)) open.delete(f.id);
      sock.send(typeof f === 'string' ? f : JSON.stringify(f));
    };
    send(hello);
    sock.on('message', (data) => {
      const msg = JSON.parse(String(data));
      received.push(msg);
      if (msg.type === 'cancel') {
        if (!answerCancels) return; // a server that ignores cancels
        const type = open.get(msg.id);
        if (type === 'generate') send({ type: 'done', id: msg.id, reason: 'cancelled', tokens: 0 });
        else if (type) send({ type: 'error', id: msg.id, code: 'cancelled', message: 'cancelled' });
        return;
      }
      if (msg.id !== undefined) open.set(msg.id, msg.type);
      const script = scripts[msg.model ?? msg.type];
      if (script) { script(msg, send); return; }
      if (msg.type === 'ping') send({ type: 'pong', id: msg.id });
      else if (msg.type === 'models') send({ type: 'models', id: msg.id, models: [] });
      else if (msg.type === 'predict') send({ type: 'result', id: msg.id, model: msg.model, version: '1', outputs: msg.inputs.map(() => [1]) });
      else if (msg.type === 'generate') {
        for (const [seq, text] of ['a', 'b', 'c'].entries()) send({ type: 'token', id: msg.id, seq, text });
        send({ type: 'done', id: msg.id, reason: 'length', tokens: 3 });
      }
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/`,
    received,
    connections: () => connections,
    cancelled: (id) => received.some((m) => m.type === 'cancel' && m.id === id),
    close: () => new Promise((resolve) => { for (const c of wss.clients) c.terminate(); wss.close(() => resolve()); }),
  };
}

/** A server text frame (unmasked, FIN) holding `text`. */
function textFrame(text) {
  const payload = Buffer.from(text);
  const head = payload.length < 126
    ? Buffer.from([0x81, payload.length])
    : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([head, payload]);
}

/**
 * A raw TCP peer that completes the WebSocket handshake, sends `hello`, then reads and ignores
 * everything — the client's close frame included: it never answers it and never closes the
 * TCP connection. `ended` resolves when a connection's TCP socket closes.
 */
async function deafServer() {
  let resolveEnded;
  const ended = new Promise((resolve) => { resolveEnded = resolve; });
  const server = net.createServer((sock) => {
    let head = '';
    const onData = (d) => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      sock.off('data', onData);
      sock.on('data', () => {}); // deaf from here on
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)[1];
      const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
      sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
        + `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: wsserve.v1\r\n\r\n`);
      sock.write(textFrame(JSON.stringify(HELLO)));
    };
    sock.on('data', onData);
    sock.on('close', () => resolveEnded());
    sock.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `ws://127.0.0.1:${server.address().port}/`,
    ended,
    close: () => new Promise((resolve) => { server.close(() => resolve()); }),
  };
}

/** Everything a stream yields until it ends or throws: `{items, error}`. */
async function drain(stream) {
  const items = [];
  try {
    for await (const x of stream) items.push(x);
    return { items, error: null };
  } catch (e) {
    return { items, error: e };
  }
}

describe('a stream whose consumer does not read (maxStreamBufferBytes)', { timeout: 60_000 }, () => {
  // A server that keeps sending to a consumer that never reads grew the stream's buffer without
  // bound (until the process ran out of memory).
  it('fails with StreamOverflow past the bound, is cancelled, and leaves the other calls alone', async () => {
    const big = 'x'.repeat(1000);
    const peer = await fakeServer({
      scripts: { flood: (msg, send) => { for (let seq = 0; seq < 50; seq++) send({ type: 'token', id: msg.id, seq, text: big }); } },
    });
    const c = new Client(peer.url, { maxStreamBufferBytes: 10_000 });
    try {
      const flood = c.generate('flood', 'x');
      const other = c.generate('m', 'x'); // read as it comes
      const reading = drain(other);
      await assert.rejects(flood.wait(), (e) => {
        assert.ok(e instanceof StreamOverflow && e instanceof WsserveError, `${e?.name}: ${e?.message}`);
        assert.equal(e.code, null);
        assert.equal(e.requestId, flood.id);
        assert.match(e.message, /maxStreamBufferBytes \(10000\)/);
        return true;
      });
      assert.equal(flood.bufferedBytes, 0, 'the buffered items were let go');
      await assert.rejects(flood.next(), StreamOverflow);
      assert.ok(await eventually(() => peer.cancelled(flood.id)), 'cancel sent for the flooding request');
      assert.deepEqual(await reading, { items: ['a', 'b', 'c'], error: null });
      assert.equal((await c.predict('m', [[1], [2]])).outputs.length, 2);
      assert.ok(await eventually(() => c.stats().inflight === 0), 'the slot came back with the server\'s terminal frame');
      assert.equal(c.stats().connects, 1, 'the socket was never replaced');
    } finally {
      await c.close();
      await peer.close();
    }
  });

  it('has a 64 MiB default and refuses a bound that is not a positive integer', async () => {
    assert.equal(DEFAULT_STREAM_BUFFER_BYTES, 64 * 1024 * 1024);
    for (const bad of [0, -1, 1.5, '10', Number.NaN]) {
      assert.throws(() => new Client('ws://127.0.0.1:1/', { maxStreamBufferBytes: bad }),
        { name: bad === '10' ? 'TypeError' : 'RangeError', message: /^maxStreamBufferBytes must be an integer >= 1 or null/ });
    }
    await new Client('ws://127.0.0.1:1/', { maxStreamBufferBytes: null }).close(); // null: no bound
  });
});

describe("the server's retry_after_ms is honoured only up to maxRetryAfterMs", { timeout: 60_000 }, () => {
  it('caps the wait in the delay arithmetic (default 60 s; null: no cap)', () => {
    assert.equal(DEFAULT_RETRY.maxRetryAfterMs, 60_000);
    assert.equal(retryDelayMs(DEFAULT_RETRY, 0, 3_600_000, 0), 60_000);
    assert.equal(retryDelayMs(DEFAULT_RETRY, 0, 3_600_000, 1), 60_000, 'the jitter does not stretch it past the bound');
    assert.equal(retryDelayMs(DEFAULT_RETRY, 0, 50_000, 1), 60_000);
    assert.equal(retryDelayMs(DEFAULT_RETRY, 0, 5000, 1), 5000 * (1 + DEFAULT_RETRY.jitter), 'under the bound: jittered as before');
    assert.equal(retryDelayMs({ ...DEFAULT_RETRY, maxRetryAfterMs: 500 }, 0, 5000, 0), 500);
    assert.equal(retryDelayMs({ ...DEFAULT_RETRY, maxRetryAfterMs: 500 }, 0, 100, 0), 100, 'under the bound: as asked');
    assert.equal(retryDelayMs({ ...DEFAULT_RETRY, maxRetryAfterMs: null }, 0, 3_600_000, 0), 3_600_000);
    assert.throws(() => new Client('ws://127.0.0.1:1/', { retry: { maxRetryAfterMs: -1 } }), RangeError);
  });

  it('a retry_after_ms that is not a finite number >= 0 is not trusted at all', () => {
    for (const bad of [-5, '100', null, 1e400, [1]]) {
      assert.equal(errorFromFrame({ type: 'error', id: 1, code: 'overloaded', message: 'm', retry_after_ms: bad }).retryAfterMs, null, String(bad));
    }
  });

  // A server asking for an hour made the retrying call wait an hour.
  it('a refusal asking for an hour is retried after the bound', async () => {
    let refused = 0;
    const peer = await fakeServer({
      scripts: {
        busy: (msg, send) => {
          if (refused++ === 0) send({ type: 'error', id: msg.id, code: 'overloaded', message: 'busy', retry_after_ms: 3_600_000 });
          else send({ type: 'result', id: msg.id, model: 'busy', version: '1', outputs: [[7]] });
        },
      },
    });
    const c = new Client(peer.url, { retry: { maxRetryAfterMs: 1, baseDelayMs: 1, maxDelayMs: 1, jitter: 0 } });
    try {
      assert.deepEqual((await c.predict('busy', [[1]])).outputs, [[7]]);
      assert.equal(peer.received.filter((m) => m.type === 'predict').length, 2);
    } finally {
      await c.close();
      await peer.close();
    }
  });
});

describe('hello is checked', { timeout: 60_000 }, () => {
  // Garbage limits were trusted: max_message_bytes -5 refused every request as too large,
  // max_inflight "lots" (or 0) made every call wait for a slot forever.
  it('limits that are not integers in [1, 2**53] are taken as not announced (null); the calls work', async () => {
    for (const limits of [
      { max_inflight: 'lots', max_message_bytes: -5, max_rows: 2.5, max_tokens: null, max_binary_header_bytes: 1e300 },
      { max_inflight: 0, max_message_bytes: [1], max_rows: {}, max_tokens: -1, max_binary_header_bytes: '4096' },
      'nope',
      null,
    ]) {
      const peer = await fakeServer({ hello: { ...HELLO, limits } });
      const c = new Client(peer.url);
      try {
        const hello = await c.connect();
        for (const name of LIMIT_NAMES) assert.equal(hello.limits[name], null, `${JSON.stringify(limits)}: ${name}`);
        assert.equal(c.stats().capacity, Infinity, 'no max_inflight announced: no client-side cap');
        const results = await Promise.all([1, 2, 3].map(() => c.predict('m', [[1]])));
        assert.equal(results.length, 3);
        assert.equal((await c.complete('m', 'x')).text, 'abc');
      } finally {
        await c.close();
        await peer.close();
      }
    }
  });

  it('a hello without protocol is taken as version 1 (as the Python client)', async () => {
    const { protocol: _p, ...hello } = HELLO;
    const peer = await fakeServer({ hello });
    const c = new Client(peer.url);
    try {
      await c.connect();
      assert.deepEqual((await c.predict('m', [[1]])).outputs, [[1]]);
    } finally {
      await c.close();
      await peer.close();
    }
  });

  it('valid limits are used as the server gives them, and unknown ones are kept', async () => {
    const peer = await fakeServer({ hello: { ...HELLO, limits: { ...HELLO.limits, max_inflight: 2, max_message_bytes: 2 ** 53, max_new_thing: 'x' } } });
    const c = new Client(peer.url);
    try {
      const hello = await c.connect();
      assert.equal(hello.limits.max_inflight, 2);
      assert.equal(hello.limits.max_message_bytes, 2 ** 53);
      assert.equal(hello.limits.max_binary_header_bytes, null, 'not announced');
      assert.equal(hello.limits.max_new_thing, 'x');
      assert.equal(c.stats().capacity, 2);
    } finally {
      await c.close();
      await peer.close();
    }
  });

  // A server of another protocol version was talked to as if it spoke version 1.
  it('a hello of another protocol version is refused at connect, once, naming both versions', async () => {
    for (const protocol of [2, '1', 0, null, 1.5]) {
      const peer = await fakeServer({ hello: { ...HELLO, protocol } });
      const c = new Client(peer.url, { reconnect: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1 } });
      try {
        await assert.rejects(c.connect(), (e) => {
          assert.ok(e instanceof UnsupportedProtocol && e instanceof ProtocolError, `${e?.name}: ${e?.message}`);
          assert.ok(e.message.includes(`sent protocol ${JSON.stringify(protocol)};`), e.message);
          assert.ok(e.message.includes(`this client speaks protocol ${PROTOCOL_VERSION}`), e.message);
          return true;
        });
        await assert.rejects(c.predict('m', [[1]]), UnsupportedProtocol);
        assert.equal(peer.received.length, 0, 'nothing was sent');
        assert.equal(peer.connections(), 2, 'not retried: one attempt per call');
      } finally {
        await c.close();
        await peer.close();
      }
    }
  });
});

describe('close() against a peer that never completes the close handshake', { timeout: 60_000 }, () => {
  // close() stopped waiting after a fixed 2 s, but left the socket to the `ws` package's own
  // 30 s close timeout: the TCP connection (and a Node process) outlived the client.
  it('resolves after closeTimeoutMs and drops the TCP connection', async () => {
    assert.equal(DEFAULT_CLOSE_TIMEOUT_MS, 2000);
    const peer = await deafServer();
    const c = new Client(peer.url, { closeTimeoutMs: 50, heartbeatMs: null });
    try {
      await c.connect();
      const pending = assert.rejects(c.predict('m', [[1]]), ClientClosed); // never answered
      assert.ok(await eventually(() => c.stats().requestsSent === 1));
      await c.close();
      await pending;
      await peer.ended; // the test's own timeout is the bound
      assert.equal(c.state, 'closed');
    } finally {
      await peer.close();
    }
  });

  it('refuses a closeTimeoutMs that is not a number >= 0', () => {
    for (const bad of [-1, '5', Number.NaN]) {
      assert.throws(() => new Client('ws://127.0.0.1:1/', { closeTimeoutMs: bad }), /closeTimeoutMs must be a number >= 0/);
    }
  });
});

describe('a stream whose deadline passes with items still unread', { timeout: 60_000 }, () => {
  // As the Python client: what arrived before the deadline is still yielded, then DeadlineExceeded.
  for (const kind of ['generate', 'predictStream']) {
    it(`${kind}: the buffered items, then DeadlineExceeded; cancel sent`, async () => {
      const peer = await fakeServer({
        scripts: {
          stall: (msg, send) => {
            for (let seq = 0; seq < 3; seq++) {
              send(msg.type === 'generate'
                ? { type: 'token', id: msg.id, seq, text: String(seq) }
                : { type: 'chunk', id: msg.id, seq, offset: seq, outputs: [[seq]] });
            } // and nothing more until cancelled
          },
        },
      });
      const c = new Client(peer.url);
      try {
        const s = kind === 'generate' ? c.generate('stall', 'x', { timeoutMs: 0 }) : c.predictStream('stall', [[1], [2], [3]], { timeoutMs: 0 });
        assert.ok(await eventually(() => s.received === 3));
        await assert.rejects(s.wait(), DeadlineExceeded);
        const { items, error } = await drain(s);
        assert.deepEqual(items, kind === 'generate' ? ['0', '1', '2'] : [0, 1, 2].map((i) => ({ seq: i, offset: i, outputs: [[i]] })));
        assert.ok(error instanceof DeadlineExceeded, String(error));
        assert.ok(await eventually(() => peer.cancelled(s.id)));
        assert.ok(await eventually(() => c.stats().inflight === 0));
        assert.ok((await c.ping()) >= 0);
      } finally {
        await c.close();
        await peer.close();
      }
    });
  }
});

describe('malformed frames fail only the call they answer', { timeout: 60_000 }, () => {
  // A text frame that was not JSON was dropped: the call it answered waited forever. Frames whose
  // fields had the wrong types were handed to the caller as they were (outputs "lots", a token
  // text 5, models "x").
  it('each bad answer fails its own call with MalformedFrame; the socket and the other calls carry on', async () => {
    const peer = await fakeServer({
      scripts: {
        notjson: (msg, send) => send(`{"type":"result","id":${JSON.stringify(msg.id)},"outputs":[[1]`),
        garbage: (msg, send) => { // garbage naming no call, then the real answer
          send('}}} not json');
          send({ type: 'result', id: msg.id, model: 'garbage', version: '1', outputs: [[3]] });
        },
        badoutputs: (msg, send) => send({ type: 'result', id: msg.id, outputs: 'lots' }),
        badtoken: (msg, send) => {
          send({ type: 'token', id: msg.id, seq: 0, text: 'a' });
          send({ type: 'token', id: msg.id, seq: 1, text: 5 }); // then nothing until cancelled
        },
        badchunk: (msg, send) => send({ type: 'chunk', id: msg.id, seq: 'zero', offset: 0, outputs: [[1]] }),
        baddone: (msg, send) => send({ type: 'done', id: msg.id, reason: 7, tokens: 'x' }),
        wrongtype: (msg, send) => send({ type: 'done', id: msg.id, reason: 'complete' }), // ends it on the server
        pong: (msg, send) => send({ type: 'pong', id: msg.id }), // another request's answer: then nothing until cancelled
        progress: (msg, send) => { // a type protocol version 1 does not have: ignored, the answer follows
          send({ type: 'progress', id: msg.id, fraction: 0.5 });
          send({ type: 'token', id: msg.id, seq: 0, text: 'p' });
          send({ type: 'done', id: msg.id, reason: 'length', tokens: 1 });
        },
        unstreamed: (msg, send) => send({ type: 'result', id: msg.id, model: 'unstreamed', version: '1', outputs: [[5], [6]] }),
        baderror: (msg, send) => send({ type: 'error', id: msg.id, code: 5, message: ['x'], retry_after_ms: 'soon' }),
        models: (msg, send) => send({ type: 'models', id: msg.id, models: 'x' }),
      },
    });
    const c = new Client(peer.url);
    const malformed = (re) => (e) => {
      assert.ok(e instanceof MalformedFrame && e instanceof ProtocolError && e instanceof WsserveError, `${e?.name}: ${e?.message}`);
      assert.equal(e.code, null);
      assert.equal(typeof e.requestId, 'number');
      assert.match(e.message, re);
      return true;
    };
    try {
      const good = c.predict('m', [[1]]);
      const goodGen = c.complete('m', 'x');
      const badToken = c.generate('badtoken', 'x');
      const pong = c.predict('pong', [[1]]);
      const progress = c.generate('progress', 'x');
      await Promise.all([
        assert.rejects(c.predict('wrongtype', [[1]]), malformed(/predict \d+: a "done" frame does not answer it \(expected "result", "error"\)/)),
        assert.rejects(pong, malformed(/a "pong" frame does not answer it/)),
        drain(progress).then((got) => assert.deepEqual(got, { items: ['p'], error: null })),
        assert.rejects(c.predict('notjson', [[1]]), malformed(/malformed frame from the server.*not JSON/)),
        assert.rejects(c.predict('badoutputs', [[1]]), malformed(/result frame: outputs must be .*got the string "lots"/)),
        assert.rejects(c.predictStream('badchunk', [[1]]).wait(), malformed(/chunk frame: seq must be an integer >= 0/)),
        assert.rejects(c.generate('baddone', 'x').wait(), malformed(/done frame: reason must be a string, got number 7/)),
        assert.rejects(c.models(), malformed(/models frame: models must be an array/)),
        assert.rejects(c.predict('baderror', [[1]]), (e) => e instanceof WsserveError && e.retryAfterMs === null),
      ]);
      assert.deepEqual((await c.predict('garbage', [[1]])).outputs, [[3]]);
      // a streaming predict answered by a plain result (a server that did not stream): one chunk, then done
      const unstreamed = c.predictStream('unstreamed', [[1], [2]]);
      assert.deepEqual(await drain(unstreamed), { items: [{ seq: 0, offset: 0, outputs: [[5], [6]] }], error: null });
      assert.equal(unstreamed.done.rows, 2);
      assert.equal(unstreamed.done.reason, 'complete');
      // what did not end the request on the server was cancelled there; what did was not
      const ids = peer.received.filter((m) => m.type !== 'cancel');
      const idOf = (model) => ids.find((m) => m.model === model).id;
      for (const model of ['pong', 'badtoken', 'notjson']) assert.ok(peer.cancelled(idOf(model)), model);
      for (const model of ['wrongtype', 'badoutputs', 'baddone']) assert.ok(!peer.cancelled(idOf(model)), model);
      const { items, error } = await drain(badToken);
      assert.deepEqual(items, ['a'], 'what came before the bad frame is still read');
      assert.ok(malformed(/token frame: text must be a string, got number 5/)(error));
      assert.ok(await eventually(() => peer.cancelled(badToken.id)), 'the stream was cancelled on the server');
      assert.deepEqual((await good).outputs, [[1]]);
      assert.equal((await goodGen).text, 'abc');
      assert.ok(await eventually(() => c.stats().inflight === 0));
      assert.ok((await c.ping()) >= 0);
      assert.equal(c.state, 'open');
      assert.equal(c.stats().connects, 1, 'one socket throughout');
    } finally {
      await c.close();
      await peer.close();
    }
  });
});

describe('a token frame out of seq order fails only its generation', { timeout: 60_000 }, () => {
  // Token frames of a generation are numbered 0, 1, 2, ...; one whose seq was not the next (a
  // token lost, repeated or reordered) was taken as it came: the text silently lost or gained tokens.
  const texts = 'abcdefgh';
  const cases = {
    'a gap': [[0, 2], 1, 2],
    'a repeat': [[0, 1, 1], 2, 1],
    'out of order': [[0, 2, 1], 1, 2],
    'starting at 1': [[1, 2], 0, 1],
  };
  for (const [name, [seqs, expected, got]] of Object.entries(cases)) {
    it(`${name}: MalformedFrame naming the expected and received seq, cancel sent, the rest carries on`, async () => {
      const peer = await fakeServer({
        scripts: { bad: (msg, send) => seqs.forEach((seq, i) => send({ type: 'token', id: msg.id, seq, text: texts[i] })) },
      });
      const c = new Client(peer.url);
      try {
        const before = c.complete('m', 'x');
        const bad = c.generate('bad', 'x');
        const after = c.complete('m', 'y');
        const { items, error } = await drain(bad);
        assert.ok(error instanceof MalformedFrame && error instanceof ProtocolError, `${error?.name}: ${error?.message}`);
        assert.match(error.message, new RegExp(`token frame: seq must be ${expected} \\(the next in order\\), got ${got}`));
        assert.equal(error.requestId, bad.id);
        assert.deepEqual(items, [...texts.slice(0, expected)], 'the tokens before the bad one, in order');
        assert.equal(bad.text, texts.slice(0, expected));
        assert.equal((await before).text, 'abc');
        assert.equal((await after).text, 'abc');
        assert.ok(await eventually(() => peer.cancelled(bad.id)), 'the stream was cancelled on the server');
        assert.ok(await eventually(() => c.stats().inflight === 0));
        assert.equal((await c.complete('m', 'z')).text, 'abc');
        assert.equal(c.stats().connects, 1, 'one socket throughout');
      } finally {
        await c.close();
        await peer.close();
      }
    });
  }
});

describe('a server that ignores cancels (cancelTimeoutMs)', { timeout: 60_000 }, () => {
  // A request the server never ended, not even after the client's cancel, kept its inflight slot
  // for good: with maxInflight 1 every later call waited forever.
  it('frees the slot cancelTimeoutMs after the cancel; the call fails with ProtocolError', async () => {
    assert.equal(DEFAULT_CANCEL_TIMEOUT_MS, 30000);
    assert.throws(() => new Client('ws://127.0.0.1:1/', { cancelTimeoutMs: 0 }), RangeError);
    const peer = await fakeServer({ answerCancels: false, scripts: { silent: () => {} } });
    const c = new Client(peer.url, { maxInflight: 1, cancelTimeoutMs: 200 });
    try {
      await assert.rejects(c.predict('silent', [[1]], { timeoutMs: 50 }), DeadlineExceeded);
      assert.deepEqual((await c.predict('m', [[1]])).outputs, [[1]], 'the slot came back');
      const s = c.generate('silent', 'x');
      assert.ok(await eventually(() => peer.received.some((m) => m.type === 'generate')), 'the generate was sent');
      s.cancel(); // waits for the server's end of the stream, which never comes
      const { items, error } = await drain(s);
      assert.deepEqual(items, []);
      assert.ok(error instanceof ProtocolError && /did not end the request within 200 ms of its cancel/.test(error.message),
        `${error?.name}: ${error?.message}`);
      assert.ok(await eventually(() => c.stats().inflight === 0), 'every slot free');
      assert.deepEqual(peer.received.map((m) => m.type), ['predict', 'cancel', 'predict', 'generate', 'cancel']);
    } finally {
      await c.close();
      await peer.close();
    }
  });
});

describe('logprobs: the request field and the token frames that carry them', { timeout: 60_000 }, () => {
  // A token frame of a generate with "logprobs": 2, as the protocol spells it.
  const TOKEN = Object.freeze({
    type: 'token', seq: 0, text: 'q', logprob: -0.12,
    top_logprobs: [{ id: 17, text: 'q', logprob: -0.12 }, { id: 3, text: 'x', logprob: -2.3 }],
  });
  const RECORD = { text: 'q', logprob: -0.12, top_logprobs: TOKEN.top_logprobs };

  it('logprobsProblem() accepts the protocol\'s frames and names what is missing or wrong', () => {
    assert.equal(logprobsProblem(TOKEN), null);
    assert.equal(logprobsProblem({ ...TOKEN, logprob: null, top_logprobs: [] }), null); // not finite; k = 0
    const bad = [
      [{ logprob: undefined }, /no logprob\/top_logprobs though the generate asked for logprobs/],
      [{ top_logprobs: undefined }, /no logprob\/top_logprobs/],
      [{ logprob: '-1' }, /token frame: logprob must be a number or null, got the string "-1"/],
      [{ top_logprobs: { id: 1 } }, /token frame: top_logprobs must be an array of \{id/],
      [{ top_logprobs: [{ id: -1, text: 'q', logprob: -1 }] }, /top_logprobs must be/],
      [{ top_logprobs: [{ id: 1, text: 2, logprob: -1 }] }, /top_logprobs must be/],
      [{ top_logprobs: [{ id: 1, text: 'q' }] }, /top_logprobs must be/],
    ];
    for (const [change, re] of bad) assert.match(logprobsProblem({ ...TOKEN, ...change }), re);
  });

  it('sends logprobs (0 included), keeps each token\'s record, fails a stream whose tokens lack them', async () => {
    const peer = await fakeServer({
      scripts: {
        lp: (msg, send) => {
          send({ ...TOKEN, id: msg.id });
          send({ ...TOKEN, id: msg.id, seq: 1, text: 'x', logprob: null, top_logprobs: [] });
          send({ type: 'done', id: msg.id, reason: 'length', tokens: 2 });
        },
        plain: (msg, send) => send({ type: 'token', id: msg.id, seq: 0, text: 'a' }), // no logprobs, then nothing
        badtop: (msg, send) => send({ ...TOKEN, id: msg.id, top_logprobs: [{ id: 'q', text: 'q', logprob: 0 }] }),
      },
    });
    const c = new Client(peer.url);
    try {
      for (const bad of [true, 1.5, '2', [1]]) {
        assert.throws(() => c.generate('lp', 'x', { logprobs: bad }), { name: 'TypeError', message: /^generate\(\): logprobs must be an integer >= 0/ });
      }
      assert.throws(() => c.generate('lp', 'x', { logprobs: -1 }), { name: 'RangeError', message: /logprobs must be an integer >= 0/ });
      await assert.rejects(c.complete('lp', 'x', { logprobs: false }), TypeError);
      const gen = c.generate('lp', 'x', { logprobs: 2 });
      const seen = [];
      for await (const text of gen) seen.push([text, gen.logprobs[seen.length].text]);
      assert.deepEqual(seen, [['q', 'q'], ['x', 'x']]);
      const records = [RECORD, { text: 'x', logprob: null, top_logprobs: [] }];
      assert.deepEqual(gen.logprobs, records);
      assert.deepEqual(gen.done.logprobs, records);
      assert.equal(gen.done.text, 'qx');
      assert.deepEqual((await c.complete('lp', 'x', { logprobs: 0 })).logprobs, records);
      const bare = c.generate('lp', 'x');
      assert.deepEqual(await drain(bare), { items: ['q', 'x'], error: null });
      assert.equal(bare.logprobs, null, 'not asked: none, whatever the server sends');
      assert.equal(bare.done.logprobs, undefined);
      const sent = peer.received.filter((m) => m.type === 'generate');
      assert.deepEqual(sent.map((m) => m.logprobs), [2, 0, undefined]);
      assert.ok(!('logprobs' in sent[2]));
      // a server without logprobs support sends plain tokens: the stream fails at the first, cancelled
      for (const [model, re] of [['plain', /no logprob\/top_logprobs though the generate asked for logprobs/],
        ['badtop', /token frame: top_logprobs must be an array of/]]) {
        const s = c.generate(model, 'x', { logprobs: 1 });
        const { items, error } = await drain(s);
        assert.deepEqual(items, []);
        assert.ok(error instanceof MalformedFrame && re.test(error.message), `${error?.name}: ${error?.message}`);
        assert.ok(await eventually(() => peer.cancelled(s.id)), 'the stream was cancelled on the server');
      }
      assert.ok(await eventually(() => c.stats().inflight === 0));
      assert.equal(c.stats().connects, 1, 'one socket throughout');
    } finally {
      await c.close();
      await peer.close();
    }
  });
});

describe('trace context', () => {
  it('sends traceparent and tracestate on predict, predictStream and generate; refuses bad ones before sending', async () => {
    const peer = await fakeServer();
    const c = new Client(peer.url);
    try {
      const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
      await c.predict('m', [[1]], { traceparent: tp, tracestate: 'k=v' });
      for await (const _ of c.predictStream('m', [[1]], { traceparent: tp })) { /* drain */ }
      await c.complete('m', 'hi', { traceparent: tp, tracestate: 'a=1,b=2' });
      await c.predict('m', [[1]]);
      const sent = peer.received.filter((m) => m.type === 'predict' || m.type === 'generate')
        .map((m) => [m.type, m.traceparent, m.tracestate]);
      assert.deepEqual(sent, [['predict', tp, 'k=v'], ['predict', tp, undefined], ['generate', tp, 'a=1,b=2'],
        ['predict', undefined, undefined]]);
      assert.throws(() => c.generate('m', 'hi', { tracestate: 'k=v' }), /tracestate needs a traceparent/);
      await assert.rejects(c.predict('m', [[1]], { traceparent: 7 }), /traceparent must be a string/);
      await assert.rejects(c.predict('m', [[1]], { traceparent: tp, tracestate: 'k='.padEnd(513, 'v') }),
        /tracestate has 513 characters; the server takes at most 512/);
      assert.equal(peer.received.filter((m) => m.type === 'predict' || m.type === 'generate').length, 4);
    } finally {
      await c.close();
      await peer.close();
    }
  });
});

