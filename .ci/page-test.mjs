// The page (GET /) in a real browser: Debian's chromium driven by playwright-core.
//
//   node .ci/page-test.mjs http://127.0.0.1:PORT [screenshot dir, default docs]
//
// Against `confirmd demo --serve --smtp-latency 150ms` (CI), whose page has the race, the inbox
// and the outage button beside the signup form. Signs up through the form in sync mode (201,
// with the db/smtp/total Server-Timing on the page), in background mode (202, then the email's
// state turns `sent`), and with a bad address (a readable 422); races 50 signups per mode and
// reads background's p50 below sync's on the page, and a refused race (422); signs up with a
// name full of markup, opens its email in the inbox, follows the link to the confirmation page,
// presses its button, and sees the signup's link confirmed on the page; an invalid link's page;
// a mail server that refuses for a while, and the background email retried, then sent. A
// screenshot of each. Every wait has a deadline; nothing sleeps. Exits non-zero on a failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = process.argv[2];
const shots = process.argv[3] ?? 'docs';
if (!base) {
  console.error('usage: node .ci/page-test.mjs BASE_URL [SCREENSHOT_DIR]');
  process.exit(2);
}
const WAIT_MS = 15_000;
const SENT_WITHIN_MS = 30_000;
const RACE_WITHIN_MS = 120_000;

function check(ok, what) {
  if (!ok) throw new Error(`FAILED: ${what}`);
  console.log(`ok: ${what}`);
}

// Logs a step whose waits above it (textOf, waitFor) already threw if it did not happen.
function passed(what) {
  console.log(`ok: ${what}`);
}

// Waits until the element's text matches, or throws with what it showed last.
async function textOf(page, selector, pattern, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(
      ([sel, src, flags]) => {
        const el = document.querySelector(sel);
        return el && new RegExp(src, flags).test(el.textContent);
      },
      [selector, pattern.source, pattern.flags],
      { timeout, polling: 50 },
    );
  } catch (e) {
    const last = await page.locator(selector).textContent().catch(() => null);
    throw new Error(`${selector} never matched ${pattern} within ${timeout} ms; it shows ${JSON.stringify(last)}`);
  }
  return page.locator(selector).textContent();
}

// `db;dur=1.2, total;dur=3.4` as { db: '1.2 ms', total: '3.4 ms' }, as the page shows them.
function timings(header) {
  const out = {};
  for (const entry of (header ?? '').split(',')) {
    const [name, dur] = entry.trim().split(';dur=');
    if (name && dur) out[name] = `${dur} ms`;
  }
  return out;
}

// Fills the form, submits it, and returns the POST /signups response the browser received.
async function signUp(page, { email, name, mode }) {
  await page.fill('#email', email);
  await page.fill('#name', name);
  await page.check(`input[name=mode][value=${mode}]`);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/signups', { timeout: WAIT_MS }),
    page.click('#submit'),
  ]);
  return response;
}

async function timingsShown(page, response, parts) {
  const sent = timings(await response.headerValue('server-timing'));
  for (const part of parts) {
    check(/^\d+(\.\d+)? ms$/.test(sent[part] ?? ''), `Server-Timing has ${part}: ${sent[part]}`);
    const shown = await textOf(page, `#timing-${part}`, /ms$/);
    check(shown === sent[part], `the page shows ${part} = ${shown}, as the header says`);
  }
  const elapsed = await textOf(page, '#elapsed', /^\d+(\.\d+)? ms$/);
  passed(`the page shows the browser-measured response time: ${elapsed}`);
}

const profile = mkdtempSync(join(tmpdir(), 'confirmd-page-test-'));
// A fresh profile (--user-data-dir), which playwright passes as the persistent context's dir.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 800, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let failed = false;
try {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The browser logs each non-2xx fetch as an error: the 422s asked for below are expected.
  const expected = /^Failed to load resource: the server responded with a status of 422\b/;
  page.on('console', (m) => { if (m.type() === 'error' && !expected.test(m.text())) problems.push(`console error: ${m.text()}`); });
  page.on('dialog', (d) => { problems.push(`a dialog opened: ${d.message()}`); d.dismiss(); });

  const home = await page.goto(`${base}/`, { timeout: WAIT_MS });
  check(home.status() === 200, `GET / answers ${home.status()}`);
  const csp = (await home.headerValue('content-security-policy')) ?? '';
  check(/script-src 'self'(;|$)/.test(csp), `GET / has a CSP that allows no inline script: ${csp}`);
  await page.locator('#signup').waitFor({ timeout: WAIT_MS });
  const ids = await page.evaluate(() => [...document.querySelectorAll('[id]')].map((e) => e.id));
  check(ids.length === new Set(ids).size, 'every id on the page names one element');
  const run = Date.now();
  const evil = '<img src=x onerror=alert(1)>';

  // Sync: 201, with db, smtp and total as the header says.
  let response = await signUp(page, { email: `page-sync-${run}@example.com`, name: evil, mode: 'sync' });
  check(response.status() === 201, `sync signup answered ${response.status()}`);
  await textOf(page, '#status', /^201\b/);
  passed('the page shows 201');
  await timingsShown(page, response, ['db', 'smtp', 'total']);
  const sentBody = await textOf(page, '#sent-body', /^POST \/signups\?mode=sync /);
  check(sentBody.includes(evil), `the form's result shows the name with markup as text: ${sentBody}`);
  await textOf(page, '#state', /^sent$/);
  passed('the page shows the sync email sent');
  await page.screenshot({ path: join(shots, 'page-signup-sync.png'), fullPage: true });

  // Background: 202, then the state followed to `sent`.
  response = await signUp(page, { email: `page-background-${run}@example.com`, name: evil, mode: 'background' });
  check(response.status() === 202, `background signup answered ${response.status()}`);
  await textOf(page, '#status', /^202\b/);
  passed('the page shows 202');
  await timingsShown(page, response, ['db', 'total']);
  check((await page.locator('#timing-smtp').textContent()) === '—', 'no smtp timing for a background signup');
  const states = new Set();
  const sawSent = Date.now() + SENT_WITHIN_MS;
  // Record each state the page shows on the way (queued/sending are often too brief to see).
  for (;;) {
    const state = await page.locator('#state').textContent();
    states.add(state);
    if (state === 'sent') break;
    if (Date.now() > sawSent) throw new Error(`FAILED: the background email never showed sent; states seen: ${[...states]}`);
    await page.waitForFunction((s) => document.querySelector('#state').textContent !== s, state, { timeout: SENT_WITHIN_MS }).catch(() => {});
  }
  passed(`the page followed the background email to sent (states shown: ${[...states].join(' -> ')})`);
  await textOf(page, '#attempts', /^[1-9]\d*$/);
  await page.screenshot({ path: join(shots, 'page-signup-background.png'), fullPage: true });

  // A bad address: a readable 422 with the problem's title and detail.
  response = await signUp(page, { email: 'not-an-email', name: '', mode: 'sync' });
  check(response.status() === 422, `bad email answered ${response.status()}`);
  const problem = await response.json();
  await textOf(page, '#status', /^422\b/);
  check(await page.locator('#problem').isVisible(), 'the problem box is visible');
  const title = await textOf(page, '#problem-title', /\S/);
  const detail = await textOf(page, '#problem-detail', /\S/);
  check(title === problem.title && detail === problem.detail, `the page shows the problem: "${title}: ${detail}"`);
  check(await page.locator('#email-state').isHidden(), 'no email state is shown for a refused signup');
  await page.screenshot({ path: join(shots, 'page-signup-error.png'), fullPage: true });

  // The race: 50 signups per mode, 10 at a time, the mail server answering after 150 ms.
  check(await page.locator('#race').isVisible(), 'the demo shows the race');
  await page.fill('#race-requests', '0');
  await page.click('#race-start');
  await textOf(page, '#race-state', /^refused: 422$/);
  const raceTitle = await textOf(page, '#race-problem-title', /\S/);
  const raceDetail = await textOf(page, '#race-problem-detail', /requests must be between 1 and \d+/);
  passed(`a bad race input shows a readable problem: "${raceTitle}: ${raceDetail}"`);
  await page.fill('#race-requests', '50');
  await page.fill('#race-concurrency', '10');
  await page.fill('#race-latency', '150');
  await page.click('#race-start');
  await textOf(page, '#race-state', /^running$/);
  // Live: a progress event reaches the table before the race's end.
  await textOf(page, '#race-background-answered', /^\d+ of 50$/, RACE_WITHIN_MS);
  check((await page.locator('#race-state').textContent()) !== 'failed', 'the race streams its progress');
  await textOf(page, '#race-state', /^done$/, RACE_WITHIN_MS);
  for (const mode of ['sync', 'background']) {
    await textOf(page, `#race-${mode}-answered`, /^50 of 50$/);
    await textOf(page, `#race-${mode}-sent`, /^50$/);
  }
  const p50 = async (mode) => Number(await textOf(page, `#race-${mode}-p50`, /^\d+(\.\d+)?$/));
  const [syncP50, backgroundP50] = [await p50('sync'), await p50('background')];
  check(syncP50 >= 150, `sync p50 ${syncP50} ms includes the mail server's 150 ms`);
  check(backgroundP50 < syncP50, `background p50 ${backgroundP50} ms is below sync p50 ${syncP50} ms`);
  for (const [id, what] of [['race-chart-latency', 'latency'], ['race-chart-delivery', 'signup→sent']]) {
    check(await page.locator(`#${id}`).isVisible(), `the ${what} chart is shown`);
    check((await page.locator(`#${id} rect`).count()) === 8, `the ${what} chart has a bar per mode and percentile`);
  }
  const reading = await page.locator('#race-reading li').allTextContents();
  check(reading.length >= 2 && reading[0].startsWith('sync: p50') && reading[1].startsWith('background: p50'),
    `the page ends with the demo's plain reading: ${JSON.stringify(reading)}`);
  await textOf(page, '#race-text', /50 signups per mode, 10 at a time/);
  await page.locator('#race').screenshot({ path: join(shots, 'page-race.png') });

  // The inbox: a signup whose name is markup, its email opened, its link followed.
  const address = `page-inbox-${run}@example.com`;
  response = await signUp(page, { email: address, name: evil, mode: 'sync' });
  check(response.status() === 201, `the inbox's signup answered ${response.status()}`);
  await textOf(page, '#link-state', /^pending/, SENT_WITHIN_MS);
  passed('the page found the signup\'s email in the inbox and its link pending');
  const item = page.locator('.mail-item', { hasText: address });
  await item.first().waitFor({ timeout: WAIT_MS });
  await item.first().click();
  await textOf(page, '#mail-to', new RegExp(`^${address.replace(/[.+]/g, '\\$&')}$`));
  await textOf(page, '#mail-subject', /\S/);
  await textOf(page, '#mail-from', /@/);
  await textOf(page, '#mail-text', /\/confirm\?token=/);
  const frame = page.frameLocator('#mail-html');
  await frame.locator('a', { hasText: 'Confirm my email address' }).waitFor({ timeout: WAIT_MS });
  passed('the HTML part shows in its sandboxed frame');
  check((await page.locator('#mail-html').getAttribute('sandbox')) === '', 'the frame allows nothing (no script, no same origin)');
  check((await page.locator('img').count()) === 0, 'no element came from the name with markup');
  await page.locator('#inbox').screenshot({ path: join(shots, 'page-inbox.png') });

  // The link: its page asks, its button confirms, and the signup's link turns confirmed.
  const [confirmPage] = await Promise.all([
    browser.waitForEvent('page', { timeout: WAIT_MS }),
    page.click('#mail-link'),
  ]);
  await confirmPage.waitForLoadState('load', { timeout: WAIT_MS });
  await textOf(confirmPage, 'h1', /^Confirm your email address$/);
  passed('the link opens the confirmation page, with its button');
  await textOf(page, '#link-state', /^pending/);
  passed('opening the link confirmed nothing');
  await confirmPage.click('button[type=submit]');
  await textOf(confirmPage, 'h1', /^Email address confirmed$/);
  await confirmPage.screenshot({ path: join(shots, 'page-confirmed.png') });
  await textOf(page, '#link-state', /^confirmed$/, WAIT_MS);
  passed('the page shows the signup confirmed');
  await page.screenshot({ path: join(shots, 'page-signup-confirmed.png'), fullPage: true });
  const again = await confirmPage.goto(await page.locator('#mail-link').getAttribute('href'), { timeout: WAIT_MS });
  check(again.status() === 200, `the link, opened again, answers ${again.status()}`);
  await textOf(confirmPage, 'h1', /^Already confirmed$/);
  const invalid = await confirmPage.goto(`${base}/confirm?token=not-a-token`, { timeout: WAIT_MS });
  check(invalid.status() === 400, `an invalid link answers ${invalid.status()}`);
  await textOf(confirmPage, 'h1', /^This link is not valid$/);
  const unknown = await confirmPage.goto(`${base}/confirm?token=${'A'.repeat(43)}`, { timeout: WAIT_MS });
  check(unknown.status() === 404, `an unknown link answers ${unknown.status()}`);
  await textOf(confirmPage, 'h1', /^This link is not valid$/);
  await confirmPage.screenshot({ path: join(shots, 'page-link-invalid.png') });
  await Promise.all([
    confirmPage.waitForURL(`${base}/`, { timeout: WAIT_MS }),
    confirmPage.click('text=Sign up again for a new link'),
  ]);
  await confirmPage.locator('#signup').waitFor({ timeout: WAIT_MS });
  passed('an unknown link\'s page leads to the signup form, for a new link');
  await confirmPage.close();

  // A mail server that refuses for 3 s: the background email is retried, then sent.
  await page.click('#outage');
  await textOf(page, '#outage-state', /^refusing/);
  response = await signUp(page, { email: `page-retry-${run}@example.com`, name: 'Retry', mode: 'background' });
  check(response.status() === 202, `the retried signup answered ${response.status()}`);
  await textOf(page, '#state', /^retrying, next attempt at \S/, SENT_WITHIN_MS);
  passed(`the page shows the retry: ${await page.locator('#state').textContent()}`);
  await page.locator('#email-state').screenshot({ path: join(shots, 'page-retrying.png') });
  await textOf(page, '#state', /^sent$/, SENT_WITHIN_MS);
  check(Number(await page.locator('#attempts').textContent()) >= 2, 'sent after more than one attempt');

  check((await page.locator('img').count()) === 0, 'the name with markup was never parsed as HTML');
  check(problems.length === 0, `no script error, CSP violation or dialog: ${JSON.stringify(problems)}`);
  console.log('page test: OK');
} catch (e) {
  failed = true;
  console.error(e.message ?? e);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
