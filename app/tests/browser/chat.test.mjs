// The chat page (GET /) in Chromium: two people chat, HTML stays text, and a server restart
// loses and duplicates nothing.
//
// Run through app/tests/browser.rs (cargo nextest), which starts `roomcast dev` and sets:
//   ROOMCAST_URL          the server's base URL, e.g. http://127.0.0.1:41234
//   ROOMCAST_CONTROL_URL  POST /stop stops the server (SIGTERM), POST /start starts it again
//                         on the same port and data directory
//   ROOMCAST_SCREENSHOT_DIR (optional) where to save screenshots of both pages

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.ROOMCAST_URL;
const CONTROL = process.env.ROOMCAST_CONTROL_URL;
const SCREENSHOTS = process.env.ROOMCAST_SCREENSHOT_DIR;
const WAIT_MS = 20_000;
const XSS = '<b>bold</b><img src=x onerror=window.__xss=1>';

function launchOptions() {
  return {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  };
}

async function control(action) {
  const response = await fetch(`${CONTROL}/${action}`, { method: 'POST' });
  const body = await response.text();
  assert.equal(response.status, 200, `${action} failed: ${body}`);
  return body;
}

/** Opens the chat in its own browser context (own storage), signs in as `name`, waits until online. */
async function openChat(browser, name, room) {
  const context = await browser.newContext({ viewport: { width: 760, height: 560 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(String(error)));
  await page.goto(`${BASE}/#${room}`);
  const dialog = page.getByTestId('name-dialog');
  await dialog.waitFor({ state: 'visible' });
  // A random default name is offered.
  assert.match(await page.getByTestId('name-input').inputValue(), /\S/);
  await page.getByTestId('name-input').fill(name);
  await page.getByTestId('name-submit').click();
  await waitOnline(page);
  assert.equal(await page.getByTestId('me-name').textContent(), name);
  assert.equal(await page.getByTestId('room-name').textContent(), `#${room}`);
  return page;
}

async function waitOnline(page) {
  await page.waitForSelector('[data-testid="status"][data-state="online"]');
}

/** The delivered messages as rendered: seq, id, sender and text. */
function rendered(page) {
  return page.$$eval('[data-testid="message"]', (items) =>
    items.map((item) => ({
      seq: Number(item.dataset.seq),
      id: item.dataset.id,
      from: item.querySelector('[data-testid="message-from"]').textContent,
      text: item.querySelector('[data-testid="message-text"]').textContent,
    })),
  );
}

/** Waits until the page shows exactly `count` delivered messages and none pending. */
async function waitForCount(page, count) {
  try {
    await page.waitForFunction(
      (n) =>
        document.querySelectorAll('[data-testid="message"]').length === n &&
        document.querySelectorAll('[data-testid="pending-message"]').length === 0,
      count,
    );
  } catch (error) {
    const shown = await rendered(page);
    const pending = await page.$$eval('[data-testid="pending-message"]', (items) =>
      items.map((item) => `${item.dataset.state}: ${item.querySelector('[data-testid="message-text"]').textContent}`),
    );
    const status = await page.getByTestId('status').textContent();
    assert.fail(
      `expected ${count} delivered messages and none pending (${error.message.split('\n')[0]}); ` +
        `status ${JSON.stringify(status)}, delivered ${JSON.stringify(shown)}, pending ${JSON.stringify(pending)}`,
    );
  }
  return rendered(page);
}

/** Asserts seqs 1..n without gap or duplicate, unique ids, and the expected (from, text) pairs. */
function assertHistory(messages, expected, label) {
  assert.deepEqual(
    messages.map((m) => m.seq),
    expected.map((_, i) => i + 1),
    `${label}: seqs must be 1..n in order`,
  );
  assert.equal(new Set(messages.map((m) => m.id)).size, messages.length, `${label}: duplicate ids`);
  assert.deepEqual(
    messages.map((m) => [m.from, m.text]),
    expected,
    `${label}: senders and texts`,
  );
}

async function sendWithEnter(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('message-input').press('Enter');
}

async function sendWithButton(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('send-button').click();
}

async function screenshot(pages, stage) {
  if (!SCREENSHOTS) return;
  for (const [who, page] of Object.entries(pages)) {
    await page.screenshot({ path: join(SCREENSHOTS, `chat-${stage}-${who}.png`) });
  }
}

test('chat page: two people chat, HTML is text, a restart loses and duplicates nothing', async (t) => {
  assert.ok(BASE, 'ROOMCAST_URL is not set: run this through `cargo nextest run -p roomcast-gateway --test browser`');
  assert.ok(CONTROL, 'ROOMCAST_CONTROL_URL is not set: run this through app/tests/browser.rs');

  // Playwright's launch() already uses a fresh temporary profile; keep downloads and the
  // like in a directory of our own too.
  const scratch = mkdtempSync(join(tmpdir(), 'roomcast-browser-'));
  const browser = await chromium.launch({ ...launchOptions(), downloadsPath: scratch });
  t.after(async () => {
    await browser.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  const room = `browser-${Math.random().toString(36).slice(2, 10)}`;
  const alice = await openChat(browser, 'Alice', room);
  const bob = await openChat(browser, 'Bob', room);
  const pages = { alice, bob };

  // Both ways; Enter sends on one page, the button on the other.
  await sendWithEnter(alice, 'Hello Bob!');
  await waitForCount(bob, 1);
  await sendWithButton(bob, 'Hi Alice, good to see you.');
  const expected = [
    ['Alice', 'Hello Bob!'],
    ['Bob', 'Hi Alice, good to see you.'],
  ];
  for (const [who, page] of Object.entries(pages)) {
    assertHistory(await waitForCount(page, 2), expected, who);
    assert.equal(await page.getByTestId('message-input').inputValue(), '', `${who}: input cleared`);
  }

  // User text is text: no element is created and no handler runs.
  await sendWithEnter(alice, XSS);
  expected.push(['Alice', XSS]);
  for (const [who, page] of Object.entries(pages)) {
    assertHistory(await waitForCount(page, 3), expected, who);
    const injected = await page.evaluate(() => ({
      elements: document.querySelectorAll('[data-testid="messages"] b, [data-testid="messages"] img, body img').length,
      xss: typeof window.__xss,
    }));
    assert.deepEqual(injected, { elements: 0, xss: 'undefined' }, `${who}: HTML must render as text`);
  }
  await screenshot(pages, 'before-restart');

  // Stop the server: both pages notice and stop being online.
  for (const page of Object.values(pages)) {
    await page.evaluate(() => {
      const status = document.querySelector('[data-testid="status"]');
      window.__states = [];
      new MutationObserver(() => window.__states.push(status.dataset.state)).observe(status, {
        attributes: true,
        attributeFilter: ['data-state'],
      });
    });
  }
  await control('stop');
  for (const page of Object.values(pages)) {
    await page.waitForSelector('[data-testid="status"]:not([data-state="online"])');
  }

  // Bob writes while the server is down: the message waits, pending.
  await sendWithEnter(bob, 'Sent while the server was down');
  await bob.waitForSelector('[data-testid="pending-message"][data-state="sending"]');
  assert.equal((await rendered(bob)).length, 3, 'nothing is delivered while the server is down');
  await screenshot({ bob }, 'offline');

  // Start it again on the same port and data directory: both pages reconnect by themselves,
  // resume with since = last seq, and Bob's pending message is sent again with the same id.
  assert.equal(await control('start'), BASE);
  for (const page of Object.values(pages)) await waitOnline(page);
  expected.push(['Bob', 'Sent while the server was down']);
  for (const [who, page] of Object.entries(pages)) {
    assertHistory(await waitForCount(page, 4), expected, who);
    const states = await page.evaluate(() => window.__states);
    assert.ok(states.some((s) => s !== 'online'), `${who}: status never left online: ${states}`);
    assert.equal(states.at(-1), 'online', `${who}: status after the restart`);
  }

  // New messages after the restart reach both pages.
  await sendWithButton(alice, 'Welcome back');
  expected.push(['Alice', 'Welcome back']);
  for (const [who, page] of Object.entries(pages)) {
    assertHistory(await waitForCount(page, 5), expected, who);
  }
  await screenshot(pages, 'after-restart');

  // A fresh load replays the stored history once, in order.
  await bob.reload();
  await waitOnline(bob);
  assertHistory(await waitForCount(bob, 5), expected, 'bob after reload');

  for (const [who, page] of Object.entries(pages)) {
    assert.deepEqual(page.errors, [], `${who}: uncaught errors in the page`);
  }
});
