// wsserve-client against a server of repository models: pinned versions, versions in results
// and models(), named tensors, and the admin calls load/unload/reload (with and without the
// admin key). The repository is written by tests/repo_models.py `write_client_repository`
// (the Python client's tests serve the same one): `adm` answers x·[1,2,3] + version,
// `gen` is a generative bigram model in versions 1 and 2, `two` takes and answers named tensors.
// Run: `npm test` (or `node --test test/repository.test.js`) in clients/js.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import {
  BadRequestError, Client, Forbidden, UnknownModelError, Unauthorized, WsserveError, ERROR_CLASSES,
} from 'wsserve-client';
import { startServer, eventually, PYTHON, REPO_ROOT } from './helpers/server.js';

const run = promisify(execFile);
const ADMIN = 'js-admin-key-123';
const ROWS = [[1, 2, 3], [0, 1, 0]];
const affine = (rows, bias) => rows.map((r) => [r[0] + 2 * r[1] + 3 * r[2] + bias]);

/** Run Python with the repository root on the path; its stdout parsed as JSON. */
async function python(code, ...args) {
  const { stdout } = await run(PYTHON, ['-c', code, ...args], { cwd: REPO_ROOT });
  return JSON.parse(stdout);
}

describe('repository models: versions, named tensors, admin calls', { timeout: 120_000 }, () => {
  let dir;
  let srv;
  let c;
  let greedy;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'wsserve-js-repo-'));
    greedy = await python(
      'import json, sys; from tests.repo_models import write_client_repository, bigram_greedy, CLIENT_GEN_SEEDS as S; '
      + 'write_client_repository(sys.argv[1]); print(json.dumps({v: bigram_greedy(s, "ab", 12) for v, s in S.items()}))',
      path.join(dir, 'repo'),
    );
    srv = await startServer(['--models', 'none', '--model-repository', path.join(dir, 'repo'), '--admin-key', ADMIN,
      '--log-level', 'warning']);
    c = new Client(srv.url);
  });
  after(async () => {
    await c?.close();
    await srv?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('predict pins a version as a string or an integer; every result says which one answered', async () => {
    const r = await c.predict('adm', ROWS);
    assert.equal(r.version, '10'); // the highest ready version, compared as a number
    assert.deepEqual(r.outputs, affine(ROWS, 10));
    for (const version of ['2', 2]) {
      const pinned = await c.predict('adm', ROWS, { version });
      assert.equal(pinned.version, '2');
      assert.deepEqual(pinned.outputs, affine(ROWS, 2));
    }
    const stream = c.predictStream('adm', ROWS, { version: 1, chunkRows: 1 });
    const chunks = [];
    for await (const chunk of stream) chunks.push(...chunk.outputs);
    assert.deepEqual(chunks, affine(ROWS, 1));
    assert.equal(stream.done.version, '1');
    await assert.rejects(c.predict('adm', ROWS, { version: 4 }),
      (e) => e instanceof UnknownModelError && e.message === "model 'adm' has no version '4'; available: 1, 2, 3, 10");
    await assert.rejects(c.predict('adm', ROWS, { version: '3' }),
      (e) => e instanceof UnknownModelError && /^version '3' of model 'adm' is failed \(.*holds no model file/.test(e.message));
  });

  it('a version that is neither a string nor an integer >= 1 is refused before sending', async () => {
    const sent = c.stats().requestsSent;
    for (const version of [true, 1.5, [2], { v: 1 }]) {
      await assert.rejects(c.predict('adm', ROWS, { version }), { name: 'TypeError', message: /^predict\(\): version must be a string or an integer, got / });
      assert.throws(() => c.generate('gen', 'ab', { version }), { name: 'TypeError', message: /^generate\(\): version must be/ });
    }
    assert.throws(() => c.predictStream('adm', ROWS, { version: 0 }), { name: 'RangeError', message: 'predictStream(): version must be an integer >= 1, got 0' });
    await assert.rejects(c.load('adm', { version: -1 }), RangeError);
    assert.equal(c.stats().requestsSent, sent);
  });

  it('generate and complete pin a version', async () => {
    const gen = c.generate('gen', 'ab', { maxTokens: 12 });
    let text = '';
    for await (const t of gen) text += t;
    assert.equal(text, greedy[2]);
    assert.equal(gen.done.version, '2');
    for (const version of [1, '1']) {
      const done = await c.complete('gen', 'ab', { maxTokens: 12, version });
      assert.deepEqual([done.text, done.version, done.reason], [greedy[1], '1', 'length']);
    }
    await assert.rejects(c.complete('gen', 'ab', { version: 5 }), UnknownModelError);
  });

  it('models() lists every version with its state', async () => {
    const models = Object.fromEntries((await c.models()).map((m) => [m.name, m]));
    assert.deepEqual(Object.keys(models).sort(), ['adm', 'bf', 'bfid', 'gen', 'pix', 'two']);
    assert.equal(models.adm.version, '10');
    assert.deepEqual(models.adm.versions.map((v) => [v.version, v.state]), [['1', 'ready'], ['2', 'ready'], ['3', 'failed'], ['10', 'ready']]);
    assert.match(models.adm.versions[2].reason, /holds no model file \(model\.onnx, model\.npz, model\.py\)$/);
    assert.deepEqual(models.gen.versions.map((v) => [v.version, v.state]), [['1', 'ready'], ['2', 'ready']]);
    // a loaded version also says what it is made of (bytes on disk, parameters, metrics); a failed one does not
    for (const v of models.adm.versions) assert.equal(typeof v.bytes === 'number', v.state === 'ready', v.version);
  });

  it('named inputs go as {name: rows}; named outputs come back by name', async () => {
    const inputs = { a: [[1, 2], [3, 4]], b: [[10], [-1]] };
    const r = await c.predict('two', inputs);
    assert.deepEqual(r.outputs, { sum: [[13], [6]], scaled: [[10, 20], [-3, -4]] });
    const chunks = [];
    for await (const chunk of c.predictStream('two', { a: new Array(new Float64Array([1, 2])), b: [[2]] })) chunks.push(chunk.outputs);
    assert.deepEqual(chunks, [{ sum: [[5]], scaled: [[2, 4]] }]);
    await assert.rejects(c.predict('two', { a: 'x' }), { name: 'TypeError', message: 'inputs.a must be an array of rows (number[][])' });
    await assert.rejects(c.predict('two', 7), { name: 'TypeError', message: 'inputs must be an array of rows (number[][]) or an object {name: rows}' });
  });

  it('uint8 and float16 tensors travel in their own dtype, in JSON and in binary frames', async () => {
    await c.ping();
    const { hello } = c;
    for (const d of ['uint8', 'float16', 'uint64']) assert.ok(hello.binary_dtypes.includes(d), d);
    const json = await c.predict('pix', { image: [[0, 1, 128, 255]] });
    assert.deepEqual(json.outputs, { raw: [[0, 1, 128, 255]], half: [[0, 0.5, 64, 127.5]] });
    const r = await c.predict('pix', { image: { data: new Uint8Array([0, 1, 128, 255]), shape: [1, 4], dtype: 'uint8' } },
      { binary: true });
    assert.equal(r.outputs.raw.dtype, 'uint8');
    assert.ok(r.outputs.raw.data instanceof Uint8Array);
    assert.deepEqual(Array.from(r.outputs.raw.data), [0, 1, 128, 255]);
    assert.equal(r.outputs.half.dtype, 'float16');
    // half-precision bits: 0 -> 0x0000, 0.5 -> 0x3800, 64 -> 0x5400, 127.5 -> 0x57F8
    assert.deepEqual(Array.from(r.outputs.half.data), [0x0000, 0x3800, 0x5400, 0x57f8]);
    await assert.rejects(c.predict('pix', { image: [[0, 1, 2, 256]] }), (e) => e.code === 'invalid_input' && /uint8/.test(e.message));
  });

  it('a bfloat16 output in a binary answer comes widened to float32', async () => {
    // bf: y = bfloat16(2 * x); each value here is exact in bfloat16
    const x = [1.5, -2, 3.140625, 0, 256, -0.0078125];
    const r = await c.predict('bf', { data: new Float32Array(x), shape: [2, 3] }, { binary: true });
    assert.equal(r.outputs.dtype, 'float32');
    assert.ok(r.outputs.data instanceof Float32Array);
    assert.deepEqual(r.outputs.shape, [2, 3]);
    assert.deepEqual(Array.from(r.outputs.data), x.map((v) => 2 * v));
    const json = await c.predict('bf', [x.slice(0, 3), x.slice(3)]);
    assert.deepEqual(json.outputs.flat(), x.map((v) => 2 * v));
  });

  it('a bfloat16 input: float32 values rounded to it by the client, or its bits as they are', async () => {
    // bfid answers its bfloat16 input as it came. Ties go to the even neighbour (1 + 2**-8 -> 1,
    // 1 + 3 * 2**-8 -> 1 + 2**-6); ml_dtypes makes the same of these values: 0x3fc0 ... 0xc780
    const x = [1.5, 1.00390625, 1.01171875, -3.140625, 0.1, -65504];
    const want = [1.5, 1, 1.015625, -3.140625, 0.10009765625, -65536];
    const r = await c.predict('bfid', { data: new Float32Array(x), shape: [2, 3], dtype: 'bfloat16' }, { binary: true });
    assert.equal(r.outputs.dtype, 'float32');
    assert.deepEqual(r.outputs.shape, [2, 3]);
    assert.deepEqual(Array.from(r.outputs.data), want);
    const bits = new Uint16Array([0x3fc0, 0x3f80, 0x3f82, 0xc049, 0x3dcd, 0xc780]);
    const raw = await c.predict('bfid', { data: bits, shape: [2, 3], dtype: 'bfloat16' }, { binary: true });
    assert.deepEqual(Array.from(raw.outputs.data), want);
  });

  it('admin calls without the admin key reject with Forbidden, and change nothing', async () => {
    assert.equal(ERROR_CLASSES.forbidden, Forbidden);
    for (const op of ['load', 'unload', 'reload']) {
      await assert.rejects(c[op]('adm', { version: 1 }), (e) => {
        assert.ok(e instanceof Forbidden && e instanceof WsserveError, `${e?.name}: ${e?.message}`);
        assert.equal(e.code, 'forbidden');
        assert.equal(e.frame?.type, 'error');
        assert.ok(e.requestId !== null);
        assert.equal(e.message, `${op} needs the admin key (--admin-key), or loopback when no keys are configured`);
        return true;
      });
    }
    assert.equal((await c.predict('adm', ROWS)).version, '10');
    const wrong = new Client(srv.url, { token: 'not-the-admin-key', reconnect: false });
    await assert.rejects(wrong.connect(), (e) => e instanceof Unauthorized && e.code === 'unauthorized');
    await wrong.close();
  });

  it('the admin key (as token) unloads, loads and reloads', async () => {
    const admin = new Client(srv.url, { token: ADMIN });
    try {
      const unloaded = await admin.unload('adm', { version: 10 });
      assert.equal(unloaded.model, 'adm');
      assert.ok(['unloading', undefined].includes(unloaded.versions.find((v) => v.version === '10')?.state));
      const defaultIs = async (v) => (await admin.models()).find((m) => m.name === 'adm').version === v;
      assert.ok(await eventually(() => defaultIs('2'), { timeoutMs: 30_000 }), 'version 2 is the default once 10 is unloaded');
      assert.equal((await c.predict('adm', ROWS)).version, '2');
      const loaded = await admin.load('adm', { version: '10' });
      assert.deepEqual(Object.keys(loaded).sort(), ['model', 'versions']);
      assert.deepEqual(loaded.versions.map((v) => [v.version, v.state]), [['1', 'ready'], ['2', 'ready'], ['3', 'failed'], ['10', 'ready']]);
      assert.equal((await c.predict('adm', ROWS)).version, '10');
      const reloaded = await admin.reload('adm', { version: 10 });
      assert.equal(reloaded.versions.find((v) => v.version === '10').state, 'ready');
      const all = await admin.reload('adm'); // a failed version is reported, not thrown
      assert.deepEqual(all.versions.filter((v) => v.state === 'failed').map((v) => v.version), ['3']);
      await assert.rejects(admin.load('zzz'), (e) => e instanceof UnknownModelError && e.message === "no model named 'zzz' in the model repository");
      assert.deepEqual((await c.predict('adm', ROWS)).outputs, affine(ROWS, 10));
      // a load's config travels to the server (an object or JSON text) and is checked there
      for (const config of [{ max_batch_size: 4, colour: 'red' }, '{"max_batch_size": 4, "colour": "red"}']) {
        await assert.rejects(admin.load('adm', { config }),
          (e) => e instanceof BadRequestError && /not a valid Triton model configuration in JSON/.test(e.message), JSON.stringify(config));
      }
      for (const [config, got] of [[[1], 'an array'], [7, 'number 7'], [null, 'null']]) {
        await assert.rejects(admin.load('adm', { config }),
          { name: 'TypeError', message: `load(): config must be an object or a JSON string, got ${got}` });
      }
      await assert.rejects(admin.unload('adm', { config: '{}' }), { name: 'TypeError' }); // load only
      assert.deepEqual((await c.predict('adm', ROWS)).outputs, affine(ROWS, 10)); // still what it served
    } finally {
      await admin.close();
    }
  });
});
