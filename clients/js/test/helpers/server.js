// Start and stop a real wsserve process on loopback for the tests.
//
// This mirrors tests/support/process.py (`ServerProcess`), the Python suites' launcher, on purpose:
// the server is started only through its CLI, exactly as there,
//   $PYTHON -m wsserve serve --host 127.0.0.1 --port 0 --loop auto ...args
// (cwd: the repository root; OPENBLAS_NUM_THREADS defaults to 1; `cacheDir` sets
// WSSERVE_CACHE_DIR), and it is ready when a stdout line matches the same pattern,
// `READY_LINE_PATTERN` = tests/support/process.py `READY_LINE`. test/server-helper.test.js fails when the
// two patterns differ, so change both together. Every started process is killed when the test
// process exits, whatever happens.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const PYTHON = process.env.PYTHON || 'python3';

/** The ready line's URL; the same regular expression as `READY_LINE` in tests/support/process.py. */
export const READY_LINE_PATTERN = String.raw`(wss?)://([0-9.]+|\[[0-9a-f:]+\]|localhost):(\d+)`;
const READY_LINE = new RegExp(READY_LINE_PATTERN);

/**
 * The server's address from one stdout line, as tests/support/process.py reads it, or null.
 * `url` is `scheme://host:port` (no path), `httpUrl` the same with http(s).
 * @param {string} line
 * @returns {{url: string, httpUrl: string, port: number} | null}
 */
export function parseReadyLine(line) {
  const m = READY_LINE.exec(line);
  if (!m) return null;
  const [, scheme, host, portText] = m;
  const port = Number(portText);
  const url = `${scheme}://${host}:${port}`;
  return { url, httpUrl: url.replace('ws', 'http'), port };
}

const live = new Set();
process.on('exit', () => {
  for (const p of live) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
});

/**
 * @param {string[]} [args] extra `wsserve serve` flags
 * @param {{port?: number, loop?: string, cacheDir?: string, env?: Record<string, string>, startTimeoutMs?: number}} [opts]
 * @returns {Promise<{url: string, httpUrl: string, port: number, cmd: string[], proc: import('node:child_process').ChildProcess,
 *                    log: () => string, stop: (signal?: string) => Promise<number|string|null>}>}
 *   rejects when the process exits, or prints no ready line within `startTimeoutMs` (it is killed then)
 */
export function startServer(args = [], { port = 0, loop = 'auto', cacheDir, env, startTimeoutMs = 180_000 } = {}) {
  const cmd = [PYTHON, '-m', 'wsserve', 'serve', '--host', '127.0.0.1', '--port', String(port), '--loop', loop, ...args];
  const fullEnv = { OPENBLAS_NUM_THREADS: '1', ...process.env };
  if (cacheDir !== undefined) fullEnv.WSSERVE_CACHE_DIR = cacheDir;
  Object.assign(fullEnv, env);
  const proc = spawn(cmd[0], cmd.slice(1), { cwd: REPO_ROOT, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let out = '';
  let err = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; if (err.length > 200_000) err = err.slice(-100_000); });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => { live.delete(proc); resolve(code ?? signal); }));
  // Whole lines only (a chunk may end inside the port number); read to the end so the
  // server never blocks on a full pipe.
  const lines = createInterface({ input: proc.stdout, crlfDelay: Infinity });

  return new Promise((resolve, reject) => {
    let ready = false;
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`wsserve did not print a ready line within ${startTimeoutMs} ms: ${cmd.join(' ')}\nstdout: ${out}\nstderr: ${err}`));
    }, startTimeoutMs);
    const onEarlyExit = (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`wsserve exited (${code ?? signal}) before it was ready: ${cmd.join(' ')}\nstdout: ${out}\nstderr: ${err}`));
    };
    proc.once('exit', onEarlyExit);
    lines.on('line', (line) => {
      out += `${line}\n`;
      if (out.length > 200_000) out = out.slice(-100_000);
      const where = ready ? null : parseReadyLine(line);
      if (!where) return;
      ready = true;
      clearTimeout(timer);
      proc.off('exit', onEarlyExit);
      resolve({
        ...where,
        cmd,
        proc,
        log: () => `${out}\n${err}`,
        /** Signal the process and wait for it to exit (SIGKILL after 15 s). */
        async stop(signal = 'SIGTERM') {
          if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode ?? proc.signalCode;
          proc.kill(signal);
          const killer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
          const code = await exited;
          clearTimeout(killer);
          return code;
        },
      });
    });
  });
}

/** GET a path of the server over HTTP; resolves with `{status, headers, text}`. */
export async function httpGet(base, pathname) {
  const res = await fetch(new URL(pathname, base));
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/**
 * Sum of the samples of a Prometheus counter whose labels include `labels`.
 * @param {string} text  `/metrics` body
 * @param {string} name  e.g. `wsserve_requests_total`
 * @param {Record<string, string>} labels
 */
export function metricSum(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = line.match(/^[^{ ]+(?:\{(.*)\})?\s+([^\s]+)/);
    if (!m) continue;
    const have = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[2]);
  }
  return sum;
}

/** Poll `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually(fn, { timeoutMs = 5000, intervalMs = 20 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
