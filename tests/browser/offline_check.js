// Opens offline dashboard pages (hub/src/dashboard/page.html with a run's
// records and logs written in, as `muster report --html` does) in headless
// Chromium and checks what they show. Exits non-zero on any failure.
//
//   cd tests/browser && npm install && node offline_check.js
//
// CHROMIUM: the browser to drive (default /usr/bin/chromium).
// SCREENSHOT_DIR: where screenshots go (default a fresh temp dir).

import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
const PAGE_PATH = resolve(here, '../../hub/src/dashboard/page.html');
const MARKER = '<!--muster-offline-->';
const T0 = 1764600000000;

const failures = [];
function check(ok, what) {
  if (ok) console.log(`  ok   ${what}`);
  else { console.log(`  FAIL ${what}`); failures.push(what); }
}

// ---------- building pages ----------

const template = readFileSync(PAGE_PATH, 'utf8');

/** The page with `records` and `logs` written in, as the Rust side does. */
function offlinePage(records, logs) {
  const data = JSON.stringify({ records, logs }).replace(/</g, '\\u003c');
  const script = `<script id="muster-offline" type="application/json">${data}</script>`;
  return template.replace(MARKER, () => script);
}

/** Journal records with seq numbers, in time order. */
class Journal {
  constructor() { this.lines = []; }
  add(at, type, fields) { this.lines.push({ v: 1, seq: 0, at, type, ...fields }); }
  mod(at, module, state, fields = {}) { this.add(at, 'module', { module, state, ...fields }); }
  done() {
    this.lines.forEach((r, i) => { r.i = i; });
    this.lines.sort((a, b) => a.at - b.at || a.i - b.i);
    return this.lines.map((r, i) => { const { i: _, ...rest } = r; rest.seq = i + 1; return rest; });
  }
}

function runStarted(j, at, modules, extra = {}) {
  j.add(at, 'runStarted', {
    runId: '2026-12-01T10-22-01Z-ab12', pipeline: 'muster.toml', musterVersion: '0.1.0', stint: 1, epoch: 0,
    planDigest: 'plan-' + modules.length,
    modules: modules.map(m => ({ id: m.id, digest: 'd-' + m.id, parts: {}, ...(m.needs?.length ? { needs: m.needs } : {}) })),
    settings: { failFast: false, maxWorkerLosses: 3 }, ...extra,
  });
}

// A small run: 6 modules, one failed, one retried after its worker was
// lost, one skipped, two workers, a hostile module id and a hostile log.
const HOSTILE_ID = '<img src=x onerror="window.__xss=1">';
const HOSTILE_LOG = 'compiling muster v0.1.0\n\x1b[31merror-ish line in red\x1b[0m\n<script>alert(1)</script>\n' +
  '<img src=x onerror="window.__xss=3">\n\x1b[1;32m    Finished\x1b[0m release in 3.2s\n\x1b[38;5;208morange\x1b[0m done\n';
function smallRun() {
  const j = new Journal();
  const mods = [
    { id: 'prepare' },
    { id: 'build', needs: ['prepare'] },
    { id: HOSTILE_ID, needs: ['prepare'] },
    { id: 'lint', needs: ['prepare'] },
    { id: 'test', needs: ['build'] },
    { id: 'package', needs: ['build', 'lint', 'test'] },
  ];
  let t = T0;
  runStarted(j, t, mods);
  j.add(t + 10, 'workerJoined', { name: 'w1', capabilities: ['linux'], slots: 2 });
  j.add(t + 12, 'workerJoined', { name: 'w2', capabilities: ['linux', 'gpu'], slots: 1 });
  j.mod(t + 20, 'prepare', 'ready');
  j.mod(t + 21, 'prepare', 'assigned', { attempt: 1, worker: 'w1' });
  j.mod(t + 30, 'prepare', 'running', { attempt: 1, worker: 'w1' });
  j.mod(t + 400, 'prepare', 'succeeded', { attempt: 1, worker: 'w1', exitCode: 0, durationMs: 370, outputs: { version: '1.2.3', token: '***' }, masked: true });
  for (const id of ['build', HOSTILE_ID, 'lint']) j.mod(t + 401, id, 'ready');
  j.mod(t + 402, 'build', 'assigned', { attempt: 1, worker: 'w1' });
  j.mod(t + 403, 'lint', 'assigned', { attempt: 1, worker: 'w2' });
  j.mod(t + 410, 'build', 'running', { attempt: 1, worker: 'w1' });
  j.mod(t + 411, 'lint', 'running', { attempt: 1, worker: 'w2' });
  j.mod(t + 420, HOSTILE_ID, 'assigned', { attempt: 1, worker: 'w1' });
  j.mod(t + 425, HOSTILE_ID, 'running', { attempt: 1, worker: 'w1' });
  j.mod(t + 900, 'lint', 'failed', { attempt: 1, worker: 'w2', exitCode: 1, durationMs: 489, reason: 'exited with code 1' });
  j.mod(t + 1200, HOSTILE_ID, 'succeeded', { attempt: 1, worker: 'w1', exitCode: 0, durationMs: 775 });
  j.mod(t + 3600, 'build', 'succeeded', { attempt: 1, worker: 'w1', exitCode: 0, durationMs: 3190,
    artifacts: [{ path: 'target/release/muster', size: 8123456, sha256: 'ab'.repeat(32), mode: 493 }] });
  j.mod(t + 3601, 'test', 'ready');
  j.mod(t + 3602, 'test', 'assigned', { attempt: 1, worker: 'w2' });
  j.mod(t + 3610, 'test', 'running', { attempt: 1, worker: 'w2' });
  j.add(t + 5000, 'workerAway', { name: 'w2', reason: 'connection lost', held: 1 });
  j.add(t + 8000, 'workerLeft', { name: 'w2', reason: 'away for too long' });
  j.mod(t + 8001, 'test', 'ready', { attempt: 1, note: 'its worker w2 was lost: trying again' });
  j.mod(t + 8002, 'test', 'assigned', { attempt: 2, worker: 'w1' });
  j.mod(t + 8010, 'test', 'running', { attempt: 2, worker: 'w1' });
  j.mod(t + 9500, 'test', 'succeeded', { attempt: 2, worker: 'w1', exitCode: 0, durationMs: 1490 });
  j.mod(t + 9501, 'package', 'skipped', { reason: 'it needs lint, which failed' });
  j.add(t + 9502, 'runFinished', { outcome: 'failed' });
  return {
    records: j.done(),
    logs: { build: HOSTILE_LOG, [HOSTILE_ID]: '</script><script>window.__xss=2</script>\n', lint: 'lint: 3 warnings\nerror: unused import\n' },
    expect: { prepare: 'succeeded', build: 'succeeded', [HOSTILE_ID]: 'succeeded', lint: 'failed', test: 'succeeded', package: 'skipped' },
    outcome: 'failed',
  };
}

// A deterministic pseudo-random sequence.
function rng(seed) {
  let s = seed >>> 0;
  return () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 4294967296; };
}

/**
 * A layered DAG of `layers` × `width` modules run on `workers` workers of
 * `slots` slots; some attempts fail and are retried; `cancelAtLayer`
 * cancels the run there.
 */
function layeredRun({ layers, width, workers, slots, seed, cancelAtLayer = null, failLast = false }) {
  const rand = rng(seed), j = new Journal(), mods = [];
  for (let l = 0; l < layers; l++) for (let i = 0; i < width; i++) {
    const id = `l${String(l).padStart(2, '0')}-m${String(i).padStart(4, '0')}`;
    const needs = l === 0 ? [] : [...new Set([0, 1, 2].map(() => `l${String(l - 1).padStart(2, '0')}-m${String(Math.floor(rand() * width)).padStart(4, '0')}`))];
    mods.push({ id, needs, layer: l });
  }
  runStarted(j, T0, mods);
  const names = Array.from({ length: workers }, (_, i) => `worker-${i + 1}`);
  names.forEach((name, i) => j.add(T0 + 5 + i, 'workerJoined', { name, capabilities: ['linux', i % 2 ? 'arm64' : 'x86_64'], slots }));
  const free = names.flatMap(name => Array.from({ length: slots }, () => ({ name, at: T0 + 50 })));
  const expect = {};
  let layerReady = T0 + 50, outcome = 'succeeded', last = T0 + 50;
  for (let l = 0; l < layers; l++) {
    const layer = mods.filter(m => m.layer === l);
    if (cancelAtLayer != null && l >= cancelAtLayer) {
      if (l === cancelAtLayer) {
        j.add(layerReady, 'cancelRequested', { reason: 'cancelled from the dashboard' });
        outcome = 'cancelled';
      }
      for (const m of layer) {
        j.mod(layerReady + 1, m.id, 'skipped', { reason: 'the run was cancelled' });
        expect[m.id] = 'skipped';
      }
      continue;
    }
    let end = layerReady;
    for (const m of layer) {
      j.mod(layerReady, m.id, 'ready');
      let attempts = rand() < 0.02 ? 2 : 1, ready = layerReady;
      for (let a = 1; a <= attempts; a++) {
        free.sort((x, y) => x.at - y.at);
        const slot = free[0], start = Math.max(slot.at, ready) + 1, d = 100 + Math.floor(rand() * 900);
        const fail = a < attempts || (failLast && l === layers - 1 && m.id.endsWith('0007'));
        j.mod(start, m.id, 'assigned', { attempt: a, worker: slot.name });
        j.mod(start + 5, m.id, 'running', { attempt: a, worker: slot.name });
        const state = fail ? 'failed' : 'succeeded';
        j.mod(start + 5 + d, m.id, state, { attempt: a, worker: slot.name, exitCode: fail ? 1 : 0, durationMs: d,
          ...(fail ? { reason: 'exited with code 1' } : { outputs: { n: String(a) } }) });
        if (a < attempts) j.mod(start + 6 + d, m.id, 'ready', { attempt: a, note: 'retrying after a failure' });
        slot.at = start + 6 + d;
        ready = start + 7 + d;
        end = Math.max(end, start + 6 + d);
        expect[m.id] = state;
        if (fail && a === attempts) outcome = 'failed';
      }
    }
    layerReady = end + 2;
    last = Math.max(last, end);
  }
  j.add(Math.max(last, layerReady) + 10, 'runFinished', { outcome, ...(outcome === 'cancelled' ? { cancelled: 'cancelled from the dashboard' } : {}) });
  const logs = {};
  for (const m of mods.slice(0, 50)) logs[m.id] = `running ${m.id}\n\x1b[32mok\x1b[0m\n`;
  return { records: j.done(), logs, expect, outcome };
}

// A run resumed by a second master: stint 1 was cancelled, stint 2 kept
// what succeeded and finished the rest.
function resumedRun() {
  const j = new Journal(), mods = [{ id: 'a' }, { id: 'b', needs: ['a'] }, { id: 'c', needs: ['b'] }];
  runStarted(j, T0, mods);
  j.add(T0 + 1, 'workerJoined', { name: 'local-1', capabilities: ['linux'], slots: 2 });
  j.mod(T0 + 2, 'a', 'ready');
  j.mod(T0 + 3, 'a', 'running', { attempt: 1, worker: 'local-1' });
  j.mod(T0 + 300, 'a', 'succeeded', { attempt: 1, worker: 'local-1', exitCode: 0, durationMs: 297 });
  j.mod(T0 + 301, 'b', 'ready');
  j.mod(T0 + 302, 'b', 'assigned', { attempt: 1, worker: 'local-1' });
  j.mod(T0 + 303, 'b', 'running', { attempt: 1, worker: 'local-1' });
  j.add(T0 + 500, 'cancelRequested', { reason: 'Ctrl-C' });
  j.mod(T0 + 510, 'b', 'cancelled', { attempt: 1, worker: 'local-1', reason: 'the run was cancelled' });
  j.mod(T0 + 511, 'c', 'skipped', { reason: 'the run was cancelled' });
  j.add(T0 + 512, 'runFinished', { outcome: 'cancelled', cancelled: 'Ctrl-C' });
  runStarted(j, T0 + 60000, mods, { stint: 2, epoch: 1, resumedFrom: '2026-12-01T10-22-01Z-ab12' });
  j.add(T0 + 60001, 'workerJoined', { name: 'local-1', capabilities: ['linux'], slots: 2 });
  j.mod(T0 + 60002, 'a', 'succeeded', { keptFrom: '2026-12-01T10-22-01Z-ab12' });
  j.mod(T0 + 60003, 'b', 'ready');
  j.mod(T0 + 60004, 'b', 'running', { attempt: 1, worker: 'local-1' });
  j.mod(T0 + 61000, 'b', 'succeeded', { attempt: 1, worker: 'local-1', exitCode: 0, durationMs: 996 });
  j.mod(T0 + 61001, 'c', 'ready');
  j.mod(T0 + 61002, 'c', 'running', { attempt: 1, worker: 'local-1' });
  j.mod(T0 + 61500, 'c', 'succeeded', { attempt: 1, worker: 'local-1', exitCode: 0, durationMs: 498 });
  j.add(T0 + 61501, 'runFinished', { outcome: 'succeeded' });
  return { records: j.done(), logs: {}, expect: { a: 'succeeded', b: 'succeeded', c: 'succeeded' }, outcome: 'succeeded' };
}

// ---------- the browser ----------

const outDir = mkdtempSync(join(tmpdir(), 'muster-offline-'));
const pagesDir = join(outDir, 'pages');
mkdirSync(pagesDir);
const shots = process.env.SCREENSHOT_DIR || join(outDir, 'screenshots');
mkdirSync(shots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--headless=new'],
  headless: true,
});

/** Opens `run` as an offline page; returns the page, its problems and how long it took to be ready. */
async function open(name, run, viewport = { width: 1400, height: 900 }) {
  const file = join(pagesDir, name + '.html');
  writeFileSync(file, offlinePage(run.records, run.logs));
  const page = await browser.newPage();
  await page.setViewport(viewport);
  const problems = [];
  page.on('console', m => { if (m.type() === 'error') problems.push('console error: ' + m.text()); });
  page.on('pageerror', e => problems.push('page error: ' + e.message));
  page.on('dialog', async d => { problems.push(`a ${d.type()} dialog opened: ${d.message()}`); await d.dismiss(); });
  page.on('request', r => { if (!/^(file|data):/.test(r.url())) problems.push('reached out to ' + r.url()); });
  const started = Date.now();
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  await page.waitForFunction(() => window.muster && window.muster.ready === true, { timeout: 30000 });
  const took = Date.now() - started;
  // The timeline is drawn at most 4 times a second: let it catch up.
  await new Promise(r => setTimeout(r, 400));
  return { page, problems, took, size: readFileSync(file).length };
}

async function common(name, run, { page, problems }) {
  const got = await page.evaluate(() => ({
    ready: window.muster.ready,
    records: window.muster.records,
    lastSeq: window.muster.lastSeq,
    runState: document.body.dataset.runState,
    boxes: document.querySelectorAll('[data-module]').length,
    states: Object.fromEntries([...document.querySelectorAll('[data-module]')].map(b => [b.dataset.module, b.dataset.state])),
    cancelHidden: !document.getElementById('cancel'),
    banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent,
  }));
  check(got.ready === true, `${name}: window.muster.ready is true`);
  check(got.records === run.records.length, `${name}: ${got.records} of ${run.records.length} records applied`);
  check(got.lastSeq === run.records.length, `${name}: lastSeq is ${got.lastSeq}`);
  check(got.runState === run.outcome, `${name}: body data-run-state is "${got.runState}" (runFinished says ${run.outcome})`);
  const want = Object.keys(run.expect).length;
  check(got.boxes === want, `${name}: ${got.boxes} module boxes (plan has ${want})`);
  const wrong = Object.entries(run.expect).filter(([id, s]) => got.states[id] !== s);
  check(!wrong.length, `${name}: every box's data-state is its last record's state` +
    (wrong.length ? ` (${wrong.length} wrong, e.g. ${JSON.stringify(wrong[0])} shows ${got.states[wrong[0][0]]})` : ''));
  check(got.cancelHidden, `${name}: no Cancel button offline`);
  check(!got.banner, `${name}: no banner` + (got.banner ? `: ${got.banner}` : ''));
  const painted = await page.evaluate(() => {
    const c = document.getElementById('timeline'), g = c.getContext('2d');
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let green = 0, red = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] === 58 && d[i + 1] === 157 && d[i + 2] === 93) green++;
      if (d[i] === 214 && d[i + 1] === 69 && d[i + 2] === 69) red++;
    }
    return { green, red, h: c.height };
  });
  check(painted.green > 0, `${name}: the timeline shows succeeded attempts (${painted.green} px)`);
  return { got, painted, problems };
}

try {
  // (1) a small run, with hostile text
  {
    const run = smallRun();
    const opened = await open('small', run);
    const { page, problems } = opened;
    const { painted } = await common('small', run, opened);
    check(painted.red > 0, 'small: the timeline shows the failed attempt');
    const info = await page.evaluate(hostile => {
      const box = [...document.querySelectorAll('[data-module]')].find(b => b.dataset.module === hostile);
      return {
        hostileShown: box ? box.querySelector('b').textContent : null,
        images: document.querySelectorAll('img').length,
        xss: window.__xss,
        testMeta: document.querySelector('[data-module="test"] span').textContent,
        workers: document.querySelectorAll('#workers tbody tr').length,
        workersText: document.getElementById('workers').textContent,
        header: document.querySelector('header').textContent,
      };
    }, HOSTILE_ID);
    check(info.hostileShown === HOSTILE_ID, 'small: a module id with markup shows as text');
    check(info.images === 0, 'small: no element came from module ids');
    check(info.workers === 2, `small: the workers table has ${info.workers} rows`);
    check(/away/.test(info.workersText) && /away for too long/.test(info.workersText), 'small: the workers table tells w2 went away and left');
    check(/#2/.test(info.testMeta), `small: the retried module's box shows attempt 2 ("${info.testMeta}")`);
    check(/failed/.test(info.header) && /muster\.toml/.test(info.header), 'small: the header names the pipeline and the outcome');
    await page.screenshot({ path: join(shots, 'small.png'), fullPage: true });

    await page.click('[data-module="build"]');
    await page.waitForFunction(() => !document.getElementById('log').hidden);
    const log = await page.evaluate(() => {
      const pre = document.getElementById('log-text');
      return {
        text: pre.textContent,
        elements: [...pre.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
        coloured: [...pre.querySelectorAll('span')].filter(s => s.style.color).length,
        meta: document.getElementById('log-meta').textContent,
      };
    });
    check(log.text.includes('<script>alert(1)</script>'), 'small: the hostile log line shows as text');
    check(!log.elements.some(t => t !== 'span' && t !== 'div'), `small: the log holds no elements from its text (${[...new Set(log.elements)]})`);
    check(!log.text.includes('\x1b'), 'small: ANSI escape codes are not shown raw');
    check(log.coloured >= 3, `small: ANSI colours are rendered (${log.coloured} coloured spans)`);
    check(/artifacts/.test(log.meta) && /3\.19 s|3\.2 s/.test(log.meta), 'small: the log panel shows the duration and artifacts');
    await page.type('#log-search', 'alert');
    await page.waitForFunction(() => document.querySelectorAll('#log-text mark').length > 0, { timeout: 3000 }).catch(() => {});
    const found = await page.evaluate(() => ({
      marks: [...document.querySelectorAll('#log-text mark')].map(m => m.textContent),
      count: document.getElementById('log-count').textContent,
      text: document.getElementById('log-text').textContent,
    }));
    check(found.marks.length === 1 && found.marks[0] === 'alert' && /^1 line/.test(found.count) && !found.text.includes('Finished'),
      `small: search filters to the matching line and marks it (${JSON.stringify(found.marks)}, "${found.count}")`);
    await page.screenshot({ path: join(shots, 'small-log.png'), fullPage: true });

    const box = await page.evaluateHandle(h => [...document.querySelectorAll('[data-module]')].find(b => b.dataset.module === h), HOSTILE_ID);
    await box.click();
    await page.evaluate(() => { const s = document.getElementById('log-search'); s.value = ''; s.dispatchEvent(new Event('input')); });
    await new Promise(r => setTimeout(r, 300));
    const hostileLog = await page.evaluate(() => document.getElementById('log-text').textContent);
    check(hostileLog.includes('</script><script>window.__xss=2</script>'), 'small: a log that closes its script tag shows as text');

    await page.click('[data-module="lint"]');
    await new Promise(r => setTimeout(r, 100));
    const lint = await page.evaluate(() => document.getElementById('log-meta').textContent);
    check(/exit code/.test(lint) && /exited with code 1/.test(lint), 'small: a failed module shows its exit code and reason');
    await page.click('[data-module="package"]');
    await new Promise(r => setTimeout(r, 100));
    const pkg = await page.evaluate(() => document.getElementById('log-text').textContent);
    check(pkg.trim() === 'no log', `small: a module without a log says "no log" ("${pkg.trim()}")`);
    check(await page.evaluate(() => window.__xss === undefined), 'small: no script from the data ran');
    check(!problems.length, 'small: no errors, dialogs or requests' + (problems.length ? ': ' + problems.join('; ') : ''));
    await page.close();
  }

  // (2) 2,000 modules
  {
    const run = layeredRun({ layers: 20, width: 100, workers: 8, slots: 4, seed: 7, failLast: true });
    const opened = await open('run-2000', run);
    console.log(`  ..   2,000 modules: ${run.records.length} records, ${(opened.size / 1048576).toFixed(1)} MiB page, ready in ${opened.took} ms`);
    await common('2000', run, opened);
    check(opened.took < 5000, `2000: ready in ${opened.took} ms (under 5 s)`);
    await opened.page.hover('[data-module="l10-m0050"]');
    const edges = await opened.page.evaluate(() => document.querySelectorAll('#edges path').length);
    check(edges > 0 && edges < 400, `2000: hovering a module draws only its edges (${edges})`);
    await opened.page.screenshot({ path: join(shots, 'run-2000.png') });
    check(!opened.problems.length, '2000: no errors' + (opened.problems.length ? ': ' + opened.problems.join('; ') : ''));
    await opened.page.close();
  }

  // (3) 10,000 modules, cancelled
  {
    const run = layeredRun({ layers: 50, width: 200, workers: 16, slots: 4, seed: 11, cancelAtLayer: 30 });
    const opened = await open('run-10000', run);
    console.log(`  ..   10,000 modules: ${run.records.length} records, ${(opened.size / 1048576).toFixed(1)} MiB page, ready in ${opened.took} ms`);
    await common('10000', run, opened);
    check(opened.took < 15000, `10000: ready in ${opened.took} ms`);
    await opened.page.click('[data-module="l29-m0100"]');
    await new Promise(r => setTimeout(r, 300));
    const t0 = Date.now();
    await opened.page.evaluate(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))));
    check(Date.now() - t0 < 1000, '10000: the page still answers after opening a module');
    await opened.page.screenshot({ path: join(shots, 'run-10000.png') });
    check(!opened.problems.length, '10000: no errors' + (opened.problems.length ? ': ' + opened.problems.join('; ') : ''));
    await opened.page.close();
  }

  // (4) a resumed run: the latest stint's plan and outcome
  {
    const run = resumedRun();
    const opened = await open('resumed', run);
    await common('resumed', run, opened);
    const header = await opened.page.evaluate(() => document.querySelector('header').textContent);
    check(/stint 2/.test(header) && /succeeded/.test(header), 'resumed: the header shows stint 2 and its outcome');
    await opened.page.screenshot({ path: join(shots, 'resumed.png'), fullPage: true });
    check(!opened.problems.length, 'resumed: no errors' + (opened.problems.length ? ': ' + opened.problems.join('; ') : ''));
    await opened.page.close();
  }
} catch (e) {
  failures.push('the check itself failed: ' + (e.stack || e));
  console.log(e);
} finally {
  await browser.close();
}

console.log(`page: ${Buffer.byteLength(template)} bytes; screenshots in ${shots}`);
if (failures.length) {
  console.log(`the pages checked are in ${pagesDir}`);
  console.log(`\n${failures.length} check(s) failed:\n - ` + failures.join('\n - '));
  process.exit(1);
}
rmSync(pagesDir, { recursive: true, force: true });
console.log('all offline checks passed');
