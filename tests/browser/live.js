// Drives the live dashboard of a running `muster hub` in headless
// Chromium (Debian's package, through puppeteer-core), for tests/dashboard.rs.
//
// Environment: BASE (http://127.0.0.1:PORT), VIEW (viewer token), TOKEN
// (run token), SCENARIO (`live`, `large` or `approve`), APPROVER (approve:
// an approver's token), RELEASE (live: the file whose
// creation lets the module holding the run open finish), MODULES (large:
// how many modules the plan has), SCREENSHOT_DIR, CHROMIUM.
//
// Prints one line `RESULT <json>` with what it measured, and exits 1 with
// the reasons when a check fails.

import fs from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const env = process.env;
const BASE = env.BASE;
const shots = env.SCREENSHOT_DIR || fs.mkdtempSync('/tmp/muster-shots-');
fs.mkdirSync(shots, { recursive: true });
const failures = [];
const result = { screenshots: [] };
const check = (ok, what) => { if (!ok) failures.push(what); };

const browser = await puppeteer.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--headless=new', '--disable-gpu', '--disable-dev-shm-usage'],
});

/** A fresh browser context (its own cookies) with a page that records errors. */
async function freshPage(errors) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  await page.setViewport({ width: 1400, height: 900 });
  return page;
}

async function shot(page, name) {
  const file = path.join(shots, name);
  await page.screenshot({ path: file, fullPage: false });
  result.screenshots.push(file);
}

const stateOf = (page, id) => page.evaluate((id) => {
  const el = document.querySelector(`[data-module="${CSS.escape(id)}"]`);
  return el ? el.dataset.state : null;
}, id);

async function waitForState(page, id, state, ms) {
  await page.waitForFunction((id, state) => {
    const el = document.querySelector(`[data-module="${CSS.escape(id)}"]`);
    return el && el.dataset.state === state;
  }, { timeout: ms, polling: 'mutation' }, id, state);
}

async function live() {
  // Without a token: a 401 that shows nothing of the run.
  const refused = await fetch(`${BASE}/`);
  const body = await refused.text();
  check(refused.status === 401, `the page without a token answered ${refused.status}`);
  check(!body.includes('gate') && !body.includes('<script'), 'the refusal shows something of the run');
  result.refusedStatus = refused.status;

  const viewerErrors = [];
  const viewer = await freshPage(viewerErrors);
  await viewer.goto(`${BASE}/?access_token=${encodeURIComponent(env.VIEW)}`, { waitUntil: 'domcontentloaded' });
  result.viewerUrl = viewer.url();
  check(!viewer.url().includes('access_token'), `the token stayed in the address: ${viewer.url()}`);
  await viewer.waitForFunction(() => window.muster && window.muster.ready, { timeout: 15000 });
  await waitForState(viewer, 'gate', 'running', 20000);
  const cancelShown = await viewer.evaluate(() => {
    const b = document.getElementById('cancel');
    return !!b && !b.hidden && b.offsetParent !== null;
  });
  check(!cancelShown, 'a viewer sees the Cancel button');

  // The log streams: open it, see ticks, see more ticks later.
  await viewer.click('[data-module="gate"]');
  await viewer.waitForFunction(() => /tick \d+/.test(document.getElementById('log-text').textContent),
    { timeout: 10000 });
  const ticks = () => viewer.evaluate(() => (document.getElementById('log-text').textContent.match(/tick \d+/g) || []).length);
  const before = await ticks();
  await new Promise((r) => setTimeout(r, 1000));
  const after = await ticks();
  result.logTicks = [before, after];
  check(after > before, `the log did not grow (${before} then ${after} ticks)`);
  await shot(viewer, 'dashboard-viewer.png');

  // A state change reaches the page within a second.
  const released = Date.now();
  fs.writeFileSync(env.RELEASE, 'go\n');
  await waitForState(viewer, 'gate', 'succeeded', 10000);
  result.releaseToDomMs = Date.now() - released;
  // The command notices the file within 0.1 s.
  check(result.releaseToDomMs < 1100, `the success showed ${result.releaseToDomMs} ms after the release`);
  await waitForState(viewer, 'after', 'running', 10000);
  const latencies = await viewer.evaluate(() => window.muster.latencies.slice());
  result.latencies = latencies;
  check(latencies.length > 0, 'no live change was measured');
  check(latencies.every((l) => l < 1000), `a change took a second or more: ${latencies}`);

  // The run token's page has Cancel, and it works.
  const operatorErrors = [];
  const operator = await freshPage(operatorErrors);
  await operator.goto(`${BASE}/?access_token=${encodeURIComponent(env.TOKEN)}`, { waitUntil: 'domcontentloaded' });
  await operator.waitForFunction(() => window.muster && window.muster.ready, { timeout: 15000 });
  await operator.waitForFunction(() => {
    const b = document.getElementById('cancel');
    return b && !b.hidden && b.offsetParent !== null;
  }, { timeout: 10000 });
  operator.on('dialog', (d) => d.accept());
  await shot(operator, 'dashboard-operator.png');
  await operator.click('#cancel');
  await operator.waitForFunction(() => document.body.dataset.runState === 'cancelled', { timeout: 20000 });
  await viewer.waitForFunction(() => document.body.dataset.runState === 'cancelled', { timeout: 20000 });
  result.afterState = await stateOf(viewer, 'after');
  await shot(viewer, 'dashboard-cancelled.png');
  for (const e of viewerErrors.concat(operatorErrors)) {
    // The socket closing when the hub stops is not the page's error.
    if (!/WebSocket|ERR_CONNECTION_REFUSED|net::/.test(e)) failures.push(e);
  }
}

async function large() {
  const errors = [];
  const page = await freshPage(errors);
  const started = Date.now();
  await page.goto(`${BASE}/?access_token=${encodeURIComponent(env.VIEW)}`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => window.muster && window.muster.ready, { timeout: 30000 });
  // Every module but the one holding the run open, then that one.
  await page.waitForFunction((n) => document.querySelectorAll('[data-module][data-state="succeeded"]').length >= n - 1,
    { timeout: 120000, polling: 500 }, Number(env.MODULES));
  fs.writeFileSync(env.RELEASE, 'go\n');
  await page.waitForFunction(() => document.body.dataset.runState === 'succeeded', { timeout: 30000, polling: 200 });
  result.loadToFinishMs = Date.now() - started;
  const boxes = await page.evaluate(() => document.querySelectorAll('[data-module]').length);
  const succeeded = await page.evaluate(() => document.querySelectorAll('[data-module][data-state="succeeded"]').length);
  result.boxes = boxes;
  check(boxes === Number(env.MODULES), `${boxes} module boxes, not ${env.MODULES}`);
  check(succeeded === Number(env.MODULES), `${succeeded} boxes show succeeded`);
  await shot(page, 'dashboard-large.png');
  for (const e of errors) {
    if (!/WebSocket|ERR_CONNECTION_REFUSED|net::/.test(e)) failures.push(e);
  }
}

// A gate: the viewer gets no form; an approver fills the input and
// approves from the page; the gated module then runs and succeeds.
async function approve() {
  const errors = [];
  const viewer = await freshPage(errors);
  await viewer.goto(`${BASE}/?access_token=${encodeURIComponent(env.VIEW)}`, { waitUntil: 'domcontentloaded' });
  await viewer.waitForFunction(() => window.muster && window.muster.ready, { timeout: 15000 });
  await waitForState(viewer, 'deploy', 'awaitingApproval', 20000);
  await viewer.click('[data-module="deploy"]');
  await viewer.waitForFunction(() => /awaiting approval/.test(document.getElementById('log-state').textContent), { timeout: 5000 });
  check(await viewer.evaluate(() => !document.querySelector('form.gate')), 'a viewer sees the Approve form');

  const approver = await freshPage(errors);
  await approver.goto(`${BASE}/?access_token=${encodeURIComponent(env.APPROVER)}`, { waitUntil: 'domcontentloaded' });
  await approver.waitForFunction(() => window.muster && window.muster.ready, { timeout: 15000 });
  await waitForState(approver, 'deploy', 'awaitingApproval', 20000);
  await approver.click('[data-module="deploy"]');
  await approver.waitForSelector('form.gate input[name="ticket"]', { timeout: 5000 });
  // Approving without the input is refused, and says why.
  await approver.click('form.gate button.approve');
  await approver.waitForFunction(() => /needs ticket/.test(document.getElementById('banner').textContent), { timeout: 5000 });
  await approver.type('form.gate input[name="ticket"]', 'OPS-77');
  await shot(approver, 'dashboard-gate.png');
  await approver.click('form.gate button.approve');
  await waitForState(approver, 'deploy', 'succeeded', 20000);
  await waitForState(viewer, 'deploy', 'succeeded', 20000);
  result.banner = await approver.evaluate(() => document.getElementById('banner').textContent);
  check(/deploy approved by alice/.test(result.banner), `the banner said ${result.banner}`);
  for (const e of errors) {
    // The refused approval's 422 is the check above, not the page's error.
    if (!/WebSocket|ERR_CONNECTION_REFUSED|net::|status of 422/.test(e)) failures.push(e);
  }
}

try {
  if (env.SCENARIO === 'live') await live();
  else if (env.SCENARIO === 'approve') await approve();
  else if (env.SCENARIO === 'large') await large();
  else failures.push(`unknown SCENARIO ${env.SCENARIO}`);
} catch (e) {
  failures.push(`${e.name}: ${e.message}`);
} finally {
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
if (failures.length) {
  console.error(failures.map((f) => `FAILED: ${f}`).join('\n'));
  process.exit(1);
}
