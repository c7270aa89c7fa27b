// Checks the dashboard page's live side against a stand-in hub: a small
// HTTP server with a hand-made WebSocket at /dashboard/feed that speaks
// the feed's messages (hello, records, workers, log, error) as scripted
// here. No muster binary is needed; live.js checks the real hub.
//
//   cd tests/browser && npm install && node feed_check.js
//
// CHROMIUM: the browser to drive (default /usr/bin/chromium).
// SCREENSHOT_DIR: where screenshots go (default a fresh temp dir).

import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
const PAGE = readFileSync(resolve(here, '../../hub/src/dashboard/page.html'), 'utf8');
const shots = process.env.SCREENSHOT_DIR || join(mkdtempSync(join(tmpdir(), 'muster-feed-')), 'screenshots');
mkdirSync(shots, { recursive: true });

const failures = [];
function check(ok, what) {
  if (ok) console.log(`  ok   ${what}`);
  else { console.log(`  FAIL ${what}`); failures.push(what); }
}
const sleep = ms => new Promise(r => setTimeout(r, ms));

// ---------- a minimal WebSocket server (RFC 6455, text frames only) ----------

function frameOf(opcode, payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, n])
    : n < 65536 ? Buffer.from([0x80 | opcode, 126, n >> 8, n & 255])
      : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
  return Buffer.concat([head, payload]);
}

class Peer {
  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.got = [];
    this.closed = false;
    socket.on('data', d => { this.buf = Buffer.concat([this.buf, d]); this.read(); });
    socket.on('close', () => { this.closed = true; });
    socket.on('error', () => { this.closed = true; });
  }
  read() {
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      const op = b[0] & 15;
      let n = b[1] & 127, at = 2;
      if (n === 126) { if (b.length < 4) return; n = b.readUInt16BE(2); at = 4; }
      else if (n === 127) { if (b.length < 10) return; n = Number(b.readBigUInt64BE(2)); at = 10; }
      const masked = b[1] & 128;
      if (b.length < at + (masked ? 4 : 0) + n) return;
      const mask = masked ? b.subarray(at, at + 4) : null;
      at += masked ? 4 : 0;
      const data = Buffer.from(b.subarray(at, at + n));
      if (mask) for (let i = 0; i < n; i++) data[i] ^= mask[i & 3];
      this.buf = b.subarray(at + n);
      if (op === 1) this.got.push(JSON.parse(data.toString('utf8')));
      else if (op === 8) this.close(1000);
      else if (op === 9) this.socket.write(frameOf(10, data));
    }
  }
  send(obj) { if (!this.closed) this.socket.write(frameOf(1, Buffer.from(JSON.stringify(obj)))); }
  close(code) {
    if (this.closed) return;
    const p = Buffer.alloc(2);
    p.writeUInt16BE(code);
    this.socket.write(frameOf(8, p));
    this.closed = true;
    setTimeout(() => this.socket.destroy(), 50);
  }
}

// ---------- the stand-in hub ----------

const hub = {
  role: 'operator',
  refuse: false, // answer the feed with a 401, as a hub without a token does
  peers: [],
  onPeer: null,
  cancels: [],
};
const server = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8',
      'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" });
    return res.end(PAGE);
  }
  if (req.url === '/dashboard/feed') {
    res.writeHead(hub.refuse ? 401 : 400, { 'content-type': 'text/plain' });
    return res.end(hub.refuse ? 'refused' : 'this endpoint takes a WebSocket upgrade');
  }
  if (req.method === 'POST' && req.url === '/dashboard/cancel') {
    let body = '';
    req.on('data', d => { body += d; });
    req.on('end', () => {
      hub.cancels.push({ header: req.headers['x-muster-dashboard'], type: req.headers['content-type'], body });
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'cancelling', reason: 'cancelled from the dashboard by 127.0.0.1' }));
    });
    return;
  }
  res.writeHead(404);
  res.end();
});
server.on('upgrade', (req, socket) => {
  if (hub.refuse || req.url !== '/dashboard/feed') {
    socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  const peer = new Peer(socket);
  hub.peers.push(peer);
  if (hub.onPeer) hub.onPeer(peer);
});
await new Promise(r => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

// ---------- the run the stand-in hub tells ----------

const T0 = Date.now() - 60000;
let seq = 0;
const rec = (at, type, fields) => ({ v: 1, seq: ++seq, at, type, ...fields });
const history = [
  rec(T0, 'runStarted', { runId: 'live-run-1', pipeline: 'live.toml', musterVersion: '0.1.0', stint: 1, epoch: 0, planDigest: 'p1',
    modules: [{ id: 'prepare', digest: 'a', parts: {} }, { id: 'build', digest: 'b', parts: {}, needs: ['prepare'] },
      { id: 'test', digest: 'c', parts: {}, needs: ['build'] }], settings: { failFast: false, maxWorkerLosses: 3 } }),
  rec(T0 + 10, 'workerJoined', { name: 'local-1', capabilities: ['linux'], slots: 2 }),
  rec(T0 + 11, 'module', { module: 'prepare', state: 'ready' }),
  rec(T0 + 12, 'module', { module: 'prepare', state: 'assigned', attempt: 1, worker: 'local-1' }),
  rec(T0 + 20, 'module', { module: 'prepare', state: 'running', attempt: 1, worker: 'local-1' }),
  rec(T0 + 400, 'module', { module: 'prepare', state: 'succeeded', attempt: 1, worker: 'local-1', exitCode: 0, durationMs: 380 }),
  rec(T0 + 401, 'module', { module: 'build', state: 'ready' }),
  rec(T0 + 402, 'module', { module: 'build', state: 'assigned', attempt: 1, worker: 'local-1' }),
  rec(T0 + 410, 'module', { module: 'build', state: 'running', attempt: 1, worker: 'local-1' }),
];
const workersMsg = () => ({ workers: [{ name: 'local-1', capabilities: ['linux'], slots: 2, running: ['build'], heardMsAgo: 120, connected: true }], serverNow: Date.now() });
function greet(peer, role = hub.role) {
  peer.send({ hello: { role, runId: 'live-run-1', serverNow: Date.now() } });
  peer.send({ records: history.slice(0, 4) });
  peer.send({ records: history.slice(4) });
  peer.send(workersMsg());
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--headless=new'],
  headless: true,
});
async function newPage() {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  const problems = [];
  page.on('console', m => { if (m.type() === 'error' && !/401|WebSocket connection/.test(m.text())) problems.push('console error: ' + m.text()); });
  page.on('pageerror', e => problems.push('page error: ' + e.message));
  page.on('dialog', d => d.accept());
  return { page, problems };
}
const state = (page, id) => page.evaluate(i => document.querySelector(`[data-module="${i}"]`)?.dataset.state, id);
async function until(what, fn, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) { check(true, what); return v; }
    if (Date.now() > end) { check(false, what + ' (timed out)'); return null; }
    await sleep(50);
  }
}

try {
  // (1) an operator follows the run, watches a log and cancels
  {
    hub.onPeer = peer => greet(peer);
    const { page, problems } = await newPage();
    await page.goto(base + '/', { waitUntil: 'load' });
    await page.waitForFunction(() => window.muster.ready, { timeout: 10000 });
    const first = await page.evaluate(() => ({
      records: window.muster.records, lastSeq: window.muster.lastSeq, lat: window.muster.latencies.length,
      runState: document.body.dataset.runState, cancel: !!document.getElementById('cancel')?.offsetParent,
      heartbeat: document.getElementById('workers').textContent, conn: document.getElementById('conn').textContent,
    }));
    check(first.records === history.length && first.lastSeq === history.length, `live: the history is applied (${first.records} records)`);
    check(first.lat === 0, `live: the history is not counted as latency (${first.lat})`);
    check(first.runState === 'running', 'live: the run is running');
    check(first.cancel, 'live: an operator sees the Cancel button');
    check(/120 ms ago/.test(first.heartbeat), 'live: the workers table shows the heartbeat age');
    check(/operator/.test(first.conn), 'live: the connection indicator says live');
    check(await state(page, 'build') === 'running', 'live: build is running');

    const peer = hub.peers.at(-1);
    await page.click('[data-module="build"]');
    await until('live: the page asks to watch build', () => peer.got.some(m => m.watch === 'build'));
    peer.send({ log: { module: 'build', text: 'line one\n\x1b[33mwarning\x1b[0m two\n', reset: true } });
    peer.send({ log: { module: 'build', text: 'line three <b>bold?</b>\n', reset: false } });
    peer.send({ log: { module: 'other', text: 'NOT MINE\n', reset: false } });
    await until('live: the log shows the scrollback and the appended text',
      () => page.evaluate(() => /line one\nwarning two\nline three <b>bold\?<\/b>\n$/.test(document.getElementById('log-text').textContent)));
    check(!(await page.evaluate(() => document.getElementById('log-text').textContent)).includes('NOT MINE'), 'live: another module\'s log is not shown');

    const t = Date.now();
    peer.send({ records: [rec(t, 'module', { module: 'build', state: 'succeeded', attempt: 1, worker: 'local-1', exitCode: 0, durationMs: 900 })] });
    await until('live: a live record changes its box', async () => await state(page, 'build') === 'succeeded');
    const lat = await page.evaluate(() => window.muster.latencies.slice());
    check(lat.length === 1 && lat[0] >= 0 && lat[0] < 1000, `live: its latency is recorded (${JSON.stringify(lat)})`);
    const meta = await page.evaluate(() => document.getElementById('log-meta').textContent);
    check(/exitcode0/.test(meta.replace(/\s/g, '')), 'live: the log panel shows the new exit code');

    peer.send({ error: 'the run\'s journal grew too long for the live page' });
    await until('live: an error frame shows in the banner',
      () => page.evaluate(() => !document.getElementById('banner').hidden && /grew too long/.test(document.getElementById('banner').textContent)));

    await page.click('#cancel');
    await until('live: Cancel posts to /dashboard/cancel', () => hub.cancels.length === 1);
    const c = hub.cancels[0];
    check(c && c.header === '1' && c.type === 'application/json' && JSON.parse(c.body).reason === 'cancelled from the dashboard',
      'live: the cancel request carries X-Muster-Dashboard and a JSON reason');
    await until('live: the cancel answer is shown', () => page.evaluate(() => /cancel: cancelling/.test(document.getElementById('banner').textContent)));

    await page.click('#log-close');
    await until('live: closing the log says watch null', () => peer.got.some(m => m.watch === null));

    // The hub goes away and comes back: the page reconnects and starts over.
    await page.click('[data-module="test"]');
    peer.close(1001);
    await until('live: the page says it is reconnecting',
      () => page.evaluate(() => /disconnected, reconnecting/.test(document.getElementById('banner').textContent)));
    await until('live: the page reconnects', () => hub.peers.length === 2, 4000);
    await until('live: after reconnecting the state is rebuilt from the history',
      async () => await page.evaluate(n => window.muster.records === n, history.length) && await state(page, 'build') === 'running');
    check(hub.peers[1].got.some(m => m.watch === 'test'), 'live: the watched log is asked for again after reconnecting');
    check(await page.evaluate(() => !/reconnecting/.test(document.getElementById('banner').textContent)), 'live: the reconnect notice goes away');

    hub.peers[1].send({ records: [
      rec(Date.now(), 'cancelRequested', { reason: 'cancelled from the dashboard' }),
      rec(Date.now(), 'module', { module: 'build', state: 'cancelled', attempt: 1, worker: 'local-1', reason: 'the run was cancelled' }),
      rec(Date.now(), 'module', { module: 'test', state: 'skipped', reason: 'the run was cancelled' }),
      rec(Date.now(), 'runFinished', { outcome: 'cancelled', cancelled: 'cancelled from the dashboard' }),
    ] });
    await until('live: runFinished sets the run state', () => page.evaluate(() => document.body.dataset.runState === 'cancelled'));
    check(await page.evaluate(() => !document.getElementById('cancel')), 'live: no Cancel button once the run finished');
    await sleep(300);
    await page.screenshot({ path: join(shots, 'live-operator.png'), fullPage: true });
    check(!problems.length, 'live: no errors' + (problems.length ? ': ' + problems.join('; ') : ''));
    await page.close();
  }

  // (2) a viewer does not get the Cancel button
  {
    hub.onPeer = peer => greet(peer, 'viewer');
    const { page, problems } = await newPage();
    await page.goto(base + '/', { waitUntil: 'load' });
    await page.waitForFunction(() => window.muster.ready, { timeout: 10000 });
    check(await page.evaluate(() => !document.getElementById('cancel')), 'viewer: no Cancel button');
    check(!problems.length, 'viewer: no errors' + (problems.length ? ': ' + problems.join('; ') : ''));
    await page.close();
  }

  // (3) a close with code 4401 stops the page
  {
    const before = hub.peers.length;
    hub.onPeer = peer => setTimeout(() => peer.close(4401), 50);
    const { page } = await newPage();
    await page.goto(base + '/', { waitUntil: 'load' });
    await until('refused (4401): the page says access refused',
      () => page.evaluate(() => /access refused: open the URL with \?access_token=/.test(document.getElementById('banner').textContent)));
    await sleep(2500);
    check(hub.peers.length === before + 1, `refused (4401): the page does not reconnect (${hub.peers.length - before} connections)`);
    await page.close();
  }

  // (4) an upgrade answered with 401 (no token): the page finds out why
  {
    hub.refuse = true;
    const { page } = await newPage();
    await page.goto(base + '/', { waitUntil: 'load' });
    await until('refused (401): the page says access refused',
      () => page.evaluate(() => /access refused/.test(document.getElementById('banner').textContent)));
    await page.close();
    hub.refuse = false;
  }

  // (5) a 10,000-module run streamed live: boxes and latencies keep up
  {
    let s5 = 0;
    const r5 = (at, type, fields) => ({ v: 1, seq: ++s5, at, type, ...fields });
    const width = 200, layers = 50, ids = [];
    const modules = [];
    for (let l = 0; l < layers; l++) for (let i = 0; i < width; i++) {
      const id = `l${l}-m${i}`;
      ids.push(id);
      modules.push({ id, digest: 'd', parts: {}, ...(l ? { needs: [`l${l - 1}-m${i}`, `l${l - 1}-m${(i * 7) % width}`] } : {}) });
    }
    const start = r5(Date.now(), 'runStarted', { runId: 'big', pipeline: 'big.toml', musterVersion: '0.1.0', stint: 1, epoch: 0, planDigest: 'big', modules, settings: { failFast: false, maxWorkerLosses: 3 } });
    const names = Array.from({ length: 16 }, (_, i) => `w${i + 1}`);
    let go = null;
    hub.onPeer = peer => {
      peer.send({ hello: { role: 'viewer', runId: 'big', serverNow: Date.now() } });
      peer.send({ records: [start, ...names.map(n => r5(Date.now(), 'workerJoined', { name: n, capabilities: ['linux'], slots: 4 }))] });
      peer.send({ workers: names.map(n => ({ name: n, capabilities: ['linux'], slots: 4, running: [], heardMsAgo: 5, connected: true })), serverNow: Date.now() });
      go = peer;
    };
    const { page, problems } = await newPage();
    await page.goto(base + '/', { waitUntil: 'load' });
    await page.waitForFunction(() => window.muster.ready, { timeout: 20000 });
    // 4 records a module, 40,000 in all, sent as fast as 400 a frame every 25 ms allows.
    const began = Date.now();
    for (let k = 0; k < ids.length; k += 100) {
      const batch = [];
      for (const [j, id] of ids.slice(k, k + 100).entries()) {
        const w = names[(k + j) % names.length], now = Date.now();
        batch.push(r5(now, 'module', { module: id, state: 'ready' }),
          r5(now, 'module', { module: id, state: 'assigned', attempt: 1, worker: w }),
          r5(now, 'module', { module: id, state: 'running', attempt: 1, worker: w }),
          r5(now, 'module', { module: id, state: (k + j) % 97 ? 'succeeded' : 'failed', attempt: 1, worker: w, exitCode: 0, durationMs: 3 }));
      }
      go.send({ records: batch });
      await sleep(25);
    }
    go.send({ records: [r5(Date.now(), 'runFinished', { outcome: 'failed' })] });
    await until('big live: the run finishes on the page', () => page.evaluate(() => document.body.dataset.runState === 'failed'), 20000);
    const took = Date.now() - began;
    const got = await page.evaluate(() => ({
      lat: window.muster.latencies.slice().sort((a, b) => a - b),
      failed: document.querySelectorAll('[data-module][data-state=failed]').length,
      boxes: document.querySelectorAll('[data-module]').length,
    }));
    const q = f => got.lat[Math.min(got.lat.length - 1, Math.floor(got.lat.length * f))];
    console.log(`  ..   big live: 40,000 records in ${took} ms; latency p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${got.lat.at(-1)} ms over ${got.lat.length}`);
    check(got.boxes === 10000 && got.failed === 104, `big live: 10,000 boxes, ${got.failed} failed`);
    check(got.lat.length === 5000, `big live: the last 5,000 latencies are kept (${got.lat.length})`);
    check(q(0.99) < 1000, `big live: the 99th percentile latency is under a second (${q(0.99)} ms)`);
    await sleep(300);
    await page.screenshot({ path: join(shots, 'live-10000.png') });
    check(!problems.length, 'big live: no errors' + (problems.length ? ': ' + problems.join('; ') : ''));
    await page.close();
  }
} catch (e) {
  failures.push('the check itself failed: ' + (e.stack || e));
  console.log(e);
} finally {
  await browser.close();
  server.close();
  for (const p of hub.peers) p.socket.destroy();
}

console.log(`screenshots in ${shots}`);
if (failures.length) {
  console.log(`\n${failures.length} check(s) failed:\n - ` + failures.join('\n - '));
  process.exit(1);
}
console.log('all feed checks passed');
