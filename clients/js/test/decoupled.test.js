// A decoupled model (Triton's decoupled mode: any number of responses per request) through
// `Client.predictResponses`, against a real wsserve serving Triton's own square_model.py and
// two models of this test, on loopback. Run: `node --test test/decoupled.test.js` in clients/js.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, copyFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { Client, InvalidInput, RequestCancelled } from 'wsserve-client';
import { startServer, httpGet, metricSum, eventually, REPO_ROOT } from './helpers/server.js';

const DATA = path.join(REPO_ROOT, 'tests/data/triton_decoupled');
const DECOUPLED = 'backend: "python"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'
  + 'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
  + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n';
// IN responses (0, 1, ...), then an error response (INVALID_ARG), then FINAL.
const ERRS = `
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        n = int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])

        def run():
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(pb_utils.InferenceResponse(
                error=pb_utils.TritonError("went wrong", pb_utils.TritonError.INVALID_ARG)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
`;
// One response, then FINAL only once the request is cancelled.
const FOREVER = `
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        sender = requests[0].get_response_sender()

        def run():
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([7], np.int32))]))
            while not sender.is_cancelled():
                threading.Event().wait(0.01)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        threading.Thread(target=run, daemon=True).start()
`;

async function model(root, name, pbtxt, py) {
  await mkdir(path.join(root, name, '1'), { recursive: true });
  await writeFile(path.join(root, name, 'config.pbtxt'), pbtxt);
  await writeFile(path.join(root, name, '1', 'model.py'), py);
}

describe('decoupled models', () => {
  let srv;
  let dir;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'wsserve-decoupled-'));
    const root = path.join(dir, 'repo');
    await mkdir(path.join(root, 'square_int32', '1'), { recursive: true });
    await copyFile(path.join(DATA, 'square_config.pbtxt'), path.join(root, 'square_int32', 'config.pbtxt'));
    await copyFile(path.join(DATA, 'square_model.py'), path.join(root, 'square_int32', '1', 'model.py'));
    await model(root, 'errs', DECOUPLED, ERRS);
    await model(root, 'forever', DECOUPLED, FOREVER);
    srv = await startServer(['--models', 'none', '--model-repository', root]);
  });
  after(async () => {
    await srv?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('yields each response, then done with their count', async () => {
    const c = new Client(srv.url);
    try {
      const stream = c.predictResponses('square_int32', [[3]]);
      const got = [];
      for await (const r of stream) got.push(r);
      assert.deepEqual(got, [0, 1, 2].map((seq) => ({ seq, outputs: [[3]], final: false })));
      assert.equal(stream.done.responses, 3);
      assert.equal(stream.done.reason, 'complete');
      const none = c.predictResponses('square_int32', [[0]]);
      for await (const r of none) assert.fail(`no response expected, got ${JSON.stringify(r)}`);
      assert.equal(none.done.responses, 0);
    } finally {
      await c.close();
    }
  });

  it('binary: the inputs go as a tensor frame and each response comes back as a tensor', async () => {
    const c = new Client(srv.url);
    try {
      const stream = c.predictResponses('square_int32', { data: new Int32Array([3]), shape: [1, 1] }, { binary: true });
      const got = [];
      for await (const r of stream) got.push(r);
      assert.deepEqual(got.map((r) => r.seq), [0, 1, 2]);
      for (const r of got) {
        assert.equal(r.final, false);
        assert.ok(r.outputs.data instanceof Int32Array, 'a tensor in the model\'s own dtype, not JSON rows');
        assert.deepEqual([Array.from(r.outputs.data), r.outputs.shape, r.outputs.dtype], [[3], [1, 1], 'int32']);
      }
      assert.equal(stream.done.responses, 3);
      assert.equal(stream.done.reason, 'complete');
    } finally {
      await c.close();
    }
  });

  it('throws the error response after the responses before it', async () => {
    const c = new Client(srv.url);
    try {
      const seen = [];
      await assert.rejects(async () => {
        for await (const r of c.predictResponses('errs', [[2]])) seen.push(r.outputs);
      }, (e) => e instanceof InvalidInput && /model 'errs' failed: TritonError: went wrong/.test(e.message));
      assert.deepEqual(seen, [[[0]], [[1]]]);
    } finally {
      await c.close();
    }
  });

  it('cancel ends a request never sent FINAL; nothing stays in flight', async () => {
    const c = new Client(srv.url);
    try {
      const stream = c.predictResponses('forever', [[0]]);
      const first = await stream.next();
      assert.deepEqual(first.value, { seq: 0, outputs: [[7]], final: false });
      stream.cancel();
      await assert.rejects(stream.next(), RequestCancelled);
      const idle = await eventually(async () => {
        const { text } = await httpGet(srv.httpUrl, '/metrics');
        return metricSum(text, 'wsserve_inflight_requests') === 0;
      });
      assert.ok(idle, 'the cancelled request is no longer in flight');
    } finally {
      await c.close();
    }
  });
});
