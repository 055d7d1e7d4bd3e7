// Start and stop a real wsserve process on loopback for the tests.
//
// `startServer(args)` spawns `$PYTHON -m wsserve serve --host 127.0.0.1 --port 0 ...args`
// from the repository root, waits for the `ws://` line on stdout and returns a handle.
// Every started process is killed when the test process exits, whatever happens.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const PYTHON = process.env.PYTHON || 'python3';

const live = new Set();
process.on('exit', () => {
  for (const p of live) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
});

/**
 * @param {string[]} [args] extra `wsserve serve` flags
 * @param {{port?: number, startTimeoutMs?: number}} [opts]
 * @returns {Promise<{url: string, httpUrl: string, port: number, proc: import('node:child_process').ChildProcess,
 *                    log: () => string, stop: (signal?: string) => Promise<number|null>}>}
 */
export function startServer(args = [], { port = 0, startTimeoutMs = 180_000 } = {}) {
  const proc = spawn(PYTHON, ['-m', 'wsserve', 'serve', '--host', '127.0.0.1', '--port', String(port), ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  let out = '';
  let err = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; if (err.length > 200_000) err = err.slice(-100_000); });
  proc.stdout.setEncoding('utf8');
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => { live.delete(proc); resolve(code ?? signal); }));

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`wsserve did not print a ws:// line within ${startTimeoutMs} ms\nstdout: ${out}\nstderr: ${err}`));
    }, startTimeoutMs);
    const onEarlyExit = (code) => {
      clearTimeout(timer);
      reject(new Error(`wsserve exited (${code}) before it was ready\nstdout: ${out}\nstderr: ${err}`));
    };
    proc.once('exit', onEarlyExit);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/ws:\/\/127\.0\.0\.1:(\d+)/);
      if (!m) return;
      clearTimeout(timer);
      proc.stdout.removeAllListeners('data');
      proc.stdout.resume(); // keep draining so the server never blocks on a full pipe
      proc.off('exit', onEarlyExit);
      const p = Number(m[1]);
      resolve({
        url: `ws://127.0.0.1:${p}/`,
        httpUrl: `http://127.0.0.1:${p}`,
        port: p,
        proc,
        log: () => `${out}\n${err}`,
        /** Signal the process and wait for it to exit (SIGKILL after 15 s). */
        async stop(signal = 'SIGTERM') {
          if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
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
