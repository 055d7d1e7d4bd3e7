// Node test-runner tests of wsserve-client against real wsserve processes on loopback.
// Run: `npm test` (or `node --test test/client.test.js`) in clients/js.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import WebSocket from 'ws';

import {
  Client, WsserveError, ERROR_CLASSES, errorFromFrame, ConnectionLost, ClientClosed, RequestTooLarge,
  UnknownModelError, InvalidInput, BadRequestError, RequestCancelled, DeadlineExceeded, OverloadedError,
  Unauthorized, ShuttingDown, reconnectDelayMs, retryDelayMs, DEFAULT_RECONNECT, DEFAULT_RETRY,
} from 'wsserve-client';
import { startServer, httpGet, metricSum, eventually, PYTHON, REPO_ROOT } from './helpers/server.js';

const run = promisify(execFile);
const CLIENT_SRC = path.join(REPO_ROOT, 'clients/js/src/wsserve.js');
const CLIENT_TYPES = path.join(REPO_ROOT, 'clients/js/src/wsserve.d.ts');

/** One request over a raw `ws` socket, independent of the client under test. */
function rawRequest(url, msg) {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(url, ['wsserve.v1']);
    const timer = setTimeout(() => { sock.terminate(); reject(new Error('raw request timed out')); }, 10_000);
    sock.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === 'hello') sock.send(JSON.stringify(msg));
      else if (frame.id === msg.id && frame.type !== 'chunk' && frame.type !== 'token') {
        clearTimeout(timer);
        sock.close();
        resolve(frame);
      }
    });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

async function cancelledCount(srv, model, type) {
  const { text } = await httpGet(srv.httpUrl, '/metrics');
  return metricSum(text, 'wsserve_requests_total', { model, type, code: 'cancelled' });
}

async function inflightGauge(srv) {
  const { text } = await httpGet(srv.httpUrl, '/metrics');
  return metricSum(text, 'wsserve_inflight_requests');
}

/**
 * Every entry point that takes an options object: what its TypeError calls it, the
 * interface of wsserve.d.ts that declares its keys, a realistic wrong key, whether it
 * throws synchronously (else the promise rejects), and how to call it with `opts`.
 */
const OPTION_ENTRY_POINTS = [
  { where: 'Client options', iface: 'ClientOptions', typo: 'heartbeatIntervalMs', sync: true,
    call: (_c, opts) => new Client('ws://127.0.0.1:1/', opts) },
  { where: 'Client option "reconnect"', iface: 'BackoffPolicy', typo: 'initialDelayMs', sync: true,
    call: (_c, opts) => new Client('ws://127.0.0.1:1/', { reconnect: opts }) },
  { where: 'Client option "retry"', iface: 'RetryPolicy', typo: 'retryOn', sync: true,
    call: (_c, opts) => new Client('ws://127.0.0.1:1/', { retry: opts }) },
  { where: 'connect() options', iface: 'CallOptions', typo: 'timeoutMs', sync: false, call: (c, opts) => c.connect(opts) },
  { where: 'predict() options', iface: 'PredictOptions', typo: 'timeout', sync: false,
    call: (c, opts) => c.predict('linear', [[1]], opts) },
  { where: 'predictStream() options', iface: 'PredictStreamOptions', typo: 'chunk_rows', sync: true,
    call: (c, opts) => c.predictStream('linear', [[1]], opts) },
  { where: 'predictResponses() options', iface: 'PredictResponsesOptions', typo: 'timeout_ms', sync: true,
    call: (c, opts) => c.predictResponses('linear', [[1]], opts) },
  { where: 'generate() options', iface: 'GenerateOptions', typo: 'max_tokens', sync: true,
    call: (c, opts) => c.generate('charlm', 'The ', opts) },
  { where: 'complete() options', iface: 'GenerateOptions', typo: 'maxNewTokens', sync: false,
    call: (c, opts) => c.complete('charlm', 'The ', opts) },
  { where: 'models() options', iface: 'UnaryOptions', typo: 'abortSignal', sync: false, call: (c, opts) => c.models(opts) },
  { where: 'ping() options', iface: 'UnaryOptions', typo: 'timeout_ms', sync: false, call: (c, opts) => c.ping(opts) },
  { where: 'load() options', iface: 'LoadOptions', typo: 'versions', sync: false, call: (c, opts) => c.load('m', opts) },
  { where: 'unload() options', iface: 'AdminOptions', typo: 'model', sync: false, call: (c, opts) => c.unload('m', opts) },
  { where: 'reload() options', iface: 'AdminOptions', typo: 'adminKey', sync: false, call: (c, opts) => c.reload('m', opts) },
  { where: 'WsserveError options', iface: 'WsserveErrorOptions', typo: 'retry_after_ms', sync: true,
    call: (_c, opts) => new WsserveError('m', opts) },
];

/** `{error, sync}`: what calling `fn` threw synchronously, or what its promise rejected with. */
async function failureOf(fn) {
  let out;
  try {
    out = fn();
  } catch (error) {
    return { error, sync: true };
  }
  try {
    await out;
  } catch (error) {
    return { error, sync: false };
  }
  return { error: null, sync: false };
}

/** The member names of `export interface name` in wsserve.d.ts, inherited ones included. */
function declaredKeys(dts, name) {
  const m = dts.match(new RegExp(`export interface ${name}(?: extends (\\w+))? \\{\\n([\\s\\S]*?)\\n\\}`));
  assert.ok(m, `no interface ${name} in wsserve.d.ts`);
  const own = [...m[2].matchAll(/^ {2}(\w+)\??:/gm)].map((x) => x[1]);
  return m[1] ? [...declaredKeys(dts, m[1]), ...own] : own;
}

async function collect(stream) {
  const items = [];
  for await (const x of stream) items.push(x);
  return items;
}

const rowsOf = (xs) => xs.map((x) => [x]);
const mlpRow = (i) => Array.from({ length: 32 }, (_, j) => Math.sin(i * 31 + j) * 2);

describe('wsserve-client against a real server', { timeout: 240_000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer();
    c = new Client(srv.url);
  });
  after(async () => {
    await c?.close();
    await srv?.stop();
  });

  it('connect() resolves with the hello frame', async () => {
    const hello = await c.connect();
    assert.equal(hello.type, 'hello');
    assert.equal(hello.server, 'wsserve');
    assert.equal(hello.protocol, 1);
    for (const k of ['max_message_bytes', 'max_inflight', 'max_rows', 'max_tokens']) {
      assert.ok(Number.isInteger(hello.limits[k]) && hello.limits[k] > 0, `limit ${k}`);
    }
    assert.deepEqual([...hello.models].sort(), ['charlm', 'linear', 'mlp']);
    assert.equal(c.state, 'open');
    assert.equal(c.hello, hello);
    assert.equal(c.stats().capacity, hello.limits.max_inflight);
  });

  it('ping() measures a round trip in milliseconds', async () => {
    const rtt = await c.ping();
    assert.ok(rtt > 0 && rtt < 5000, `rtt ${rtt}`);
  });

  it('models() lists every served model with its metadata', async () => {
    const models = await c.models();
    assert.deepEqual(models.map((m) => m.name).sort(), [...c.hello.models].sort());
    for (const m of models) {
      assert.equal(typeof m.version, 'string');
      assert.equal(typeof m.task, 'string');
      assert.ok(Array.isArray(m.input_shape), `${m.name} input_shape`);
    }
    const linear = models.find((m) => m.name === 'linear');
    assert.deepEqual(linear.input_shape, [1]);
    assert.deepEqual(linear.output_shape, [1]);
  });

  it('predict() on linear equals the raw wire answer and fits y ≈ 3x + 0.5', async () => {
    const xs = [0, 0.25, 0.5, 1];
    const r = await c.predict('linear', rowsOf(xs));
    const raw = await rawRequest(srv.url, { type: 'predict', id: 'raw-1', model: 'linear', inputs: rowsOf(xs) });
    assert.equal(raw.type, 'result');
    assert.deepEqual(r.outputs, raw.outputs);
    assert.equal(r.model, 'linear');
    assert.equal(typeof r.version, 'string');
    assert.equal(typeof r.id, 'number');
    assert.ok(r.timing.batch_size >= xs.length);
    xs.forEach((x, i) => assert.ok(Math.abs(r.outputs[i][0] - (3 * x + 0.5)) < 0.5, `x=${x} y=${r.outputs[i][0]}`));
  });

  it('predict() on mlp gives one probability row per input; typed-array rows work too', async () => {
    const rows = Array.from({ length: 5 }, (_, i) => mlpRow(i));
    const r = await c.predict('mlp', rows);
    assert.equal(r.outputs.length, 5);
    for (const row of r.outputs) {
      assert.equal(row.length, 10);
      assert.ok(row.every((p) => p >= 0 && p <= 1));
      assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-6);
    }
    const typed = await c.predict('mlp', rows.map((row) => Float64Array.from(row)));
    assert.deepEqual(typed.outputs, r.outputs);
  });

  it('predictStream() yields ordered chunks that add up to the plain predict', async () => {
    const rows = Array.from({ length: 50 }, (_, i) => mlpRow(i + 100));
    const plain = await c.predict('mlp', rows);
    const stream = c.predictStream('mlp', rows, { chunkRows: 8 });
    const chunks = await collect(stream);
    assert.deepEqual(chunks.map((ch) => ch.seq), [0, 1, 2, 3, 4, 5, 6]);
    let offset = 0;
    for (const ch of chunks) {
      assert.equal(ch.offset, offset);
      offset += ch.outputs.length;
    }
    const all = chunks.flatMap((ch) => ch.outputs);
    assert.equal(all.length, 50);
    all.forEach((row, i) => row.forEach((v, j) => assert.ok(Math.abs(v - plain.outputs[i][j]) < 1e-9)));
    assert.equal(stream.done.reason, 'complete');
    assert.equal(stream.done.rows, 50);
    assert.equal(stream.error, null);
    assert.equal(typeof stream.id, 'number');
  });

  it('generate() streams tokens and reports how it ended; greedy is deterministic', async () => {
    const gen = c.generate('charlm', 'The ', { maxTokens: 40 });
    const tokens = await collect(gen);
    assert.equal(tokens.length, 40);
    assert.ok(tokens.every((t) => typeof t === 'string' && t.length >= 1));
    assert.equal(gen.done.reason, 'length');
    assert.equal(gen.done.tokens, 40);
    assert.equal(gen.done.prompt_tokens, 4); // 'The ': one id a character for charlm
    assert.equal(gen.done.text, tokens.join(''));
    assert.equal(gen.text, tokens.join(''));
    assert.equal(typeof gen.done.timing.ttft_ms, 'number');
    assert.equal(typeof gen.done.timing.total_ms, 'number');
    const again = await c.complete('charlm', 'The ', { maxTokens: 40 });
    assert.equal(again.text, gen.text);
    assert.equal(again.reason, 'length');
  });

  it('generate() ends at a stop string, which is not streamed', async () => {
    const full = (await c.complete('charlm', 'The ', { maxTokens: 80 })).text;
    const stop = full.slice(10, 13);
    const expected = full.slice(0, full.indexOf(stop));
    const gen = c.generate('charlm', 'The ', { maxTokens: 80, stop: [stop] });
    const text = (await collect(gen)).join('');
    assert.equal(gen.done.reason, 'stop');
    assert.equal(text, expected);
    assert.ok(!text.includes(stop));
  });

  it('generate() takes chat messages: the model\'s template makes the prompt', async () => {
    const messages = [{ role: 'system', content: 'You continue text.' }, { role: 'user', content: [{ type: 'text', text: 'The ' }] }];
    const chat = await c.complete('charlm', messages, { maxTokens: 30 });
    // charlm's template joins the contents with newlines
    const plain = await c.complete('charlm', 'You continue text.\nThe ', { maxTokens: 30 });
    assert.equal(chat.text, plain.text);
    assert.equal(chat.tokens, 30);
    assert.equal(chat.prompt_tokens, plain.prompt_tokens);
    await assert.rejects(c.complete('charlm', [{ role: 'tool', content: '1' }]),
      (e) => e.code === 'bad_request' && e.message.includes("'messages[0].role' 'tool' is not supported"));
    assert.equal((await c.complete('charlm', 'The ', { maxTokens: 3 })).tokens, 3); // the connection still serves
  });

  it('seeded sampling is reproducible through the client', async () => {
    const opts = { maxTokens: 40, temperature: 1, topK: 20, seed: 7 };
    const a = await c.complete('charlm', 'Once ', opts);
    const b = await c.complete('charlm', 'Once ', opts);
    assert.equal(a.text, b.text);
    assert.equal(a.tokens, 40);
    // topP reaches the server: a nucleus of one token is greedy at any temperature
    const greedy = await c.complete('charlm', 'Once ', { maxTokens: 40 });
    const narrow = await c.complete('charlm', 'Once ', { ...opts, temperature: 2, topP: 1e-9 });
    assert.equal(narrow.text, greedy.text);
    assert.equal((await c.complete('charlm', 'Once ', { ...opts, temperature: 2, minP: 1 })).text, greedy.text);
    const forced = await c.complete('charlm', 'Once ', { maxTokens: 10, logitBias: { 3: 100 } });
    assert.equal(new Set(forced.text).size, 1);
    assert.notEqual(a.text, greedy.text);
    const penalised = await c.complete('charlm', 'Once ', { maxTokens: 40, presencePenalty: 1, frequencyPenalty: 1 });
    assert.equal(penalised.tokens, 40);
    assert.notEqual(penalised.text, greedy.text);
  });

  /**
   * `records` are one per token of `text` (charlm: a character each): a log-probability <= 0 and
   * the `k` likeliest tokens, likeliest first (ties by id); greedy: the chosen token is the likeliest.
   */
  function checkLogprobs(records, text, k, { greedy }) {
    assert.equal(records.map((r) => r.text).join(''), text);
    for (const r of records) {
      assert.equal(r.text.length, 1);
      assert.ok(typeof r.logprob === 'number' && r.logprob <= 0, `logprob ${r.logprob}`);
      assert.equal(r.top_logprobs.length, k);
      r.top_logprobs.forEach((t, i) => {
        assert.ok(Number.isInteger(t.id) && typeof t.text === 'string' && t.logprob <= 0);
        const prev = r.top_logprobs[i - 1];
        if (prev) assert.ok(prev.logprob > t.logprob || (prev.logprob === t.logprob && prev.id < t.id), 'likeliest first');
      });
      if (greedy && k) assert.deepEqual([r.top_logprobs[0].text, r.top_logprobs[0].logprob], [r.text, r.logprob]);
    }
  }

  it('repetitionPenalty reaches the server: greedy repeats itself less; out of range is bad_request', async () => {
    /** How many of `text`'s character pairs repeat an earlier one (charlm: a token a character). */
    const repeatedPairs = (text) => {
      const pairs = Array.from({ length: text.length - 1 }, (_, i) => text.slice(i, i + 2));
      return pairs.length - new Set(pairs).size;
    };
    const greedy = await c.complete('charlm', 'The ', { maxTokens: 60 });
    const penalised = await c.complete('charlm', 'The ', { maxTokens: 60, repetitionPenalty: 1.5 });
    assert.equal(penalised.tokens, 60);
    assert.notEqual(penalised.text, greedy.text);
    assert.ok(repeatedPairs(penalised.text) < repeatedPairs(greedy.text), `${penalised.text} | ${greedy.text}`);
    assert.ok(new Set(penalised.text).size > new Set(greedy.text).size);
    assert.equal((await c.complete('charlm', 'The ', { maxTokens: 60, repetitionPenalty: 1 })).text, greedy.text);
    for (const bad of [0, -1, 2.5, '1.5', true]) {
      await assert.rejects(c.complete('charlm', 'The ', { maxTokens: 5, repetitionPenalty: bad }), (e) => {
        assert.ok(e instanceof BadRequestError, `${bad}: ${e}`);
        assert.equal(e.code, 'bad_request');
        assert.ok(e.message.includes("field 'repetition_penalty' must be a number in (0, 2]"), e.message);
        return true;
      });
    }
    // a stream's error is thrown by the iteration
    await assert.rejects(collect(c.generate('charlm', 'The ', { maxTokens: 5, repetitionPenalty: 3 })),
      (e) => e instanceof BadRequestError && e.message.includes("'repetition_penalty'"));
    assert.equal((await c.complete('charlm', 'The ', { maxTokens: 3, repetitionPenalty: 2 })).tokens, 3); // 2: in range
  });

  it('generate() with vLLM\'s stop controls: cut at a stop token, kept with includeStopStrInOutput, deferred by minTokens', async () => {
    const plain = (await c.complete('charlm', 'The ', { maxTokens: 80 })).text;
    const at = plain.indexOf('t');
    const t = 't'.charCodeAt(0) - 31; // charlm's token id of "t"
    const cut = await c.complete('charlm', 'The ', { maxTokens: 80, stopTokenIds: [t] });
    assert.deepEqual([cut.text, cut.reason, cut.tokens], [plain.slice(0, at), 'stop', at]);
    const kept = await c.complete('charlm', 'The ', { maxTokens: 80, stopTokenIds: [t], includeStopStrInOutput: true });
    assert.deepEqual([kept.text, kept.reason, kept.tokens], [plain.slice(0, at + 1), 'stop', at + 1]);
    const second = plain.indexOf('t', at + 1);
    const texts = await collect(c.generate('charlm', 'The ', { maxTokens: 80, stop: 't', minTokens: at + 1 }));
    assert.deepEqual([texts.join(''), texts.length], [plain.slice(0, second), second]);
    for (const [opts, field] of [[{ minTokens: 6 }, 'min_tokens'], [{ stopTokenIds: [-1] }, 'stop_token_ids'],
      [{ includeStopStrInOutput: 'yes' }, 'include_stop_str_in_output']]) {
      await assert.rejects(c.complete('charlm', 'The ', { maxTokens: 5, ...opts }),
        (e) => e instanceof BadRequestError && e.message.includes(`field '${field}'`));
    }
    assert.equal((await c.connect()).limits.max_stop_token_ids, 64);
  });

  it('generate() with guidedChoice: the text is one of the choices, greedy or sampled; a bad list is refused by name', async () => {
    const choices = ['yes', 'no', 'maybe later'];
    for (const seed of [1, 2, 3]) {
      const done = await c.complete('charlm', 'The ', { maxTokens: 40, temperature: 1, seed, guidedChoice: choices });
      assert.ok(choices.includes(done.text), done.text);
      assert.deepEqual([done.reason, done.tokens], ['stop', done.text.length]); // charlm: a token per character
    }
    const greedy = await collect(c.generate('charlm', 'The ', { maxTokens: 40, guidedChoice: choices }));
    assert.ok(choices.includes(greedy.join('')), greedy.join(''));
    for (const bad of [[], ['ok', ''], 'yes']) {
      await assert.rejects(c.complete('charlm', 'The ', { maxTokens: 5, guidedChoice: bad }),
        (e) => e instanceof BadRequestError && e.message.includes("'guided_choice'"));
    }
    const limits = (await c.connect()).limits;
    assert.deepEqual([limits.max_guided_choices, limits.max_guided_choice_chars], [64, 256]);
  });

  it('generate() with guidedRegex and guidedJson: the text matches, greedy or sampled; two guided forms refused', async () => {
    for (const seed of [1, 2]) {
      const done = await c.complete('charlm', 'The ', { maxTokens: 40, temperature: 1, seed, guidedRegex: '(cat|dog)s? [0-9]{2}' });
      assert.match(done.text, /^(cat|dog)s? [0-9]{2}$/);
      assert.equal(done.reason, 'stop');
    }
    const schema = { type: 'object', properties: { a: { enum: ['x', 'yy'] } }, required: ['a'] };
    for (const guidedJson of [schema, JSON.stringify(schema)]) {
      const done = await c.complete('charlm', 'The ', { maxTokens: 60, guidedJson });
      assert.equal(done.reason, 'stop');
      assert.ok(['x', 'yy'].includes(JSON.parse(done.text).a), done.text);
    }
    await assert.rejects(c.complete('charlm', 'The ', { maxTokens: 5, guidedRegex: 'a', guidedChoice: ['a'] }),
      (e) => e instanceof BadRequestError && e.message.includes("'guided_regex'") && e.message.includes("'guided_choice'"));
    await assert.rejects(c.complete('charlm', 'The ', { maxTokens: 5, guidedRegex: '(' }),
      (e) => e instanceof BadRequestError && e.message.includes("'guided_regex'"));
    assert.equal((await c.connect()).limits.max_guided_pattern_chars, 16384);
  });

  it('generate() with logprobs: the same texts, each token\'s record as it arrives and in done', async () => {
    const plain = await c.complete('charlm', 'The ', { maxTokens: 20 });
    assert.equal(plain.logprobs, undefined);
    const gen = c.generate('charlm', 'The ', { maxTokens: 20, logprobs: 3 });
    assert.deepEqual(gen.logprobs, []);
    const texts = [];
    for await (const text of gen) {
      texts.push(text);
      assert.ok(gen.logprobs.length >= texts.length, 'records come with their tokens');
      assert.equal(gen.logprobs[texts.length - 1].text, text, 'the i-th record is the i-th text\'s');
    }
    assert.equal(texts.join(''), plain.text);
    assert.equal(gen.done.text, plain.text);
    assert.equal(gen.done.tokens, 20);
    assert.deepEqual(gen.done.logprobs, gen.logprobs);
    checkLogprobs(gen.done.logprobs, plain.text, 3, { greedy: true });
    const again = await c.complete('charlm', 'The ', { maxTokens: 20, logprobs: 3 });
    assert.deepEqual(again.logprobs, gen.done.logprobs, 'greedy: the same values');
    const zero = await c.complete('charlm', 'The ', { maxTokens: 20, logprobs: 0 });
    checkLogprobs(zero.logprobs, plain.text, 0, { greedy: true });
    assert.deepEqual(zero.logprobs.map((r) => r.logprob), again.logprobs.map((r) => r.logprob));
    checkLogprobs((await c.complete('charlm', 'The ', { maxTokens: 5, logprobs: 20 })).logprobs, plain.text.slice(0, 5), 20,
      { greedy: true });
    // sampled: a record per token too; a stop string cuts them with the text
    const opts = { maxTokens: 30, temperature: 1, topK: 5, seed: 42, logprobs: 2 };
    const free = await c.complete('charlm', 'a', opts);
    checkLogprobs(free.logprobs, free.text, 2, { greedy: false });
    const stop = free.text[5];
    const cut = await c.complete('charlm', 'a', { ...opts, stop });
    assert.equal(cut.reason, 'stop');
    assert.ok(free.text.startsWith(cut.text) && !cut.text.includes(stop));
    assert.deepEqual(cut.logprobs, free.logprobs.slice(0, cut.text.length));
    // over the server's max_logprobs: bad_request naming the field; true: refused before sending
    await assert.rejects(c.complete('charlm', 'x', { maxTokens: 3, logprobs: 21 }),
      (e) => e instanceof BadRequestError && e.message.includes("'logprobs'"));
    assert.throws(() => c.generate('charlm', 'x', { logprobs: true }), { name: 'TypeError', message: /logprobs must be an integer/ });
    assert.equal((await c.complete('charlm', 'x', { maxTokens: 3, logprobs: 1 })).tokens, 3, 'the connection goes on');
    assert.equal((await c.connect()).limits.max_logprobs, 20);
  });

  it('500 concurrent predicts and 4 generations share one socket without mix-ups', async () => {
    const connectsBefore = c.stats().connects;
    const xs = Array.from({ length: 500 }, (_, i) => i / 500);
    const reference = (await c.predict('linear', rowsOf(xs))).outputs.map((row) => row[0]);
    const gens = Array.from({ length: 4 }, (_, i) => c.complete('charlm', `P${i} `, { maxTokens: 30 }));
    const results = await Promise.all(xs.map((x) => c.predict('linear', [[x]])));
    results.forEach((r, i) => assert.ok(Math.abs(r.outputs[0][0] - reference[i]) < 1e-12, `row ${i}`));
    assert.equal(new Set(results.map((r) => r.id)).size, 500);
    const done = await Promise.all(gens);
    for (const d of done) assert.equal(d.tokens, 30);
    // generations of different prompts run concurrently but each gets its own greedy text
    const alone = await c.complete('charlm', 'P2 ', { maxTokens: 30 });
    assert.equal(done[2].text, alone.text);
    assert.equal(c.stats().connects, connectsBefore);
    assert.equal(c.stats().inflight, 0);
  });

  it('aborting a generation sends cancel; the server ends it with reason cancelled', async () => {
    const before = await cancelledCount(srv, 'charlm', 'generate');
    const ac = new AbortController();
    const gen = c.generate('charlm', 'The ', { maxTokens: 100000, signal: ac.signal });
    let n = 0;
    for await (const _ of gen) {
      if (++n === 10) ac.abort();
    }
    assert.equal(gen.done.reason, 'cancelled');
    assert.ok(gen.done.tokens >= 10 && gen.done.tokens < 100000, `tokens ${gen.done.tokens}`);
    assert.equal(typeof gen.done.timing.total_ms, 'number', 'timing comes from the server');
    assert.ok(await eventually(async () => (await cancelledCount(srv, 'charlm', 'generate')) === before + 1));
    assert.ok(await eventually(async () => (await inflightGauge(srv)) === 0));
  });

  it('breaking out of for await sends cancel, and the server stops the work', async () => {
    const before = await cancelledCount(srv, 'charlm', 'generate');
    const sentBefore = c.stats().cancelsSent;
    const gen = c.generate('charlm', 'The ', { maxTokens: 100000 });
    let n = 0;
    for await (const _ of gen) if (++n === 3) break;
    assert.equal(c.stats().cancelsSent, sentBefore + 1);
    const done = await gen.wait();
    assert.equal(done.reason, 'cancelled');
    assert.ok(done.tokens < 100000);
    assert.ok(await eventually(async () => (await cancelledCount(srv, 'charlm', 'generate')) === before + 1));
    assert.ok(await eventually(async () => (await inflightGauge(srv)) === 0));
  });

  it('a signal aborted before the call sends nothing', async () => {
    const ac = new AbortController();
    ac.abort();
    const sentBefore = c.stats().requestsSent;
    const gen = c.generate('charlm', 'The ', { maxTokens: 10, signal: ac.signal });
    assert.deepEqual(await collect(gen), []);
    assert.equal(gen.done.reason, 'cancelled');
    assert.equal(gen.done.tokens, 0);
    await assert.rejects(c.predict('linear', [[1]], { signal: ac.signal }), (e) => {
      assert.ok(e instanceof RequestCancelled);
      assert.equal(e.code, 'cancelled');
      assert.equal(e.frame, null, 'a local cancellation has no server frame');
      return true;
    });
    assert.equal(c.stats().requestsSent, sentBefore);
  });

  it('server errors arrive as classes carrying the wire code; the connection survives', async () => {
    const check = async (promise, Cls, code, fragment) => {
      await assert.rejects(promise, (e) => {
        assert.ok(e instanceof Cls, `${e?.name} is not ${Cls.name}: ${e?.message}`);
        assert.ok(e instanceof WsserveError);
        assert.ok(e instanceof Error);
        assert.equal(e.code, code);
        assert.equal(e.name, Cls.name);
        assert.ok(e.requestId !== null, 'carries the request id');
        assert.equal(e.frame?.type, 'error');
        if (fragment) assert.match(e.message, fragment);
        return true;
      });
    };
    await check(c.predict('linaer', [[1]]), UnknownModelError, 'unknown_model', /linaer/);
    await check(c.predict('linear', [[1, 2]]), InvalidInput, 'invalid_input');
    await check(c.predict('linear', [[Number.NaN]]), InvalidInput, 'invalid_input');
    await check(c.predict('linear', []), InvalidInput, 'invalid_input');
    await check(c.predict('linear', [[1]], { priority: 7 }), BadRequestError, 'bad_request', /priority/);
    await check(c.predict('charlm', [[1]]), BadRequestError, 'bad_request');
    await check(c.complete('linear', 'x'), BadRequestError, 'bad_request');
    await check(c.complete('charlm', 'x', { maxTokens: 0 }), BadRequestError, 'bad_request', /max_tokens/);
    // a stream's error is thrown by the iteration
    await check(collect(c.predictStream('nope', [[1]])), UnknownModelError, 'unknown_model');
    assert.ok((await c.ping()) > 0);
    assert.equal(c.stats().connects, 1);
  });

  it('a request over max_message_bytes is refused locally with RequestTooLarge', async () => {
    const sentBefore = c.stats().requestsSent;
    const big = Array.from({ length: 200_000 }, (_, i) => [i / 200_000 + 0.123456789]);
    await assert.rejects(c.predict('linear', big), (e) => e instanceof RequestTooLarge && e.code === null);
    assert.equal(c.stats().requestsSent, sentBefore);
    assert.equal(c.stats().inflight, 0, 'the slot was given back');
    assert.ok((await c.ping()) > 0, 'the connection is still open');
  });

  it('the error classes cover every wire code the server defines', async () => {
    const { stdout } = await run(PYTHON, ['-c', 'import json; from wsserve.errors import ERROR_CODES; print(json.dumps(ERROR_CODES))'], { cwd: REPO_ROOT });
    const codes = JSON.parse(stdout);
    assert.ok(codes.length >= 12);
    for (const code of codes) {
      const Cls = ERROR_CLASSES[code];
      assert.ok(Cls, `no class for ${code}`);
      const e = errorFromFrame({ type: 'error', id: 5, code, message: 'm', retry_after_ms: 25 });
      assert.ok(e instanceof Cls && e instanceof WsserveError);
      assert.equal(e.code, code);
      assert.equal(e.requestId, 5);
      assert.equal(e.retryAfterMs, 25);
      assert.equal(e.message, 'm');
    }
    const unknown = errorFromFrame({ type: 'error', id: null, code: 'brand_new', message: 'x' });
    assert.equal(unknown.constructor, WsserveError);
    assert.equal(unknown.code, 'brand_new');
    assert.ok(new ClientClosed('x') instanceof ConnectionLost);
  });

  it('close() fails unfinished calls with ClientClosed and the server cancels them', async () => {
    const c2 = new Client(srv.url);
    const before = await cancelledCount(srv, 'charlm', 'generate');
    const gen = c2.generate('charlm', 'The ', { maxTokens: 100000 });
    const it = gen[Symbol.asyncIterator]();
    await it.next();
    await c2.close();
    await assert.rejects(collect(gen), ClientClosed);
    await assert.rejects(c2.predict('linear', [[1]]), ClientClosed);
    assert.equal(c2.state, 'closed');
    assert.ok(await eventually(async () => (await cancelledCount(srv, 'charlm', 'generate')) === before + 1));
    assert.ok(await eventually(async () => (await inflightGauge(srv)) === 0));
  });

  it('a call with an unknown option is refused before anything is sent or even connected', async () => {
    const fresh = new Client(srv.url);
    try {
      for (const ep of OPTION_ENTRY_POINTS) {
        const { error } = await failureOf(() => ep.call(fresh, { [ep.typo]: 1 }));
        assert.ok(error instanceof TypeError, `${ep.where}: ${error}`);
      }
      assert.equal(fresh.state, 'idle', 'no connection was opened');
      const { connects, requestsSent, inflight, waiting } = fresh.stats();
      assert.deepEqual({ connects, requestsSent, inflight, waiting }, { connects: 0, requestsSent: 0, inflight: 0, waiting: 0 });
      // the same client works once the options are right
      assert.equal((await fresh.predict('linear', [[0.5]], { timeoutMs: 5000 })).outputs.length, 1);
      assert.equal(fresh.stats().requestsSent, 1);
    } finally {
      await fresh.close();
    }
    // while a connection is open, a refused call sends nothing either
    const sentBefore = c.stats().requestsSent;
    for (const ep of OPTION_ENTRY_POINTS) await failureOf(() => ep.call(c, { [ep.typo]: 1 }));
    assert.equal(c.stats().requestsSent, sentBefore);
    assert.equal(c.stats().inflight, 0);
    assert.ok((await c.ping()) > 0);
  });

  it("uses the runtime's native WebSocket where there is one", async () => {
    const script = `
      const { Client } = await import(${JSON.stringify(pathToFileURL(CLIENT_SRC).href)});
      const c = new Client(${JSON.stringify(srv.url)});
      const r = await c.predict('linear', [[0.5]]);
      const g = await c.complete('charlm', 'The ', { maxTokens: 5 });
      console.log(JSON.stringify({ native: typeof WebSocket, y: r.outputs[0][0], text: g.text }));
      await c.close();`;
    const { stdout } = await run(process.execPath, ['--experimental-websocket', '--input-type=module', '-e', script], { timeout: 30_000 });
    const out = JSON.parse(stdout.trim().split('\n').pop());
    assert.equal(out.native, 'function');
    const expected = await c.predict('linear', [[0.5]]);
    assert.equal(out.y, expected.outputs[0][0]);
    assert.equal(out.text, (await c.complete('charlm', 'The ', { maxTokens: 5 })).text);
  });
});

describe('limits, deadlines and retry', { timeout: 120_000 }, () => {
  // A 300 ms batching window keeps requests queued long enough to observe them.
  let srv;
  before(async () => { srv = await startServer(['--max-delay-ms', '300', '--max-inflight', '4', '--max-queue-rows', '16']); });
  after(async () => { await srv?.stop(); });

  it("never has more than the server's max_inflight outstanding; the rest wait instead of failing", async () => {
    const c = new Client(srv.url);
    try {
      await c.connect();
      assert.equal(c.stats().capacity, 4);
      let maxInflight = 0;
      let maxWaiting = 0;
      const sampler = setInterval(() => {
        maxInflight = Math.max(maxInflight, c.stats().inflight);
        maxWaiting = Math.max(maxWaiting, c.stats().waiting);
      }, 5);
      const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => c.predict('linear', [[i / 12]])));
      clearInterval(sampler);
      assert.deepEqual(results.map((r) => r.status), Array(12).fill('fulfilled'));
      assert.equal(maxInflight, 4);
      assert.ok(maxWaiting >= 1, 'some calls waited for a slot');
    } finally {
      await c.close();
    }
  });

  it('aborting a queued predict cancels it on the server before it runs', async () => {
    const c = new Client(srv.url);
    try {
      const before = await cancelledCount(srv, 'linear', 'predict');
      const ac = new AbortController();
      const p = c.predict('linear', [[0.5]], { signal: ac.signal });
      // abort once it is on the wire (the server holds it in its 300 ms batching window)
      assert.ok(await eventually(() => c.stats().requestsSent === 1), 'the predict was sent');
      ac.abort();
      await assert.rejects(p, (e) => {
        assert.ok(e instanceof RequestCancelled);
        assert.equal(e.code, 'cancelled');
        assert.equal(e.frame?.code, 'cancelled', "the server's own terminal frame");
        assert.equal(typeof e.requestId, 'number');
        return true;
      });
      assert.ok(await eventually(async () => (await cancelledCount(srv, 'linear', 'predict')) === before + 1));
      assert.equal(c.stats().serverCancelled, 1);
    } finally {
      await c.close();
    }
  });

  it('timeoutMs becomes the server deadline (DeadlineExceeded)', async () => {
    const c = new Client(srv.url);
    try {
      await assert.rejects(c.predict('linear', [[0.5]], { timeoutMs: 50 }), (e) => {
        assert.ok(e instanceof DeadlineExceeded);
        assert.equal(e.code, 'deadline_exceeded');
        assert.equal(e.frame?.code, 'deadline_exceeded');
        return true;
      });
    } finally {
      await c.close();
    }
  });

  it('overloaded carries retryAfterMs; the opt-in retry honours it and succeeds', async () => {
    const rows = Array.from({ length: 12 }, (_, i) => [i / 12]);
    const plain = new Client(srv.url);
    const retrying = new Client(srv.url, { retry: { maxAttempts: 10 } });
    try {
      const [a, b] = await Promise.allSettled([plain.predict('linear', rows), plain.predict('linear', rows)]);
      assert.equal(a.status, 'fulfilled');
      assert.equal(b.status, 'rejected');
      assert.ok(b.reason instanceof OverloadedError, b.reason?.message);
      assert.equal(b.reason.code, 'overloaded');
      assert.ok(b.reason.retryAfterMs > 0);
      const both = await Promise.all([retrying.predict('linear', rows), retrying.predict('linear', rows)]);
      assert.deepEqual(both[0].outputs, both[1].outputs);
    } finally {
      await plain.close();
      await retrying.close();
    }
  });
});

describe('authentication', { timeout: 120_000 }, () => {
  let srv;
  before(async () => { srv = await startServer(['--api-key', 'sekrit-key']); });
  after(async () => { await srv?.stop(); });

  it('calls without a token are refused with Unauthorized', async () => {
    const c = new Client(srv.url);
    try {
      await assert.rejects(c.predict('linear', [[1]]), (e) => e instanceof Unauthorized && e.code === 'unauthorized');
    } finally {
      await c.close();
    }
  });

  it('a wrong token fails connect() at once, without retries', async () => {
    const c = new Client(srv.url, { token: 'wrong' });
    let retries = 0;
    c.addEventListener('reconnecting', () => retries++);
    try {
      await assert.rejects(c.connect(), Unauthorized);
      assert.equal(retries, 0);
    } finally {
      await c.close();
    }
  });

  it('the right token authenticates in-band (as browsers must)', async () => {
    const c = new Client(srv.url, { token: 'sekrit-key' });
    try {
      const r = await c.predict('linear', [[0.5]]);
      assert.equal(r.outputs.length, 1);
      assert.ok((await c.models()).length >= 1);
    } finally {
      await c.close();
    }
  });
});

describe('connection loss, heartbeat and reconnect', { timeout: 180_000 }, () => {
  let srv;
  before(async () => { srv = await startServer(); });
  after(async () => { await srv?.stop('SIGKILL'); });

  it('a killed server fails unfinished calls with ConnectionLost; a new call reconnects once it is back', async () => {
    const c = new Client(srv.url, { reconnect: { maxAttempts: 200, baseDelayMs: 50, maxDelayMs: 300 } });
    const events = [];
    for (const t of ['open', 'close', 'reconnecting']) c.addEventListener(t, () => events.push(t));
    try {
      const gen = c.generate('charlm', 'The ', { maxTokens: 100000 });
      const it = gen[Symbol.asyncIterator]();
      await it.next();
      await srv.stop('SIGKILL');
      await assert.rejects(collect(gen), (e) => e instanceof ConnectionLost && !(e instanceof ClientClosed));
      assert.ok(events.includes('close'));
      assert.equal(c.state, 'idle');
      assert.equal(c.stats().inflight, 0);

      const pending = c.predict('linear', [[0.5]]); // issued while the server is down
      assert.ok(await eventually(() => events.includes('reconnecting')), 'it backs off while the server is down');
      srv = await startServer([], { port: srv.port });
      const r = await pending;
      assert.equal(r.outputs.length, 1);
      assert.equal(events.filter((e) => e === 'open').length, 2);
      assert.equal(c.stats().connects, 2);
    } finally {
      await c.close();
    }
  });

  it('a server that stops answering is detected by the heartbeat; calls fail, then reconnect', async () => {
    const c = new Client(srv.url, { heartbeatMs: 100, heartbeatTimeoutMs: 400 });
    try {
      await c.connect();
      srv.proc.kill('SIGSTOP');
      let resumed = false;
      try {
        // Only the heartbeat can end this call (the stopped server never answers nor closes);
        // without it the call hangs until the suite's 180 s watchdog.
        await assert.rejects(c.predict('linear', [[0.5]]), (e) => {
          assert.ok(e instanceof ConnectionLost, e?.message);
          assert.match(e.message, /heartbeat/);
          return true;
        });
      } finally {
        srv.proc.kill('SIGCONT');
        resumed = true;
      }
      assert.ok(resumed);
      const r = await c.predict('linear', [[0.5]]);
      assert.equal(r.outputs.length, 1);
      assert.equal(c.stats().connects, 2);
    } finally {
      await c.close();
    }
  });

  it('on SIGTERM the client sees draining and shutting_down; without reconnect a lost connection stays lost', async () => {
    const c = new Client(srv.url, { reconnect: false });
    try {
      await c.connect();
      const draining = new Promise((resolve) => c.addEventListener('draining', (ev) => resolve(ev.detail), { once: true }));
      const closed = new Promise((resolve) => c.addEventListener('close', (ev) => resolve(ev.detail), { once: true }));
      const ac = new AbortController();
      const gen = c.generate('charlm', 'The ', { maxTokens: 100000, signal: ac.signal });
      await gen[Symbol.asyncIterator]().next();
      const stopped = srv.stop('SIGTERM');
      const frame = await draining;
      assert.equal(frame.type, 'draining');
      assert.ok(c.draining);
      await assert.rejects(c.predict('linear', [[1]]), ShuttingDown);
      ac.abort(); // the last unfinished request ends, so the server closes the connection
      assert.equal((await gen.wait()).reason, 'cancelled');
      const info = await closed;
      assert.equal(info.code, 1001);
      await assert.rejects(c.predict('linear', [[1]]), (e) => e instanceof ConnectionLost && /reconnect is disabled/.test(e.message));
      assert.equal(await stopped, 0, 'the server exits with status 0');
    } finally {
      await c.close();
    }
  });
});

describe('aborted calls and failed connects', () => {
  it('a call with a signal aborted before it connects leaves no unhandled rejection when the connect fails', async () => {
    const unhandled = [];
    const onUnhandled = (reason) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const c = new Client('ws://127.0.0.1:1/', { reconnect: false, heartbeatMs: null });
    try {
      await assert.rejects(c.predict('linear', [[1]], { signal: AbortSignal.abort() }), RequestCancelled);
      await assert.rejects(c.ping({ signal: AbortSignal.abort() }), RequestCancelled);
      // The connection attempt these calls started fails (nothing listens on port 1) ...
      assert.ok(await eventually(() => c.state === 'idle'), 'the failed connection attempt ended');
      // ... and Node reports an unhandled rejection once the microtasks of that turn ran.
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(unhandled.map(String), []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await c.close();
    }
  });
});

describe('options are checked', () => {
  it('every options object refuses an unknown key, naming it and listing exactly the keys wsserve.d.ts declares', async () => {
    const dts = await readFile(CLIENT_TYPES, 'utf8');
    const c = new Client('ws://127.0.0.1:1/', { reconnect: false });
    try {
      for (const ep of OPTION_ENTRY_POINTS) {
        const { error, sync } = await failureOf(() => ep.call(c, { [ep.typo]: 1 }));
        assert.ok(error instanceof TypeError, `${ep.where}: expected a TypeError, got ${error}`);
        assert.equal(sync, ep.sync, `${ep.where}: ${ep.sync ? 'throws' : 'rejects'}`);
        assert.ok(error.message.startsWith(`${ep.where}: unknown option "${ep.typo}"; known options: `), error.message);
        const known = error.message.split('known options: ')[1].split(', ');
        assert.deepEqual([...known].sort(), declaredKeys(dts, ep.iface).sort(), `${ep.where} vs ${ep.iface}`);
        assert.ok(!known.includes(ep.typo));
      }
      assert.equal(c.stats().connects, 0);
    } finally {
      await c.close();
    }
  });

  it('names every unknown key at once, and keeps accepting every known one', async () => {
    assert.throws(() => new Client('ws://127.0.0.1:1/', { reconect: false, heartbeat: 5 }),
      { name: 'TypeError', message: /^Client options: unknown options "reconect", "heartbeat"; known options: token, / });
    const dts = await readFile(CLIENT_TYPES, 'utf8');
    const all = {
      token: 't', heartbeatMs: null, heartbeatTimeoutMs: 100, connectTimeoutMs: 100, maxInflight: 2,
      maxStreamBufferBytes: 1 << 20, closeTimeoutMs: 500, cancelTimeoutMs: 1000,
      reconnect: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 2, jitter: 0 },
      retry: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 2, jitter: 0, codes: ['overloaded'], maxRetryAfterMs: 1000 },
      WebSocket, protocols: ['wsserve.v1'],
    };
    assert.deepEqual(Object.keys(all).sort(), declaredKeys(dts, 'ClientOptions').sort());
    assert.deepEqual(Object.keys(all.reconnect).sort(), declaredKeys(dts, 'BackoffPolicy').sort());
    assert.deepEqual(Object.keys(all.retry).sort(), declaredKeys(dts, 'RetryPolicy').sort());
    const c = new Client('ws://127.0.0.1:1/', all);
    assert.equal(c.state, 'idle');
    await c.close();
    for (const reconnect of [true, false, undefined, null]) new Client('ws://127.0.0.1:1/', { reconnect, retry: reconnect });
    const e = new OverloadedError('busy', { requestId: 3, retryAfterMs: 20, frame: null, cause: 'x', code: 'overloaded' });
    assert.equal(e.retryAfterMs, 20);
  });

  it('refuses options that are not objects, and policies that are neither booleans nor objects', async () => {
    const c = new Client('ws://127.0.0.1:1/', { reconnect: false });
    try {
      for (const bad of [null, 5000, 'fast', ['signal']]) {
        assert.throws(() => new Client('ws://127.0.0.1:1/', bad), { name: 'TypeError', message: /^Client options must be an object, got / });
        assert.throws(() => c.generate('charlm', 'x', bad), { name: 'TypeError', message: /^generate\(\) options must be an object/ });
        await assert.rejects(c.predict('linear', [[1]], bad), { name: 'TypeError', message: /^predict\(\) options must be an object/ });
      }
      assert.throws(() => new Client('ws://127.0.0.1:1/', { reconnect: 'fast' }),
        { name: 'TypeError', message: 'Client option "reconnect" must be true, false or an object, got the string "fast"' });
      assert.throws(() => new Client('ws://127.0.0.1:1/', { retry: 3 }),
        { name: 'TypeError', message: 'Client option "retry" must be true, false or an object, got number 3' });
      assert.throws(() => new Client('ws://127.0.0.1:1/', { retry: { codes: 'overloaded' } }),
        { name: 'TypeError', message: /^retry\.codes must be an array of wire error codes/ });
      assert.equal(c.stats().connects, 0);
    } finally {
      await c.close();
    }
  });
});

describe('backoff arithmetic', () => {
  it('reconnect delay doubles up to the cap, jittered down by at most `jitter`', () => {
    const p = DEFAULT_RECONNECT;
    assert.equal(reconnectDelayMs(p, 0, 0), p.baseDelayMs);
    assert.equal(reconnectDelayMs(p, 1, 0), 2 * p.baseDelayMs);
    assert.equal(reconnectDelayMs(p, 30, 0), p.maxDelayMs);
    assert.equal(reconnectDelayMs(p, 0, 1), p.baseDelayMs * (1 - p.jitter));
  });

  it("retry delay never undercuts the server's retry_after_ms", () => {
    const p = DEFAULT_RETRY;
    assert.equal(retryDelayMs(p, 0, null, 0), p.baseDelayMs);
    assert.equal(retryDelayMs(p, 0, 5000, 0), 5000);
    assert.equal(retryDelayMs(p, 0, 5000, 1), 5000 * (1 + p.jitter));
    assert.equal(retryDelayMs(p, 20, null, 0), p.maxDelayMs);
  });

  it('rejects bad URLs and bad policies up front', () => {
    assert.throws(() => new Client('not a url'), TypeError);
    assert.throws(() => new Client('ftp://127.0.0.1/'), TypeError);
    assert.equal(new Client('http://127.0.0.1:1/').url, 'ws://127.0.0.1:1/');
    assert.throws(() => new Client('ws://127.0.0.1:1/', { reconnect: { maxAttempts: 0 } }), RangeError);
    assert.throws(() => new Client('ws://127.0.0.1:1/', { maxInflight: 0 }), RangeError);
  });
});
