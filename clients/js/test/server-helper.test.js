// The JS tests' server launcher (helpers/server.js) must read the server's ready line exactly
// as the Python suites' launcher (tests/support/process.py) does, so the two cannot drift apart.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import { READY_LINE_PATTERN, parseReadyLine, PYTHON, REPO_ROOT } from './helpers/server.js';

const run = promisify(execFile);

const SAMPLES = [
  'wsserve 0.1.0 ready on ws://127.0.0.1:8765',
  'wsserve 0.1.0 ready on wss://127.0.0.1:443',
  'ready on ws://[::1]:9000 (IPv6)',
  'ready on ws://localhost:80',
  'wsserve 0.1.0 ready on ws://example.com:8765',
  'loading models from /tmp/cache',
  'http://127.0.0.1:8765',
];

/** What tests/support/process.py makes of each sample line: its `READY_LINE` pattern and matches. */
async function pythonView() {
  const script = [
    'import json, sys',
    'from tests.support import READY_LINE',
    'lines = json.loads(sys.argv[1])',
    'found = [(lambda m: [g.decode() for g in m.groups()] if m else None)(READY_LINE.search(l.encode())) for l in lines]',
    'print(json.dumps({"pattern": READY_LINE.pattern.decode(), "found": found}))',
  ].join('\n');
  const { stdout } = await run(PYTHON, ['-c', script, JSON.stringify(SAMPLES)], { cwd: REPO_ROOT });
  return JSON.parse(stdout);
}

describe('server launcher', () => {
  it('uses the ready-line pattern of tests/support/process.py, character for character', async () => {
    const py = await pythonView();
    assert.equal(READY_LINE_PATTERN, py.pattern,
      'tests/support/process.py READY_LINE changed: update READY_LINE_PATTERN in test/helpers/server.js to match');
  });

  it('reads the same scheme, host and port from every line as tests/support/process.py', async () => {
    const py = await pythonView();
    const js = SAMPLES.map((line) => {
      const r = parseReadyLine(line);
      return r && [r.url.split('://')[0], r.url.slice(r.url.indexOf('://') + 3, r.url.lastIndexOf(':')), String(r.port)];
    });
    assert.deepEqual(js, py.found);
    assert.ok(py.found.filter(Boolean).length >= 4 && py.found.includes(null), 'the samples cover matches and misses');
    assert.deepEqual(parseReadyLine(SAMPLES[1]), { url: 'wss://127.0.0.1:443', httpUrl: 'https://127.0.0.1:443', port: 443 });
  });
});
