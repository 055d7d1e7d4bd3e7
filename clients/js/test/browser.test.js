// End-to-end tests of the demo page in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) against a real wsserve on loopback, and the server's browser
// Origin policy (own origin by default, --allow-origin) as Chromium meets it.
// Screenshots are written to clients/js/test-artifacts/ (gitignored).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, mkdir, mkdtemp, writeFile, rm } from 'node:fs/promises';
import os from 'node:os';
import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import { Client } from 'wsserve-client';
import { startServer, httpGet, metricSum, eventually, REPO_ROOT } from './helpers/server.js';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../test-artifacts');
const LONG_GENERATION = 100_000_000; // tokens: hours at the measured rate, so only Cancel ends it
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

/** The page's compact number format (up to 6 significant digits); mirrors app.js `fmt`. */
const shown = (v) => (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-4) ? v.toExponential(4) : String(Number(v.toPrecision(6))));

describe('demo page in headless Chromium', { timeout: 300_000 }, () => {
  let srv;
  let browser;
  let page;
  let client; // an independent client in Node, to check what the page shows
  const pageErrors = [];

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
    await mkdir(ARTIFACTS, { recursive: true });
    // A generation long enough that Cancel always reaches the server first: at ~12k tokens/s
    // the default 100,000-token limit ends in ~8 s, and with the page's renderer and this
    // server sharing two cores, Playwright's click on Cancel has been seen to take seconds.
    srv = await startServer(['--max-tokens', String(LONG_GENERATION)]);
    client = new Client(srv.url);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
    // Every Content-Security-Policy violation of the page (an inline style attribute, a script
    // from elsewhere, ...), whatever Chromium logs for it.
    await page.addInitScript(() => {
      window.cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`);
      });
    });
  });

  after(async () => {
    await browser?.close();
    await client?.close();
    await srv?.stop();
  });

  it('GET / serves the page; /static/ serves its files with the right content types', async () => {
    const index = await httpGet(srv.httpUrl, '/');
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-type'), /^text\/html/);
    assert.match(index.text, /data-testid="predict-form"/);
    const expect = { 'app.js': /javascript/, 'style.css': /^text\/css/, 'wsserve.js': /javascript/ };
    for (const [name, ctype] of Object.entries(expect)) {
      const res = await httpGet(srv.httpUrl, `/static/${name}`);
      assert.equal(res.status, 200, name);
      assert.match(res.headers.get('content-type'), ctype, name);
    }
    // the page loads the one client source, not a copy
    const served = (await httpGet(srv.httpUrl, '/static/wsserve.js')).text;
    assert.equal(served, await readFile(path.join(REPO_ROOT, 'clients/js/src/wsserve.js'), 'utf8'));
  });

  it('connects and lists every model with its metadata', async () => {
    await page.goto(`${srv.httpUrl}/`);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
    assert.equal(await page.getAttribute('#conn-status', 'data-state'), 'open');
    const models = await client.models();
    for (const m of models) {
      const card = page.locator(`[data-testid="model-${m.name}"]`);
      const text = await card.innerText();
      assert.match(text, new RegExp(m.name));
      assert.ok(text.includes(`v${m.version}`), `${m.name} version`);
      assert.ok(text.includes(m.task), `${m.name} task`);
      assert.ok(text.includes(m.parameters.toLocaleString('en-US')), `${m.name} parameters`);
      assert.ok(text.includes(`[${m.input_shape.join(', ')}]`), `${m.name} input shape`);
    }
    const predictOptions = await page.$$eval('#predict-model option', (os) => os.map((o) => o.value));
    assert.ok(predictOptions.includes('linear') && predictOptions.includes('mlp') && !predictOptions.includes('charlm'));
    const genOptions = await page.$$eval('#gen-model option', (os) => os.map((o) => o.value));
    assert.deepEqual(genOptions, ['charlm']);
  });

  it('predict shows exactly the values the server computes', async () => {
    const xs = [0.25, 0.5, 0.875];
    await page.selectOption('#predict-model', 'linear');
    await page.fill('#predict-inputs', xs.join('\n'));
    await page.click('#predict-run');
    await page.waitForSelector('#predict-result[data-state="ok"]');
    const cells = await page.$$eval('[data-testid="predict-value"]', (tds) =>
      tds.map((td) => ({ value: JSON.parse(td.dataset.value), text: td.textContent })));
    const expected = (await client.predict('linear', xs.map((x) => [x]))).outputs;
    assert.deepEqual(cells.map((c) => c.value), expected);
    cells.forEach((c, i) => assert.equal(c.text, shown(expected[i][0])));
    assert.match(await page.innerText('#predict-timing'), /batch\s+\d+/);

    // a classifier row: ten probabilities and the winning class
    const row = Array.from({ length: 32 }, (_, j) => Number((Math.cos(j) * 1.5).toFixed(3)));
    await page.selectOption('#predict-model', 'mlp');
    await page.fill('#predict-inputs', row.join(', '));
    await page.click('#predict-run');
    await page.waitForFunction(() => document.querySelector('[data-testid="predict-value"]')?.dataset.value.split(',').length === 10);
    const probs = JSON.parse(await page.getAttribute('[data-testid="predict-value"]', 'data-value'));
    const mlp = (await client.predict('mlp', [row])).outputs[0];
    assert.deepEqual(probs, mlp);
    const best = mlp.indexOf(Math.max(...mlp));
    assert.match(await page.innerText('#predict-output td.cls'), new RegExp(`^${best}\\b`));
  });

  it('explain draws the attributions of a predicted row as a bar chart', async () => {
    const rows = [
      Array.from({ length: 32 }, (_, j) => Number((Math.sin(j + 1) * 1.7).toFixed(3))),
      Array.from({ length: 32 }, (_, j) => Number((Math.cos(2 * j) * 1.2).toFixed(3))),
    ];
    await page.selectOption('#predict-model', 'mlp');
    assert.equal(await page.isEnabled('#predict-explain'), true);
    assert.match(await page.innerText('#predict-explain-hint'), /integrated gradients/);
    await page.fill('#predict-inputs', rows.map((r) => r.join(', ')).join('\n'));
    await page.check('#predict-explain');
    await page.click('#predict-run');
    await page.waitForSelector('#predict-result[data-state="ok"] [data-testid="explain-bar"]');
    const truth = await client.predict('mlp', rows, { explain: true });
    assert.deepEqual(truth.explanation, { method: 'integrated-gradients', baseline: 'zeros', target: 'argmax', steps: 128 });
    const bars = () => page.$$eval('[data-testid="explain-bar"]', (els) => els.map((e) => ({
      feature: Number(e.dataset.feature), value: JSON.parse(e.dataset.value), width: e.firstChild.style.width,
      neg: e.firstChild.classList.contains('neg') })));
    const expectBars = (attr) => {
      const order = attr.map((_, j) => j).sort((a, b) => Math.abs(attr[b]) - Math.abs(attr[a]) || a - b).slice(0, 12);
      return order.map((j) => ({ feature: j, value: attr[j] }));
    };
    // row 0: the twelve largest attributions, exactly the server's values (batching does not change them)
    let drawn = await bars();
    assert.deepEqual(drawn.map(({ feature, value }) => ({ feature, value })), expectBars(truth.attributions[0]));
    assert.equal(drawn[0].width, '50%'); // the largest bar spans half the track (the axis is in the middle)
    drawn.forEach((b) => assert.equal(b.neg, b.value < 0));
    const best = truth.outputs[0].indexOf(Math.max(...truth.outputs[0]));
    assert.match(await page.innerText('#explain-head'), new RegExp(`row 0 → class ${best} `));
    const sum = truth.attributions[0].reduce((a, b) => a + b, 0);
    assert.ok((await page.innerText('#explain-foot')).includes(`sum of all 32 = ${shown(sum)}`));
    // clicking the second row explains it
    await page.click('#predict-output tbody tr[data-row="1"]');
    await page.waitForSelector('#explain[data-row="1"]');
    drawn = await bars();
    assert.deepEqual(drawn.map(({ feature, value }) => ({ feature, value })), expectBars(truth.attributions[1]));
    await page.locator('#predict-card').screenshot({ path: path.join(ARTIFACTS, 'demo-explain.png') });

    // linear: one exact bar, w * x
    await page.selectOption('#predict-model', 'linear');
    await page.fill('#predict-inputs', '0.75');
    await page.check('#predict-explain');
    await page.click('#predict-run');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="explain-bar"]').length === 1
      && document.querySelector('#explain-head').textContent.includes('exact'));
    const lin = await client.predict('linear', [[0.75]], { explain: true });
    assert.deepEqual((await bars()).map(({ feature, value }) => ({ feature, value })), [{ feature: 0, value: lin.attributions[0][0] }]);
    // without the box ticked, no chart
    await page.uncheck('#predict-explain');
    await page.click('#predict-run');
    await page.waitForFunction(() => document.querySelector('#explain').hidden);
  });

  it('predict shows input mistakes and server errors with their code', async () => {
    await page.selectOption('#predict-model', 'linear');
    await page.fill('#predict-inputs', '0.5, 0.7');
    await page.click('#predict-run');
    await page.waitForSelector('#predict-result[data-state="error"]');
    assert.match(await page.innerText('#predict-error'), /invalid_input/);
    await page.fill('#predict-inputs', 'abc');
    await page.click('#predict-run');
    await page.waitForSelector('#predict-result[data-state="error"]');
    assert.match(await page.innerText('#predict-error'), /"abc" is not a number/);
  });

  it('generation text matches the server, token for token', async () => {
    const prompt = 'The ';
    await page.fill('#gen-prompt', prompt);
    await page.fill('#gen-max-tokens', '120');
    await page.fill('#gen-temperature', '0');
    await page.fill('#gen-seed', '');
    await page.click('#gen-start');
    await page.waitForSelector('#gen-box[data-state="done"]');
    const expected = await client.complete('charlm', prompt, { maxTokens: 120 });
    assert.equal(await page.textContent('#gen-output-text'), expected.text);
    assert.equal(await page.getAttribute('#gen-status', 'data-reason'), 'length');
    assert.equal(await page.getAttribute('#gen-box', 'data-tokens'), '120');
  });

  it('tokens appear while the generation runs, and Cancel stops it on the server', async () => {
    const before = metricSum((await httpGet(srv.httpUrl, '/metrics')).text, 'wsserve_requests_total',
      { model: 'charlm', type: 'generate', code: 'cancelled' });
    await page.fill('#gen-max-tokens', String(LONG_GENERATION));
    await page.fill('#gen-temperature', '0.8');
    await page.fill('#gen-seed', '11');
    await page.click('#gen-start');
    await page.waitForSelector('#gen-box[data-state="running"]');
    // watch the token count grow in several steps while it is still running
    const seen = new Set();
    const deadline = Date.now() + 20_000;
    while (seen.size < 3 && Date.now() < deadline) {
      const [state, tokens] = await page.evaluate(() => [
        document.querySelector('#gen-box').dataset.state, Number(document.querySelector('#gen-box').dataset.tokens)]);
      if (state !== 'running') break;
      if (tokens > 0) seen.add(tokens);
      await page.waitForTimeout(15);
    }
    assert.ok(seen.size >= 3, `saw the token count change only ${seen.size} times while running`);
    assert.equal(await page.getAttribute('#gen-box', 'data-state'), 'running');
    assert.equal(await page.isEnabled('#gen-cancel'), true);
    await page.click('#gen-cancel');
    await page.waitForSelector('#gen-box[data-state="done"]');
    assert.equal(await page.getAttribute('#gen-status', 'data-reason'), 'cancelled');
    const shownTokens = Number(await page.getAttribute('#gen-box', 'data-tokens'));
    assert.ok(shownTokens > 0 && shownTokens < LONG_GENERATION, `tokens ${shownTokens}`);
    assert.equal((await page.textContent('#gen-output-text')).length > 0, true);
    assert.ok(await eventually(async () => metricSum((await httpGet(srv.httpUrl, '/metrics')).text, 'wsserve_requests_total',
      { model: 'charlm', type: 'generate', code: 'cancelled' }) === before + 1), 'the server counted one cancelled generation');
    assert.equal(await page.isEnabled('#gen-start'), true);
  });

  it('a long generation keeps only the latest text on the page', async () => {
    // The output box took every token for as long as the generation ran: with the server's
    // --max-tokens as large as here, the page grew without bound.
    const MAX_SHOWN_CHARS = 20_000; // app.js
    await page.fill('#gen-max-tokens', String(LONG_GENERATION));
    await page.fill('#gen-temperature', '0.8');
    await page.fill('#gen-seed', '5');
    await page.click('#gen-start');
    await page.waitForFunction((max) => Number(document.querySelector('#gen-box').dataset.tokens) > 3 * max,
      MAX_SHOWN_CHARS, { timeout: 120_000 });
    const [length, dropped] = await page.evaluate(() => [
      document.querySelector('#gen-output-text').textContent.length, Number(document.querySelector('#gen-box').dataset.dropped)]);
    assert.ok(length <= 2 * MAX_SHOWN_CHARS, `${length} characters shown`);
    assert.ok(dropped > 0, `dropped ${dropped}`);
    assert.equal(await page.textContent('#gen-output-prompt'), '…');
    await page.click('#gen-cancel');
    // the tokens already on their way are read first (a hang detector, as above, not a time bound)
    await page.waitForSelector('#gen-box[data-state="done"]', { timeout: 120_000 });
    assert.equal(await page.getAttribute('#gen-status', 'data-reason'), 'cancelled');
  });

  it("the live chart tracks the page's own traffic", async () => {
    await page.click('#burst');
    await page.waitForFunction(() => /200\/200/.test(document.querySelector('#burst-note').textContent), null, { timeout: 30_000 });
    await page.waitForTimeout(700); // let the chart redraw
    const total = Number((await page.textContent('#stat-total')).replace(/,/g, ''));
    assert.ok(total >= 200 + 5, `total ${total}`);
    assert.match(await page.textContent('#stat-p50'), /ms|s$/);
    // the canvas has drawn dots and bars in the predict colour
    const painted = await page.evaluate(() => {
      const cv = document.querySelector('#chart');
      const { data } = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height);
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n / (cv.width * cv.height);
    });
    assert.ok(painted > 0.005, `canvas painted fraction ${painted}`);
  });

  it('saves screenshots at desktop and phone width; nothing overflows at 390 px', async () => {
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo-desktop.png'), fullPage: true });
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    phone.on('pageerror', (e) => pageErrors.push(String(e)));
    try {
      await phone.goto(`${srv.httpUrl}/`);
      await phone.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
      await phone.click('#predict-run');
      await phone.waitForSelector('#predict-result[data-state="ok"]');
      await phone.fill('#gen-max-tokens', '160');
      await phone.click('#gen-start');
      await phone.waitForSelector('#gen-box[data-state="done"]');
      await phone.waitForTimeout(600);
      const widths = await phone.evaluate(() => ({ doc: document.documentElement.scrollWidth, view: window.innerWidth }));
      assert.ok(widths.doc <= widths.view, `horizontal overflow: ${widths.doc} > ${widths.view}`);
      await phone.screenshot({ path: path.join(ARTIFACTS, 'demo-phone.png'), fullPage: true });
    } finally {
      await phone.close();
    }
    const dark = await browser.newPage({ viewport: { width: 1280, height: 900 }, colorScheme: 'dark' });
    try {
      await dark.goto(`${srv.httpUrl}/`);
      await dark.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
      await dark.click('#predict-run');
      await dark.waitForSelector('#predict-result[data-state="ok"]');
      await dark.screenshot({ path: path.join(ARTIFACTS, 'demo-dark.png'), fullPage: true });
    } finally {
      await dark.close();
    }
    for (const f of ['demo-desktop.png', 'demo-phone.png', 'demo-dark.png']) {
      assert.ok((await readFile(path.join(ARTIFACTS, f))).length > 10_000, f);
    }
  });

  it('shows the loss of the server and reconnects when it is back', async () => {
    await srv.stop('SIGKILL');
    await page.waitForFunction(() => document.querySelector('#conn-status').dataset.state !== 'open', null, { timeout: 15_000 });
    srv = await startServer([], { port: srv.port });
    await client.close();
    client = new Client(srv.url);
    await page.waitForFunction(() => document.querySelector('#conn-status').dataset.state === 'open', null, { timeout: 30_000 });
    await page.selectOption('#predict-model', 'linear');
    await page.fill('#predict-inputs', '0.5');
    await page.click('#predict-run');
    await page.waitForFunction(() => document.querySelector('#predict-result').dataset.state === 'ok'
      && document.querySelectorAll('[data-testid="predict-value"]').length === 1);
    const expected = (await client.predict('linear', [[0.5]])).outputs[0];
    assert.deepEqual(JSON.parse(await page.getAttribute('[data-testid="predict-value"]', 'data-value')), expected);
  });

  it('works under its own Content-Security-Policy: explain bars, generation and reconnects drew no violation', async () => {
    const res = await page.request.get(`${srv.httpUrl}/`);
    assert.match(res.headers()['content-security-policy'] ?? '', /script-src 'self'/);
    assert.equal(res.headers()['x-content-type-options'], 'nosniff');
    // the one page load that ran every test above
    assert.deepEqual(await page.evaluate(() => window.cspViolations), []);
  });

  it('raised no errors in the page', () => {
    // a refused socket while the server was down is logged by Chromium itself; anything else is a bug
    const real = pageErrors.filter((e) => !/WebSocket connection to .* failed/.test(e));
    assert.deepEqual(real, []);
  });
});

describe('browser Origin policy (headless Chromium)', { timeout: 300_000 }, () => {
  // Another site: a plain Node HTTP server on another loopback port serving a blank page and the
  // one client source, so its pages send `Origin: http://127.0.0.1:<its port>`, not the
  // server's own origin. (Loopback, so Chromium's local-network-access checks allow the
  // socket and only the server's Origin policy decides.) The server takes only its own
  // pages by default; `--allow-origin` widens that.
  let site;
  let siteOrigin;
  let own;
  let widened;
  let browser;
  let page;
  const consoleErrors = [];

  /** In the page: import the client from `modulePath`, predict once on `url`. */
  const predictFrom = (modulePath, url) => page.evaluate(async ([mod, wsUrl]) => {
    const { Client } = await import(mod);
    const c = new Client(wsUrl, { reconnect: false, heartbeatMs: null });
    try {
      const r = await c.predict('linear', [[0.5]]);
      return { origin: location.origin, ok: true, y: r.outputs[0][0] };
    } catch (e) {
      return { origin: location.origin, ok: false, name: e.name, message: e.message };
    } finally {
      await c.close();
    }
  }, [modulePath, url]);

  before(async () => {
    const clientSrc = await readFile(path.join(REPO_ROOT, 'clients/js/src/wsserve.js'), 'utf8');
    site = http.createServer((req, res) => {
      const js = req.url === '/wsserve.js';
      res.writeHead(200, { 'content-type': js ? 'text/javascript' : 'text/html' });
      res.end(js ? clientSrc : '<!doctype html><title>another site</title>');
    });
    await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
    siteOrigin = `http://127.0.0.1:${site.address().port}`;
    [own, widened] = await Promise.all([
      startServer(['--models', 'linear']),
      startServer(['--models', 'linear', '--allow-origin', siteOrigin]),
    ]);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    page = await browser.newPage();
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  });

  after(async () => {
    await browser?.close();
    await Promise.all([own?.stop(), widened?.stop()]);
    await new Promise((resolve) => (site ? site.close(resolve) : resolve()));
  });

  it("the server's own page connects by default", async () => {
    await page.goto(`${own.httpUrl}/`);
    const r = await predictFrom('/static/wsserve.js', own.url);
    assert.deepEqual(r, { origin: own.httpUrl, ok: true, y: r.y });
    assert.equal(typeof r.y, 'number');
  });

  it("another site's page is refused by default, with 403 at the handshake", async () => {
    await page.goto(`${siteOrigin}/`);
    consoleErrors.length = 0;
    const r = await predictFrom('/wsserve.js', own.url);
    assert.equal(r.origin, siteOrigin);
    assert.equal(r.ok, false);
    assert.equal(r.name, 'ConnectionLost', r.message);
    // Chromium logs why the handshake failed: the server answered 403, nothing else stopped it
    assert.ok(consoleErrors.some((e) => /Unexpected response code: 403/.test(e)), consoleErrors.join('\n'));
  });

  it('the same page is served once its origin is allowed with --allow-origin', async () => {
    await page.goto(`${siteOrigin}/`);
    consoleErrors.length = 0;
    const r = await predictFrom('/wsserve.js', widened.url);
    assert.equal(r.origin, siteOrigin);
    assert.equal(r.ok, true, r.message);
    assert.deepEqual(consoleErrors, []);
    const fromNode = new Client(own.url); // Node sends no Origin: not a browser, allowed
    try {
      assert.equal((await fromNode.predict('linear', [[0.5]])).outputs[0][0], r.y);
    } finally {
      await fromNode.close();
    }
  });
});

describe('demo page: text from a repository model is shown as text (headless Chromium)', { timeout: 300_000 }, () => {
  // A model.py controls its metrics (keys and values) and its exceptions' messages, which the
  // page shows: HTML in them must stay text (no element made, no handler run).
  const X = '<img src=x onerror="window.pwned=(window.pwned||[]).concat(1)">';
  const MODEL_PY = `
X = ${JSON.stringify(X)}

class Model:
    def __init__(self, version_dir):
        self.parameters = 2
        self.metrics = {X: X, "note": "<b>bold</b>" + X}

    def predict(self, batch):
        if (batch < 0).any():
            raise ValueError(X)
        return batch * 2
`;
  let dir;
  let srv;
  let browser;
  let page;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'wsserve-xss-'));
    await mkdir(path.join(dir, 'hostile', '1'), { recursive: true });
    await writeFile(path.join(dir, 'hostile', 'config.toml'), 'task = "regression"\ninput_shape = [1]\noutput_shape = [1]\n');
    await writeFile(path.join(dir, 'hostile', '1', 'model.py'), MODEL_PY);
    srv = await startServer(['--models', 'none', '--model-repository', dir]);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    page = await browser.newPage();
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("metrics and error messages appear literally; none of their markup becomes elements", async () => {
    await page.goto(`${srv.httpUrl}/`);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
    const card = page.locator('[data-testid="model-hostile"]');
    await card.locator('details.more summary').first().click();
    assert.ok((await card.innerText()).includes(X.replaceAll('_', ' ')), await card.innerText());
    assert.equal(await page.locator('#models img, #models b').count(), 0);

    await page.selectOption('#predict-model', 'hostile');
    await page.fill('#predict-inputs', '-1');
    await page.click('#predict-run');
    await page.waitForFunction(() => document.querySelector('#predict-result').dataset.state === 'error');
    const shown = await page.innerText('#predict-error');
    assert.ok(shown.length > 0);
    assert.equal(await page.locator('#predict-error img').count(), 0);
    assert.equal(await page.evaluate(() => window.pwned), undefined);
  });
});
