// Binary tensor frames through the JS client against a real wsserve on loopback: TypedArrays in and out.
// Run: `npm test` (or `node --test test/binary.test.js`) in clients/js.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import {
  Client, BadRequestError, InvalidInput, RequestTooLarge, encodeTensorFrame, decodeTensorFrame, splitAttributions, toTensor,
  TENSOR_DTYPES, float32ToBfloat16,
} from 'wsserve-client';
import { startServer, PYTHON, REPO_ROOT } from './helpers/server.js';

const run = promisify(execFile);

describe('binary tensor frames (codec)', () => {
  it('encodes the byte-level example of docs/PROTOCOL.md', () => {
    const frame = encodeTensorFrame({ type: 'predict', id: 1, model: 'm' }, toTensor({ data: new Float32Array([0.5, 1.0]), shape: [1, 2] }));
    const hex = Buffer.from(frame).toString('hex');
    assert.equal(hex.slice(0, 8), '4c000000'); // 76: 69 bytes of JSON + 7 spaces
    assert.equal(Buffer.from(frame.subarray(4, 73)).toString(), '{"type":"predict","id":1,"model":"m","dtype":"float32","shape":[1,2]}');
    assert.equal(Buffer.from(frame.subarray(73, 80)).toString(), '       ');
    assert.equal(hex.slice(160), '0000003f0000803f');
  });

  it('round-trips every dtype, named tensors included', () => {
    const tensors = {
      a: toTensor({ data: new Float64Array([1.5, -2]), shape: [2, 1] }),
      b: toTensor({ data: new Int32Array([7, 8]), shape: [2] }),
      c: toTensor({ data: new BigInt64Array([1n, -1n]), shape: [2, 1] }),
      d: toTensor({ data: new Uint8Array([1, 0]), shape: [2], dtype: 'bool' }),
      e: toTensor(new Float32Array([0.25, 4])),
    };
    assert.deepEqual(tensors.e.shape, [1, 2]);
    const reply = encodeTensorFrame({ type: 'result', id: 'x' }, tensors, 'outputs');
    assert.equal((4 + new DataView(reply.buffer).getUint32(0, true)) % 8, 0);
    const back = decodeTensorFrame(reply.buffer);
    assert.equal(back.type, 'result');
    for (const [name, t] of Object.entries(tensors)) {
      assert.deepEqual(back.outputs[name].shape, t.shape);
      assert.equal(back.outputs[name].dtype, t.dtype);
      assert.deepEqual(Array.from(back.outputs[name].data), Array.from(t.data));
      assert.ok(back.outputs[name].data instanceof TENSOR_DTYPES[t.dtype]);
    }
    assert.throws(() => decodeTensorFrame(reply.slice(0, reply.length - 1).buffer), /payload shorter|beyond/);
  });

  it('refuses a shape whose dimensions are not integers >= 0 (a negative one read the header as data)', () => {
    const frame = (header, payload = 0) => {
      const h = new TextEncoder().encode(JSON.stringify(header));
      const b = new Uint8Array(4 + h.length + payload);
      new DataView(b.buffer).setUint32(0, h.length, true);
      b.set(h, 4);
      return b;
    };
    const bad = {
      'two negative dimensions': frame({ type: 'result', id: 1, dtype: 'float32', shape: [-1, -1] }, 4),
      'a negative one, then one that reads back into the header': frame({ type: 'result', id: 1,
        outputs: [{ name: 'a', dtype: 'float32', shape: [-1] }, { name: 'b', dtype: 'float32', shape: [1] }] }),
      'a fraction': frame({ type: 'result', id: 1, dtype: 'float32', shape: [0.5, 2] }, 4),
      'a string': frame({ type: 'result', id: 1, dtype: 'float32', shape: ['1'] }, 4),
    };
    for (const [what, f] of Object.entries(bad)) assert.throws(() => decodeTensorFrame(f), /bad tensor/, what);
  });

  it('refuses a frame naming one output twice (the second replaced the first)', () => {
    const y = toTensor({ data: new Float32Array([1]), shape: [1] });
    const once = encodeTensorFrame({ type: 'result', id: 1 }, { y }, 'outputs');
    const n = new DataView(once.buffer, once.byteOffset).getUint32(0, true);
    const header = JSON.parse(Buffer.from(once.subarray(4, 4 + n)).toString());
    header.outputs = [header.outputs[0], header.outputs[0]];
    const h = new TextEncoder().encode(JSON.stringify(header));
    const twice = new Uint8Array(4 + h.length + 8);
    new DataView(twice.buffer).setUint32(0, h.length, true);
    twice.set(h, 4);
    assert.throws(() => decodeTensorFrame(twice), /"y" twice/);
  });

  it('rounds float32 values to bfloat16 as ml_dtypes does; a Uint16Array with dtype bfloat16 is its bits', async () => {
    // ml_dtypes (the server's) gives the expected bit patterns: random float32 patterns (NaNs,
    // infinities and subnormals among them) and the edges of rounding (ties, overflow, NaN payloads)
    const { stdout } = await run(PYTHON, ['-c', [
      'import json, numpy as np, ml_dtypes',
      'w = np.random.default_rng(16).integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)',
      'w = np.concatenate([w, np.array([0x7F7FFFFF, 0xFF7F8000, 0x7F7F7FFF, 0x3F808000, 0x3F818000, 0x7FC00000,'
        + ' 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0, 0x80000000, 0x8000, 0x18000, 1], np.uint32)])',
      'with np.errstate(invalid="ignore"): b = w.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)',
      'print(json.dumps([w.tolist(), b.tolist()]))',
    ].join('\n')], { cwd: REPO_ROOT, maxBuffer: 1 << 24 });
    const [words, want] = JSON.parse(stdout);
    const values = new Float32Array(new Uint32Array(words).buffer);
    assert.deepEqual(Array.from(float32ToBfloat16(values)), want);
    const t = toTensor({ data: values, shape: [words.length], dtype: 'bfloat16' });
    assert.ok(t.data instanceof Uint16Array && t.dtype === 'bfloat16');
    assert.deepEqual(Array.from(t.data), want);
    const bits = new Uint16Array([0x3fc0, 0x3f80]);
    assert.equal(toTensor({ data: bits, dtype: 'bfloat16' }).data, bits); // its bits as they are
    assert.throws(() => toTensor({ data: new Float64Array([1]), dtype: 'bfloat16' }), /Float64Array is not one of the wire dtypes/);
  });

  it('splits an explained answer into its output and its <output>_attributions tensor', () => {
    const out = toTensor({ data: new Float32Array([0.5, 1.5]), shape: [2, 1] });
    const attr = toTensor({ data: new Float64Array([0.25, -0.75]), shape: [2, 1] });
    const reply = encodeTensorFrame({ type: 'result', id: 1, explanation: { method: 'linear-exact' } },
      { y: out, y_attributions: attr }, 'outputs');
    const frame = decodeTensorFrame(reply);
    const [outputs, attributions] = splitAttributions(frame.outputs);
    assert.deepEqual(frame.explanation, { method: 'linear-exact' });
    assert.ok(outputs.data instanceof Float32Array && attributions.data instanceof Float64Array);
    assert.deepEqual([Array.from(outputs.data), outputs.shape], [[0.5, 1.5], [2, 1]]);
    assert.deepEqual([Array.from(attributions.data), attributions.shape, attributions.dtype], [[0.25, -0.75], [2, 1], 'float64']);
    // only that pair: other named outputs, or one tensor, stay as they are
    const other = { y: out, z_attributions: attr };
    assert.deepEqual(splitAttributions(other), [other, undefined]);
    assert.deepEqual(splitAttributions(out), [out, undefined]);
  });

  it('refuses tensors whose shape does not match their data', () => {
    assert.throws(() => toTensor({ data: new Float32Array(3), shape: [2, 2] }), TypeError);
    assert.throws(() => toTensor({ data: new Float32Array(2), shape: [0, 2] }), TypeError);
    // every wire dtype's TypedArray is taken (Int16Array is int16); others, or a dtype its data is not, are refused
    assert.equal(toTensor({ data: new Int16Array(2), shape: [1, 2] }).dtype, 'int16');
    assert.throws(() => toTensor({ data: new Uint8ClampedArray(2), shape: [1, 2] }), TypeError);
    assert.throws(() => toTensor({ data: new Float32Array(2), shape: [1, 2], dtype: 'float16' }), TypeError);
    assert.throws(() => toTensor([[1, 2]]), TypeError);
  });
});

describe('binary tensor frames against a real server', { timeout: 240_000 }, () => {
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

  it('predict({binary: true}) answers TypedArrays equal to the JSON answer', async () => {
    const width = (await c.models()).find((m) => m.name === 'mlp').input_shape[0];
    const x = new Float32Array(3 * width).map((_, i) => (i % 7) / 7);
    const rows = Array.from({ length: 3 }, (_, i) => Array.from(x.subarray(i * width, (i + 1) * width)));
    const want = await c.predict('mlp', rows);
    const got = await c.predict('mlp', { data: x, shape: [3, width] }, { binary: true });
    assert.equal(got.model, 'mlp');
    assert.equal(got.version, want.version);
    assert.ok(got.outputs.data instanceof Float64Array || got.outputs.data instanceof Float32Array);
    assert.deepEqual(got.outputs.shape, [3, want.outputs[0].length]);
    const flat = want.outputs.flat();
    got.outputs.data.forEach((v, i) => assert.ok(Math.abs(v - flat[i]) <= 1e-6 * Math.max(1, Math.abs(flat[i]))));
  });

  it('a bare Float64Array is one row; int inputs are cast like JSON', async () => {
    const want = await c.predict('linear', [[0.25]]);
    const one = await c.predict('linear', new Float64Array([0.25]), { binary: true });
    assert.deepEqual(Array.from(one.outputs.data), want.outputs.flat());
    const ints = await c.predict('linear', { data: new Int32Array([1, 2]), shape: [2, 1] }, { binary: true });
    const wantInts = await c.predict('linear', [[1], [2]]);
    assert.deepEqual(Array.from(ints.outputs.data), wantInts.outputs.flat());
  });

  it('predictStream({binary: true}) yields TypedArray chunks in order', async () => {
    const data = new Float64Array([0, 0.25, 0.5, 0.75, 1]);
    const want = await c.predict('linear', Array.from(data, (v) => [v]));
    const stream = c.predictStream('linear', { data, shape: [5, 1] }, { binary: true, chunkRows: 2 });
    const offsets = [];
    const values = [];
    for await (const chunk of stream) {
      offsets.push(chunk.offset);
      values.push(...chunk.outputs.data);
    }
    assert.deepEqual(offsets, [0, 2, 4]);
    assert.deepEqual(values, want.outputs.flat());
    assert.equal(stream.done.rows, 5);
  });

  it('predict({binary: true, explain: true}) answers the JSON attributions, bit for bit, as a Float64Array', async () => {
    const width = (await c.models()).find((m) => m.name === 'mlp').input_shape[0];
    const x = new Float32Array(3 * width).map((_, i) => ((i * 13) % 11) / 11 - 0.5);
    const rows = Array.from({ length: 3 }, (_, i) => Array.from(x.subarray(i * width, (i + 1) * width)));
    const want = await c.predict('mlp', rows, { explain: true });
    const got = await c.predict('mlp', { data: x, shape: [3, width] }, { binary: true, explain: true });
    assert.ok(got.attributions.data instanceof Float64Array);
    assert.deepEqual(got.attributions.shape, [3, width]);
    assert.deepEqual(Array.from(got.attributions.data), want.attributions.flat());
    assert.deepEqual(got.outputs.shape, [3, want.outputs[0].length]);
    assert.deepEqual(got.explanation, want.explanation);
    assert.equal(got.explanation.method, 'integrated-gradients');
    const plain = await c.predict('mlp', { data: x, shape: [3, width] }, { binary: true });
    assert.equal(plain.attributions, undefined);
    // streamed: each chunk its rows' attributions; done says how they were computed
    const stream = c.predictStream('mlp', { data: x, shape: [3, width] }, { binary: true, explain: true, chunkRows: 2 });
    const offsets = [];
    const values = [];
    for await (const chunk of stream) {
      offsets.push(chunk.offset);
      assert.deepEqual(chunk.attributions.shape, [chunk.outputs.shape[0], width]);
      values.push(...chunk.attributions.data);
    }
    assert.deepEqual(offsets, [0, 2]);
    assert.deepEqual(values, want.attributions.flat());
    assert.deepEqual(stream.done.explanation, want.explanation);
    await assert.rejects(c.predict('charlm', new Float64Array([1]), { binary: true, explain: true }),
      (e) => e instanceof BadRequestError && /'charlm'/.test(e.message));
  });

  it("a header over the server's max_binary_header_bytes is refused locally, unsent (its error could answer no call)", async () => {
    assert.equal((await c.connect()).limits.max_binary_header_bytes, 4096);
    // 20 named inputs with 250-character names: a header of about 6 KB, whose id the server cannot read
    const inputs = Object.fromEntries(Array.from({ length: 20 },
      (_, i) => [String(i).padStart(2, '0') + 'n'.repeat(248), { data: new Float64Array([0]), shape: [1, 1] }]));
    const sentBefore = c.stats().requestsSent;
    await assert.rejects(c.predict('linear', inputs, { binary: true, timeoutMs: 5000 }),
      (e) => e instanceof RequestTooLarge && /max_binary_header_bytes/.test(e.message));
    const stream = c.predictStream('linear', inputs, { binary: true, timeoutMs: 5000 });
    await assert.rejects(stream.wait(), RequestTooLarge);
    assert.equal(c.stats().requestsSent, sentBefore);
    assert.equal(c.stats().inflight, 0);
  });

  it('server refusals of binary frames reject with the wire error classes', async () => {
    await assert.rejects(c.predict('linear', new Float64Array([NaN]), { binary: true }), InvalidInput);
    await assert.rejects(c.predict('linear', { data: new Float64Array(2), shape: [1, 2] }, { binary: true }),
      (e) => e instanceof InvalidInput && /\[n, 1\]/.test(e.message));
    const ok = await c.predict('linear', new Float64Array([1]), { binary: true });
    assert.equal(ok.outputs.data.length, 1);
  });
});
