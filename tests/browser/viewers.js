// Dashboard viewers for the benchmark (bench/src/dashboard.rs): opens
// VIEWERS pages of the live dashboard at URL (with its ?access_token=) in
// one headless Chromium, prints `READY` once every page has its first
// render, then waits for a line on stdin; then prints `LATENCIES <json>`:
// each page's milliseconds from a module's change at the hub (its
// record's time) to the page's DOM, for the changes that arrived live.

import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

const url = process.env.URL;
const count = Number(process.env.VIEWERS || 1);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--headless=new', '--disable-gpu', '--disable-dev-shm-usage'],
});
const errors = [];
const pages = [];
for (let i = 0; i < count; i++) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  pages.push(page);
}
for (const page of pages) {
  await page.waitForFunction(() => window.muster && window.muster.ready, { timeout: 30000 });
}
console.log('READY');

const lines = readline.createInterface({ input: process.stdin });
await new Promise((resolve) => {
  lines.once('line', resolve);
  lines.once('close', resolve);
});
// The last changes may still be on their way to the DOM.
await new Promise((r) => setTimeout(r, 500));
const latencies = [];
for (const page of pages) {
  latencies.push(await page.evaluate(() => window.muster.latencies.slice()));
}
console.log(`LATENCIES ${JSON.stringify({ latencies, errors })}`);
await browser.close();
process.exit(0);
