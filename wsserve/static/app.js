// wsserve live demo page. Plain ES module, no build step, no third-party code.
// Uses the one client source (/static/wsserve.js → clients/js/src/wsserve.js).

import { Client } from './wsserve.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsUrl = params.get('ws') ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;

const client = new Client(wsUrl, {
  token: params.get('token') ?? undefined,
  heartbeatMs: 5000,
  heartbeatTimeoutMs: 5000,
  reconnect: { baseDelayMs: 200, maxDelayMs: 2000, maxAttempts: 3 },
});
// Exposed for curious developers (devtools) and for the end-to-end tests.
window.wsserveDemo = { client };

// ------------------------------------------------------------------ formatting

/** Compact display of a number: up to 6 significant digits. */
function fmt(v) {
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-4)) return v.toExponential(4);
  return String(Number(v.toPrecision(6)));
}
function fmtMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return '–';
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10000 ? 1 : 2)} s`;
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}
function fmtInt(n) { return Number(n).toLocaleString('en-US'); }
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function describeError(err) {
  const code = err?.code ? `${err.code}: ` : '';
  return `${code}${err?.message ?? err}`;
}

// ------------------------------------------------------------------ connection status

const statusPill = $('conn-status');
const connMeta = $('conn-meta');
let lastRtt = null;

function setStatus(state, label) {
  statusPill.dataset.state = state;
  statusPill.querySelector('.label').textContent = label;
}
function renderMeta() {
  const h = client.hello;
  const parts = [];
  if (h) parts.push(`${h.server ?? 'wsserve'} ${h.version ?? ''}`.trim());
  if (lastRtt != null) parts.push(`rtt ${fmtMs(lastRtt)}`);
  connMeta.textContent = parts.join(' · ');
}

client.addEventListener('open', () => {
  setStatus('open', 'connected');
  renderMeta();
  loadModels();
});
client.addEventListener('close', (ev) => {
  setStatus('lost', 'disconnected');
  connMeta.textContent = ev.detail?.error?.message ?? '';
});
client.addEventListener('reconnecting', (ev) => {
  setStatus('reconnecting', `reconnecting (try ${ev.detail.attempt + 1})`);
});
client.addEventListener('draining', () => setStatus('draining', 'server draining'));

// A ping every 2 s shows the round trip and, after a loss, drives reconnection.
async function heartbeatTick() {
  try {
    lastRtt = await client.ping();
    if (statusPill.dataset.state !== 'open' && client.state === 'open') setStatus('open', 'connected');
    renderMeta();
  } catch {
    if (client.state !== 'open') setStatus('lost', 'disconnected — retrying');
  }
}
setInterval(heartbeatTick, 2000);

// ------------------------------------------------------------------ models

let models = [];
const modelsList = $('models');

function isGenerative(m) {
  const task = String(m.task ?? '').toLowerCase();
  return /generat|language|lm\b|text/.test(task) || m.name === 'charlm';
}

const short = (v) => String(Number(v.toPrecision(3)));
const HEADLINE_METRICS = [
  ['heldout_accuracy', 'accuracy', (v) => `${(v * 100).toFixed(1)}%`],
  ['heldout_mse', 'test MSE', short],
  ['heldout_bpc', 'bits/char', short],
  ['heldout_loss', 'test loss', short],
  ['weight', 'weight', short],
  ['bias', 'bias', short],
  ['train_time_s', 'train time', (v) => fmtMs(v * 1000)],
];

function renderModels() {
  modelsList.replaceChildren();
  if (!models.length) {
    modelsList.append(el('li', { class: 'placeholder' }, 'No models served.'));
    return;
  }
  for (const m of models) {
    const gen = isGenerative(m);
    const metrics = m.metrics ?? {};
    const shape = (s) => (s ? `[${s.join(', ')}]` : '?');
    const facts = [
      el('span', { class: 'shape' }, shape(m.input_shape), el('span', { class: 'arrow' }, ' → '), shape(m.output_shape)),
    ];
    if (m.parameters !== undefined) facts.push(el('span', {}, `${fmtInt(m.parameters)} params`));
    if (m.layers) facts.push(el('span', {}, `layers ${m.layers.join('·')}`));
    if (m.vocab_size !== undefined) facts.push(el('span', {}, `vocab ${fmtInt(m.vocab_size)}`));
    if (m.context_len !== undefined) facts.push(el('span', {}, `context ${fmtInt(m.context_len)}`));

    const chips = el('div', { class: 'chips' });
    for (const [key, label, f] of HEADLINE_METRICS) {
      if (chips.childElementCount >= 3 || typeof metrics[key] !== 'number') continue;
      chips.append(el('div', { class: 'chip' }, el('span', { class: 'k' }, label), el('span', { class: 'v' }, f(metrics[key]))));
    }

    const all = el('dl', { class: 'kv' });
    for (const [k, v] of Object.entries(metrics)) {
      all.append(el('dt', {}, k.replaceAll('_', ' ')), el('dd', {}, typeof v === 'number' ? fmt(v) : typeof v === 'string' ? v : JSON.stringify(v)));
    }
    const details = el('details', { class: 'more' }, el('summary', {}, `all metrics (${Object.keys(metrics).length})`), all);
    const versions = renderVersions(m);

    const item = el('li', { class: 'model', 'data-testid': `model-${m.name}`, 'data-model': m.name },
      el('div', { class: 'model-top' },
        el('span', { class: 'model-name' }, m.name),
        el('span', { class: 'badges' },
          el('span', { class: gen ? 'badge gen' : 'badge' }, m.task ?? (gen ? 'generation' : 'predict')),
          el('span', { class: 'badge ver' }, `v${m.version}`))),
      el('div', { class: 'facts' }, ...facts));
    if (m.description) item.append(el('p', { class: 'desc' }, m.description));
    if (chips.childElementCount) item.append(chips);
    if (Object.keys(metrics).length) item.append(details);
    if (versions) item.append(versions);
    modelsList.append(item);
  }
}

/** A model's versions with their figures (bytes on disk, non-zero parameters, accuracy, compression). */
function renderVersions(m) {
  const vs = (m.versions ?? []).filter((v) => v.bytes !== undefined || v.compression);
  if (!vs.length) return null;
  const kb = (b) => (b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : `${(b / 1e3).toFixed(1)} kB`);
  const list = el('ul', { class: 'versions', 'data-testid': `versions-${m.name}` });
  for (const v of vs) {
    const c = v.compression;
    const parts = [`v${v.version}`, v.state];
    if (typeof v.bytes === 'number') parts.push(kb(v.bytes));
    if (typeof v.parameters_nonzero === 'number') parts.push(`${fmtInt(v.parameters_nonzero)} non-zero`);
    const acc = v.metrics?.heldout_accuracy;
    if (typeof acc === 'number') {
      const delta = typeof c?.heldout_accuracy_delta === 'number' ? ` (${c.heldout_accuracy_delta >= 0 ? '+' : ''}${(100 * c.heldout_accuracy_delta).toFixed(2)} pts)` : '';
      parts.push(`acc ${(100 * acc).toFixed(2)}%${delta}`);
    }
    if (c) {
      parts.push(c.method === 'prune' ? `pruned ${Math.round(100 * c.fraction)}% of v${c.source_version}` : `${c.method} of v${c.source_version}`);
      if (typeof c.latency_ratio_b256 === 'number') parts.push(`latency ×${c.latency_ratio_b256.toFixed(2)}`);
    }
    list.append(el('li', { 'data-version': v.version }, parts.join(' · ')));
  }
  return el('details', { class: 'more' }, el('summary', {}, `versions (${vs.length})`), list);
}

function fillSelect(select, names) {
  const keep = select.value;
  select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
  if (names.includes(keep)) select.value = keep;
}

async function loadModels() {
  try {
    models = await client.models();
  } catch (err) {
    modelsList.replaceChildren(el('li', { class: 'placeholder' }, `Could not load models — ${describeError(err)}`));
    return;
  }
  renderModels();
  const firstLoad = !$('predict-model').options.length;
  fillSelect($('predict-model'), models.filter((m) => !isGenerative(m)).map((m) => m.name));
  fillSelect($('gen-model'), models.filter(isGenerative).map((m) => m.name));
  updateShapeHint();
  if (firstLoad && !$('predict-inputs').value.trim()) fillRandomRows();
  document.body.dataset.ready = 'true';
}
$('models-refresh').addEventListener('click', loadModels);

// ------------------------------------------------------------------ predict

const predictModel = $('predict-model');
const predictInputs = $('predict-inputs');
const predictResult = $('predict-result');

function currentPredictModel() { return models.find((m) => m.name === predictModel.value); }

function updateShapeHint() {
  const m = currentPredictModel();
  $('predict-shape').textContent = m?.input_shape ? `· ${m.input_shape[0]} number${m.input_shape[0] === 1 ? '' : 's'} per row` : '';
  // "explain": true is offered for the models the server says it can explain (models[].explain)
  const box = $('predict-explain');
  box.disabled = !m?.explain;
  if (box.disabled) box.checked = false;
  $('predict-explain-hint').textContent = m?.explain ? `· ${EXPLAIN_METHODS[m.explain.method] ?? m.explain.method}`
    : m ? '· not available for this model' : '';
}

function randomRows(n = 3) {
  const m = currentPredictModel();
  const d = m?.input_shape?.[0] ?? 1;
  return Array.from({ length: n }, () => Array.from({ length: d }, () => Number(Math.random().toFixed(3))));
}
function fillRandomRows() {
  predictInputs.value = randomRows().map((r) => r.join(', ')).join('\n');
}
predictModel.addEventListener('change', () => { updateShapeHint(); fillRandomRows(); });
$('predict-random').addEventListener('click', fillRandomRows);

/**
 * Rows from the textarea: JSON (`[[0.5],[1]]` or `[0.5, 1]` for one row) or
 * one row per line with numbers separated by commas or spaces. Shape checks
 * are the server's job (its error message is shown as is).
 */
function parseInputs(text) {
  const t = text.trim();
  if (!t) throw new Error('enter at least one row of numbers');
  if (t.startsWith('[')) {
    const v = JSON.parse(t);
    return Array.isArray(v) && v.length && !Array.isArray(v[0]) ? [v] : v;
  }
  return t.split(/\n|;/).map((line) => line.trim()).filter(Boolean).map((line, i) =>
    line.split(/[\s,]+/).filter(Boolean).map((tok) => {
      const x = Number(tok);
      if (tok === '' || Number.isNaN(x)) throw new Error(`row ${i + 1}: "${tok}" is not a number`);
      return x;
    }));
}

// ------------------------------------------------------------------ explanations

const EXPLAIN_METHODS = { 'linear-exact': 'exact', 'integrated-gradients': 'integrated gradients' };
/** Features shown as bars (largest |attribution| first); the rest are summed on one line. */
const MAX_BARS = 12;

/**
 * The attributions of row `i` of an `explain: true` result as a horizontal bar chart: one bar per
 * feature (largest |attribution| first), right of the axis when the feature pushed the explained
 * output up from the baseline, left when it pulled it down.
 */
function renderExplain(rows, res, i, classifier) {
  const attr = res.attributions[i];
  const out = res.outputs[i];
  const how = res.explanation ?? {};
  const target = out.reduce((bi, v, j) => (v > out[bi] ? j : bi), 0);
  const total = attr.reduce((a, b) => a + b, 0);
  const order = attr.map((_, j) => j).sort((a, b) => Math.abs(attr[b]) - Math.abs(attr[a]) || a - b);
  const shown = order.slice(0, MAX_BARS);
  const scale = Math.max(...attr.map(Math.abs)) || 1;
  const bars = $('explain-bars');
  bars.replaceChildren();
  for (const j of shown) {
    const v = attr[j];
    const fill = el('span', { class: `bar-fill ${v < 0 ? 'neg' : 'pos'}` });
    fill.style.width = `${(50 * Math.abs(v)) / scale}%`; // CSSOM: the page's CSP refuses style attributes
    bars.append(
      el('span', { class: 'bar-label' }, `x${j} = ${fmt(rows[i][j])}`),
      el('span', { class: 'bar-track', 'data-testid': 'explain-bar', 'data-feature': j, 'data-value': JSON.stringify(v) }, fill),
      el('span', { class: 'bar-value' }, `${v > 0 ? '+' : ''}${fmt(v)}`));
  }
  bars.setAttribute('aria-label', `Attributions of row ${i}: ${shown.map((j) => `x${j} ${fmt(attr[j])}`).join(', ')}`);
  const what = classifier ? `class ${target} (p = ${fmt(out[target])})` : `output ${fmt(out[target])}`;
  const method = how.method === 'integrated-gradients'
    ? `integrated gradients, ${how.steps} steps from the all-zeros input`
    : how.method === 'linear-exact' ? 'exact: weight × (x − 0)' : String(how.method ?? '');
  $('explain-head').replaceChildren(`Why row ${i} → ${what}`, el('span', { class: 'how' }, method));
  const rest = order.length - shown.length;
  const restSum = order.slice(MAX_BARS).reduce((a, j) => a + attr[j], 0);
  $('explain-foot').textContent = `${rest ? `${rest} smaller feature${rest === 1 ? '' : 's'} not drawn (sum ${fmt(restSum)}) · ` : ''}`
    + `sum of all ${attr.length} = ${fmt(total)} = f(x) − f(0)${how.method === 'integrated-gradients' ? ' (± integration error)' : ''}`
    + `${rows.length > 1 ? ' · click a row to explain it' : ''}`;
  const box = $('explain');
  box.dataset.row = String(i);
  box.hidden = false;
  for (const tr of document.querySelectorAll('#predict-output tbody tr')) tr.classList.toggle('picked', tr.dataset.row === String(i));
}

function renderPredict(rows, res) {
  const m = currentPredictModel();
  const classifier = /class/i.test(m?.task ?? '');
  const explained = Array.isArray(res.attributions);
  const table = $('predict-output');
  const head = el('tr', {}, el('th', {}, '#'), el('th', {}, 'input'), el('th', {}, 'output'));
  if (classifier) head.append(el('th', {}, 'class'));
  const body = el('tbody');
  res.outputs.forEach((out, i) => {
    const tr = el('tr', { 'data-testid': 'predict-row', 'data-row': i, class: explained ? 'pickable' : null },
      el('td', {}, i),
      el('td', {}, rows[i].map(fmt).join(', ')),
      el('td', { class: 'out', 'data-testid': 'predict-value', 'data-value': JSON.stringify(out) },
        out.length === 1 ? fmt(out[0]) : `[${out.map(fmt).join(', ')}]`));
    if (classifier) {
      const best = out.reduce((bi, v, j) => (v > out[bi] ? j : bi), 0);
      tr.append(el('td', { class: 'cls' }, `${best}${out.length > 1 ? ` (${fmt(out[best])})` : ''}`));
    }
    if (explained) tr.addEventListener('click', () => renderExplain(rows, res, i, classifier));
    body.append(tr);
  });
  table.replaceChildren(el('thead', {}, head), body);
  if (explained) renderExplain(rows, res, 0, classifier);
  else $('explain').hidden = true;
  const t = res.timing ?? {};
  $('predict-timing').replaceChildren(
    el('span', {}, 'model ', el('b', {}, `${res.model} v${res.version}`)),
    el('span', {}, 'round trip ', el('b', { 'data-testid': 'predict-rtt' }, fmtMs(res.rtt))),
    el('span', {}, 'queue ', el('b', {}, fmtMs(t.queue_ms))),
    el('span', {}, 'compute ', el('b', {}, fmtMs(t.compute_ms))),
    el('span', {}, 'batch ', el('b', {}, t.batch_size ?? '–')),
  );
}

$('predict-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const btn = $('predict-run');
  let rows;
  try {
    rows = parseInputs(predictInputs.value);
  } catch (err) {
    showPredictError(err);
    return;
  }
  btn.disabled = true;
  predictResult.dataset.state = 'busy';
  const t0 = performance.now();
  try {
    const explain = $('predict-explain').checked && !$('predict-explain').disabled;
    const res = await client.predict(predictModel.value, rows, explain ? { explain: true } : undefined);
    res.rtt = performance.now() - t0;
    renderPredict(rows, res);
    predictResult.dataset.state = 'ok';
  } catch (err) {
    showPredictError(err);
  } finally {
    btn.disabled = false;
  }
});

function showPredictError(err) {
  const box = $('predict-error');
  box.replaceChildren();
  if (err?.code) box.append(el('code', {}, err.code), ' ');
  box.append(err?.message ?? String(err));
  predictResult.dataset.state = 'error';
}

// ------------------------------------------------------------------ generate

/**
 * The output box keeps at most the latest 2 × MAX_SHOWN_CHARS characters of a generation
 * (trimmed back to MAX_SHOWN_CHARS, with `…` before them): a long generation, or one that ran
 * while the tab was hidden (no animation frames, so nothing flushed), cannot grow the page
 * without bound. `data-dropped` on the box counts the characters no longer shown.
 */
const MAX_SHOWN_CHARS = 20_000;
const genBox = $('gen-box');
const genText = $('gen-output-text');
const genStatus = $('gen-status');
let genController = null;

function statusParts(parts) {
  genStatus.replaceChildren(...parts.map(([k, v, cls]) =>
    (k === null ? el('span', { class: `reason ${cls ?? ''}` }, v) : el('span', {}, `${k} `, el('b', {}, v)))));
}

$('gen-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (genController) return;
  const prompt = $('gen-prompt').value;
  const maxTokens = Number($('gen-max-tokens').value) || 64;
  const temperature = Number($('gen-temperature').value || 0);
  const seedText = $('gen-seed').value.trim();
  const opts = { maxTokens, temperature };
  if (seedText !== '') opts.seed = Number(seedText);
  if (temperature > 0 && seedText === '') opts.seed = Math.floor(Math.random() * 2 ** 31);

  genController = new AbortController();
  opts.signal = genController.signal;
  $('gen-start').disabled = true;
  $('gen-cancel').disabled = false;
  $('gen-output-prompt').textContent = prompt;
  genText.textContent = '';
  genBox.dataset.state = 'running';
  genBox.dataset.tokens = '0';
  genBox.dataset.dropped = '0';
  delete genStatus.dataset.reason;
  statusParts([[null, 'streaming…', 'running']]);

  const t0 = performance.now();
  let count = 0;
  let pending = '';
  let shown = 0; // characters in genText
  let dropped = 0;
  const drop = (n) => {
    dropped += n;
    genBox.dataset.dropped = String(dropped);
    $('gen-output-prompt').textContent = '…';
  };
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (!pending) return;
    const stick = genBox.scrollTop + genBox.clientHeight >= genBox.scrollHeight - 8;
    genText.append(pending);
    shown += pending.length;
    pending = '';
    if (shown > 2 * MAX_SHOWN_CHARS) {
      const keep = genText.textContent.slice(-MAX_SHOWN_CHARS);
      drop(shown - keep.length);
      genText.textContent = keep;
      shown = keep.length;
    }
    genBox.dataset.tokens = String(count);
    if (stick) genBox.scrollTop = genBox.scrollHeight;
    const secs = (performance.now() - t0) / 1000;
    statusParts([[null, 'streaming…', 'running'], ['tokens', fmtInt(count)], ['rate', `${fmtInt(Math.round(count / Math.max(secs, 1e-3)))} tok/s`]]);
  };

  const stream = client.generate($('gen-model').value, prompt, opts);
  try {
    for await (const token of stream) {
      count++;
      pending += token;
      if (pending.length > 2 * MAX_SHOWN_CHARS) { // not flushed for a while (hidden tab)
        drop(shown + pending.length - MAX_SHOWN_CHARS);
        pending = pending.slice(-MAX_SHOWN_CHARS);
        genText.textContent = '';
        shown = 0;
      }
      if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    }
    flush();
    const d = stream.done;
    const secs = (performance.now() - t0) / 1000;
    genBox.dataset.state = 'done';
    genBox.dataset.tokens = String(count);
    genStatus.dataset.reason = d.reason;
    statusParts([
      [null, d.reason, d.reason],
      ['tokens', fmtInt(d.tokens ?? count)],
      ['first token', fmtMs(d.timing?.ttft_ms)],
      ['total', fmtMs(d.timing?.total_ms ?? secs * 1000)],
      ['rate', `${fmtInt(Math.round((d.tokens ?? count) / Math.max(secs, 1e-3)))} tok/s`],
    ]);
  } catch (err) {
    flush();
    genBox.dataset.state = 'error';
    genStatus.dataset.reason = 'error';
    genStatus.replaceChildren(el('span', { class: 'error' }, describeError(err)));
  } finally {
    genController = null;
    $('gen-start').disabled = false;
    $('gen-cancel').disabled = true;
  }
});

$('gen-cancel').addEventListener('click', () => genController?.abort());

// ------------------------------------------------------------------ live traffic

const WINDOW_MS = 60_000;
const records = []; // {t, ms, type, ok}
let total = 0;
let errors = 0;
let paused = false;

client.addEventListener('request', (ev) => {
  const d = ev.detail;
  total++;
  if (!d.ok) errors++;
  records.push({ t: performance.now(), ms: d.ms, type: d.type, ok: d.ok });
  if (records.length > 50_000) records.splice(0, records.length - 40_000);
  scheduleDraw();
});

$('traffic-pause').addEventListener('click', (ev) => {
  paused = !paused;
  ev.currentTarget.setAttribute('aria-pressed', String(paused));
  ev.currentTarget.textContent = paused ? 'Resume' : 'Pause';
  scheduleDraw();
});

$('burst').addEventListener('click', async (ev) => {
  const btn = ev.currentTarget;
  const model = models.find((m) => !isGenerative(m));
  if (!model) return;
  btn.disabled = true;
  const d = model.input_shape?.[0] ?? 1;
  const n = 200;
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: n }, () =>
    client.predict(model.name, [Array.from({ length: d }, Math.random)])));
  const ms = performance.now() - t0;
  const ok = results.filter((r) => r.status === 'fulfilled');
  const maxBatch = Math.max(0, ...ok.map((r) => r.value.timing?.batch_size ?? 0));
  $('burst-note').textContent =
    `burst: ${ok.length}/${n} ${model.name} calls in ${fmtMs(ms)} · largest batch ${maxBatch} rows`;
  btn.disabled = false;
});

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i];
}

function updateStats(nowT) {
  const recent = records.filter((r) => r.t >= nowT - WINDOW_MS);
  const lat = recent.map((r) => r.ms).sort((a, b) => a - b);
  const last10 = recent.filter((r) => r.t >= nowT - 10_000).length;
  $('stat-total').textContent = fmtInt(total);
  $('stat-rate').textContent = (last10 / 10).toFixed(1);
  $('stat-p50').textContent = fmtMs(percentile(lat, 0.5));
  $('stat-p95').textContent = fmtMs(percentile(lat, 0.95));
  $('stat-errors').textContent = fmtInt(errors);
  return { p50: percentile(lat, 0.5), p95: percentile(lat, 0.95) };
}

const canvas = $('chart');
const ctx = canvas.getContext('2d');
let drawScheduled = false;
function scheduleDraw() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => { drawScheduled = false; draw(); });
}

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function resizeCanvas() {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  return dpr;
}

function niceCeil(x) {
  if (x <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function draw() {
  const nowT = performance.now();
  const { p95 } = updateStats(nowT);
  if (paused) return;
  const dpr = resizeCanvas();
  const W = canvas.width / dpr;
  const H = canvas.height / dpr;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);

  const colors = {
    predict: cssVar('--accent'), generate: cssVar('--gen'), ping: cssVar('--ping'),
    models: cssVar('--ping'), error: cssVar('--danger'), grid: cssVar('--grid'),
    muted: cssVar('--muted'), text: cssVar('--text'),
  };
  const font = `11px ${cssVar('--sans') || 'system-ui'}`;
  ctx.font = font;

  const left = 52; const right = 10; const top = 22; const gap = 40; const bottomAxis = 18;
  const plotW = Math.max(10, W - left - right);
  const latH = Math.round((H - top - gap - bottomAxis) * 0.62);
  const barTop = top + latH + gap;
  const barH = H - barTop - bottomAxis;
  const xOf = (t) => left + plotW * (1 - (nowT - t) / WINDOW_MS);

  const recent = records.filter((r) => r.t >= nowT - WINDOW_MS);

  // latency panel: log scale, decades fitted to the data
  const lats = recent.map((r) => r.ms).filter((v) => v > 0);
  let lo = lats.length ? Math.floor(Math.log10(Math.min(...lats))) : -1;
  let hi = lats.length ? Math.ceil(Math.log10(Math.max(...lats))) : 2;
  if (lats.length && Math.log10(Math.max(...lats)) > hi - 0.15) hi += 1; // headroom above the top dots
  lo = Math.max(-2, Math.min(lo, 0)); hi = Math.max(hi, lo + 2);
  const yLat = (ms) => top + latH * (1 - (Math.log10(Math.max(ms, 10 ** lo)) - lo) / (hi - lo));

  ctx.strokeStyle = colors.grid; ctx.lineWidth = 1; ctx.fillStyle = colors.muted;
  ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
  for (let e = lo; e <= hi; e++) {
    const y = Math.round(yLat(10 ** e)) + 0.5;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    const v = 10 ** e;
    ctx.fillText(v >= 1000 ? `${v / 1000} s` : `${Number(v.toPrecision(1))} ms`, left - 8, y);
  }
  const title = (text, y) => {
    ctx.save();
    ctx.font = `600 11.5px ${cssVar('--sans') || 'system-ui'}`;
    ctx.fillStyle = colors.text; ctx.textAlign = 'left'; ctx.textBaseline = 'alphabetic';
    ctx.fillText(text, left, y);
    ctx.restore();
  };
  title('Latency per request (log scale)', top - 9);
  title('Completed requests per second', barTop - 13);

  if (p95 != null && p95 > 0) {
    const y = Math.round(yLat(p95)) + 0.5;
    ctx.save();
    ctx.setLineDash([4, 4]); ctx.strokeStyle = colors.muted; ctx.globalAlpha = 0.8;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    ctx.restore();
    ctx.textAlign = 'left'; ctx.fillStyle = colors.muted;
    const below = y - 14 < top;
    ctx.textBaseline = below ? 'top' : 'bottom';
    ctx.fillText(`p95 ${fmtMs(p95)}`, left + 6, below ? y + 3 : y - 2);
  }

  for (const r of recent) {
    ctx.fillStyle = r.ok ? (colors[r.type] ?? colors.ping) : colors.error;
    ctx.globalAlpha = r.type === 'ping' || r.type === 'models' ? 0.6 : 0.85;
    ctx.beginPath();
    ctx.arc(xOf(r.t), yLat(r.ms), r.type === 'generate' ? 3.5 : 2.5, 0, Math.PI * 2);
    ctx.fill();
  }
  ctx.globalAlpha = 1;

  // throughput panel: completed requests per second, stacked by type
  const buckets = Array.from({ length: 60 }, () => ({ predict: 0, generate: 0, ping: 0, error: 0 }));
  for (const r of recent) {
    const i = Math.min(59, Math.floor((nowT - r.t) / 1000));
    const b = buckets[59 - i];
    if (!r.ok) b.error++; else if (r.type === 'predict') b.predict++; else if (r.type === 'generate') b.generate++; else b.ping++;
  }
  const maxCount = niceCeil(Math.max(1, ...buckets.map((b) => b.predict + b.generate + b.ping + b.error)));
  ctx.strokeStyle = colors.grid; ctx.fillStyle = colors.muted; ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
  for (const f of [0, 0.5, 1]) {
    const y = Math.round(barTop + barH * (1 - f)) + 0.5;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    ctx.fillText(`${fmtInt(maxCount * f)}/s`, left - 8, y);
  }
  const bw = plotW / 60;
  buckets.forEach((b, i) => {
    let y = barTop + barH;
    for (const k of ['ping', 'predict', 'generate', 'error']) {
      if (!b[k]) continue;
      const h = (barH * b[k]) / maxCount;
      ctx.fillStyle = k === 'error' ? colors.error : colors[k];
      ctx.globalAlpha = k === 'ping' ? 0.55 : 0.9;
      ctx.fillRect(left + i * bw + 1, y - h, Math.max(1, bw - 2), h);
      y -= h;
    }
  });
  ctx.globalAlpha = 1;

  // time axis
  ctx.fillStyle = colors.muted; ctx.textBaseline = 'top'; ctx.textAlign = 'center';
  for (const s of [60, 45, 30, 15, 0]) {
    const x = left + plotW * (1 - s / 60);
    ctx.textAlign = s === 0 ? 'right' : s === 60 ? 'left' : 'center';
    ctx.fillText(s === 0 ? 'now' : `−${s}s`, x, H - bottomAxis + 4);
  }
}

new ResizeObserver(scheduleDraw).observe(canvas);
matchMedia('(prefers-color-scheme: dark)').addEventListener?.('change', scheduleDraw);
setInterval(scheduleDraw, 500);

// ------------------------------------------------------------------ start

setStatus('connecting', 'connecting…');
client.connect().catch((err) => {
  setStatus('lost', 'disconnected — retrying');
  connMeta.textContent = describeError(err);
});
heartbeatTick();
