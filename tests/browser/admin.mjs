// The admin page in a real browser, against the real daemon and fakewa:
// sign in → create a session → the QR shows → fakewa's phone scans the
// code read from the page → the page shows `connected` and the exact phone
// → reset through the confirm dialog → a new QR → (demo builds) the page's
// "Scan with the demo phone" button pairs it again, and its demo-contact
// form sends a message that reaches a webhook → reset again → the daemon
// restarts → the connection indicator shows `reconnecting`, then `live`.
//
// Run through ./run.sh (it builds the binaries). Every wait is on a
// condition with a timeout. Screenshots: target/browser-screenshots/.
//
// The daemon is a `demo` build (no certificate-chain check) on a temp data
// dir; where that build requires `serve --demo`, it runs its own embedded
// fakewa and the test uses that one's control API.
//
// Environment: WHATSD_BIN, FAKEWA_BIN (built binaries; fakewa only for a
// build without the demo feature), CHROMIUM
// (default /usr/bin/chromium), SCREENSHOTS (output directory).

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '../..');
const WHATSD = process.env.WHATSD_BIN || join(ROOT, 'target/debug/whatsd');
const FAKEWA = process.env.FAKEWA_BIN || join(ROOT, 'target/debug/fakewa');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOTS || join(ROOT, 'target/browser-screenshots');
const ADMIN = 'browser-test-admin-token-0123456789';
const PHONE = '15551234567';
// Pinned so sessions never ask web.whatsapp.com for the version.
const VERSION = '2.3000.1023456789';
const SECOND = 1000;

const children = new Set();
const work = mkdtempSync(join(tmpdir(), 'whatsd-browser-'));

function log(message) {
  console.log(`[${(performance.now() / 1000).toFixed(1)}s] ${message}`);
}

/**
 * Starts a process and resolves once a stdout line matches `ready`, with
 * that match and the lines before it.
 */
async function startProcess(name, command, args, options, ready, timeoutMs) {
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', options.stderr ?? 'inherit'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  // Read every line, also after `ready`: a full pipe would block the process.
  const lines = createInterface({ input: child.stdout });
  const before = [];
  const found = new Promise((ok, fail) => {
    lines.on('line', (line) => {
      const match = ready.exec(line);
      if (match) ok(match);
      else before.push(line);
    });
    child.once('exit', (code, signal) => fail(new Error(`${name} exited (${code ?? signal}) before it was ready`)));
  });
  let timer;
  const timeout = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`${name} not ready within ${timeoutMs / SECOND} s`)), timeoutMs);
  });
  try {
    const match = await Promise.race([found, timeout]);
    return { child, match, before };
  } finally {
    clearTimeout(timer);
  }
}

async function stopProcess(child, signal = 'SIGTERM', timeoutMs = 30 * SECOND) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  let timer;
  await Promise.race([
    exited,
    new Promise((_, fail) => {
      timer = setTimeout(() => fail(new Error(`pid ${child.pid} did not exit within ${timeoutMs / SECOND} s`)), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
}

async function startFakewa() {
  const { child, match } = await startProcess(
    'fakewa',
    FAKEWA,
    ['--listen', '127.0.0.1:0', '--control', '127.0.0.1:0'],
    { env: { ...process.env, RUST_LOG: 'warn' } },
    /^fakewa: whatsapp (\S+) control (\S+)/,
    30 * SECOND,
  );
  return { child, wsUrl: match[1], control: match[2] };
}

function writeConfig(listen, wsUrl) {
  const path = join(work, 'whatsd.toml');
  writeFileSync(
    path,
    `listen = ${JSON.stringify(listen)}\ndata_dir = ${JSON.stringify(join(work, 'data'))}\n\n` +
      `[whatsapp]\nws_url = ${JSON.stringify(wsUrl)}\nversion = ${JSON.stringify(VERSION)}\n\n` +
      `[log]\nfilter = "info,whatsd=debug"\n`,
  );
  return path;
}

// A `demo` build that knows `serve --demo` refuses to start without it;
// it then runs its own embedded fakewa and prints that one's control URL.
const DEMO_FLAG = /--demo\b/.test(spawnSync(WHATSD, ['serve', '--help'], { encoding: 'utf8' }).stdout || '');

async function startDaemon(config, fake) {
  // The daemon takes every WHATSD_* variable as a configuration key.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WHATSD_')));
  env.WHATSD_ADMIN_TOKEN = ADMIN;
  delete env.RUST_LOG;
  delete env.CREDENTIALS_DIRECTORY;
  const stderr = openSync(join(work, 'daemon.log'), 'a');
  const args = ['serve', '--config', config, ...(DEMO_FLAG ? ['--demo'] : [])];
  const { child, match, before } = await startProcess('whatsd', WHATSD, args, { env, stderr }, /^listening on (\S+)/, 60 * SECOND);
  const embedded = before.map((line) => /^demo fakewa control: (\S+)/.exec(line)).find(Boolean);
  return { child, addr: match[1], control: embedded ? embedded[1] : fake.control };
}

async function control(base, path, body) {
  const response = await fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`fakewa ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

/** A webhook endpoint on loopback that keeps the JSON bodies it receives. */
async function startReceiver() {
  const bodies = [];
  const listeners = new Set();
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      response.writeHead(204).end();
      try {
        bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        return;
      }
      for (const listener of listeners) listener();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  /** Resolves with the first body `matches` accepts. */
  const waitFor = (matches, timeoutMs) =>
    new Promise((ok, fail) => {
      const check = () => {
        const found = bodies.find(matches);
        if (!found) return;
        done();
        ok(found);
      };
      const timer = setTimeout(() => {
        done();
        fail(new Error(`no matching webhook within ${timeoutMs / SECOND} s; got ${JSON.stringify(bodies)}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        listeners.delete(check);
      };
      listeners.add(check);
      check();
    });
  return { url: `http://127.0.0.1:${port}/hook`, bodies, waitFor, close: () => server.close() };
}

async function adminApi(base, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: 'Bearer ' + ADMIN, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** The answer to the page's next `method` request to `path`. */
function nextResponse(page, method, path) {
  return page.waitForResponse(
    (r) => r.request().method() === method && new URL(r.url()).pathname === path,
    { timeout: 60 * SECOND },
  );
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, name + '.png'), fullPage: true });
  log(`screenshot ${name}.png`);
}

async function signIn(page, base) {
  await page.goto(base + '/');
  await page.locator('#token').fill(ADMIN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 15 * SECOND });
}

/** Waits for the QR image to carry a code other than `previous`; returns it. */
async function waitForQr(page, previous, timeoutMs) {
  const handle = await page.waitForFunction(
    (old) => {
      const img = document.getElementById('qr');
      const code = img && !img.hidden && img.complete && img.naturalWidth > 0 ? img.dataset.qr : null;
      return code && code !== old ? code : null;
    },
    previous,
    { timeout: timeoutMs, polling: 100 },
  );
  return handle.jsonValue();
}

async function waitForText(locator, text, timeoutMs) {
  await locator.filter({ hasText: text }).first().waitFor({ timeout: timeoutMs });
}

async function main() {
  const started = performance.now();
  rmSync(SHOTS, { recursive: true, force: true });
  mkdirSync(SHOTS, { recursive: true });

  // A demo build brings its own fakewa; any other build needs a separate one.
  const fake = DEMO_FLAG ? { wsUrl: 'ws://127.0.0.1:9/ws/chat', control: null } : await startFakewa();
  if (!DEMO_FLAG) log(`fakewa at ${fake.wsUrl}, control ${fake.control}`);
  let daemon = await startDaemon(writeConfig('127.0.0.1:0', fake.wsUrl), fake);
  const base = 'http://' + daemon.addr;
  log(`whatsd at ${base}; fake phone at ${daemon.control}`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    const desktop = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const phone = await browser.newPage({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    });
    const problems = [];
    for (const [name, page] of [['desktop', desktop], ['phone', phone]]) {
      page.on('pageerror', (e) => problems.push(`${name}: page error: ${e.message}`));
      page.on('console', (m) => {
        if (m.type() === 'error' && !/Failed to load resource|WebSocket connection/.test(m.text())) {
          problems.push(`${name}: console error: ${m.text()}`);
        }
      });
    }

    // 1. Sign in. The token never shows up in the URL.
    await desktop.goto(base + '/admin');
    await desktop.locator('#token').waitFor();
    await shot(desktop, '01-sign-in');
    const demoProbe = nextResponse(desktop, 'GET', '/v1/demo');
    await signIn(desktop, base);
    if (desktop.url().includes(ADMIN)) throw new Error('the token leaked into the URL');
    log('signed in, socket live');
    // The page asks whether the daemon demos; only then are the demo controls there.
    const demoStatus = (await demoProbe).status();
    if (demoStatus !== (DEMO_FLAG ? 200 : 404)) throw new Error(`GET /v1/demo answered ${demoStatus}`);
    if (DEMO_FLAG) {
      await waitForText(desktop.getByRole('note', { name: 'Demo mode' }), 'embedded fake WhatsApp server', 5 * SECOND);
      const info = await adminApi(base, 'GET', '/v1/demo');
      if (info.control_url !== daemon.control) throw new Error(`GET /v1/demo: ${JSON.stringify(info)}`);
      log('demo mode: banner shown');
    } else if (await desktop.getByTestId('demo-banner').isVisible()) {
      throw new Error('the demo banner shows without demo mode');
    }

    // 2. Create a session; its first QR arrives over the WebSocket.
    await desktop.locator('#new-id').fill('shop-1');
    await desktop.getByRole('button', { name: 'Create and pair' }).click();
    const firstQr = await waitForQr(desktop, null, 30 * SECOND);
    await waitForText(desktop.locator('#qr-count'), /Code \d+ of about \d+/, 30 * SECOND);
    await waitForText(desktop.locator('#qr-expiry'), /Expires in/, 5 * SECOND);
    log('first QR shown');
    await shot(desktop, '02-qr');
    await signIn(phone, base);
    await phone.getByRole('button', { name: 'shop-1' }).click();
    await waitForQr(phone, null, 10 * SECOND);
    await shot(phone, '02-qr-phone');

    // 3. The phone scans the code the page shows.
    const scanned = await control(daemon.control, '/control/scan', { qr: firstQr, phone: PHONE });
    log(`fakewa paired ${scanned.jid}`);
    for (const page of [desktop, phone]) {
      await waitForText(page.locator('#detail-state'), 'connected', 60 * SECOND);
      await waitForText(page.locator('#linked-phone'), '+' + PHONE, 5 * SECOND);
      await waitForText(page.locator('#linked-jid'), scanned.jid, 5 * SECOND);
      await waitForText(page.locator('#session-rows tr[data-id="shop-1"] td'), '+' + PHONE, 5 * SECOND);
      if (await page.locator('#qr').isVisible()) throw new Error('the QR is still visible after pairing');
    }
    await waitForText(desktop.locator('#transitions li'), 'qr → paired', 5 * SECOND);
    log('page shows connected with the phone');
    await shot(desktop, '03-connected');
    await shot(phone, '03-connected-phone');

    // 3b. A send takes a token: the page shows the buckets live.
    await waitForText(desktop.locator('#limits-body [data-bucket="sends_per_minute"] .count'), '20 / 20', 10 * SECOND);
    await adminApi(base, 'POST', '/v1/sessions/shop-1/messages', { to: '15557000001', text: 'limits' });
    await waitForText(desktop.locator('#limits-body [data-bucket="sends_per_minute"] .count'), '19 / 20', 20 * SECOND);
    await waitForText(desktop.locator('#limits-body [data-bucket="sends_per_day"] .count'), '999 / 1000', 5 * SECOND);
    await waitForText(desktop.locator('#limits-body [data-bucket="sends_per_minute"] .why'), 'full in', 5 * SECOND);
    log('page shows the rate-limit buckets');
    await shot(desktop, '03b-limits');

    // An API error is shown with its code.
    await desktop.locator('#new-id').fill('shop-1');
    await desktop.getByRole('button', { name: 'Create and pair' }).click();
    await waitForText(desktop.locator('#error'), /\[\w+\]/, 5 * SECOND);
    log(`API error shown: ${(await desktop.locator('#error').innerText()).replace(/\s+/g, ' ')}`);
    await desktop.getByRole('button', { name: 'Dismiss' }).click();

    // 4. Reset through the confirm dialog: a new QR replaces the link.
    await desktop.getByRole('button', { name: 'Reset…' }).click();
    const dialog = desktop.locator('#confirm');
    await dialog.waitFor({ state: 'visible', timeout: 5 * SECOND });
    const warning = await dialog.innerText();
    if (!/unlinks/.test(warning) || !/wipes/.test(warning) || !/new QR/.test(warning)) {
      throw new Error('the reset dialog does not say what reset does: ' + warning);
    }
    await shot(desktop, '04-reset-confirm');
    await dialog.getByRole('button', { name: 'Reset' }).click();
    await dialog.waitFor({ state: 'hidden', timeout: 5 * SECOND });
    const secondQr = await waitForQr(desktop, firstQr, 30 * SECOND);
    if (secondQr === firstQr) throw new Error('reset did not bring a new QR');
    await waitForQr(phone, firstQr, 10 * SECOND);
    log('reset: a new QR is shown');
    await shot(desktop, '05-new-qr');
    await shot(phone, '05-new-qr-phone');

    let demoContact = null; // the phone of the demo contact who wrote
    if (DEMO_FLAG) {
      // 4b. Pair again with the page's own demo button: the embedded fake
      //     phone scans the QR the session shows.
      const scanAnswer = nextResponse(desktop, 'POST', '/v1/demo/sessions/shop-1/scan');
      await desktop.getByRole('button', { name: 'Scan with the demo phone' }).click();
      const scanResponse = await scanAnswer;
      if (scanResponse.status() !== 200) throw new Error(`demo scan: ${scanResponse.status()} ${await scanResponse.text()}`);
      const demoPaired = await scanResponse.json();
      if (!/^\d+$/.test(demoPaired.phone || '')) throw new Error('demo scan answered ' + JSON.stringify(demoPaired));
      log(`demo phone +${demoPaired.phone} scanned from the page: ${demoPaired.jid}`);
      for (const page of [desktop, phone]) {
        await waitForText(page.locator('#detail-state'), 'connected', 60 * SECOND);
        await waitForText(page.locator('#linked-phone'), '+' + demoPaired.phone, 5 * SECOND);
        await waitForText(page.locator('#session-rows tr[data-id="shop-1"] td'), '+' + demoPaired.phone, 5 * SECOND);
        await page.getByTestId('demo-text').waitFor({ timeout: 5 * SECOND });
        if (await page.getByTestId('demo-scan').isVisible()) throw new Error('the demo scan button outlived pairing');
      }
      log('page shows connected with the demo phone');
      await shot(desktop, '05b-demo-paired');
      await shot(phone, '05b-demo-paired-phone');

      // 4c. A demo contact messages the session from the page; the message
      //     id the API answers shows on the page and reaches a webhook.
      const receiver = await startReceiver();
      await adminApi(base, 'PUT', '/v1/sessions/shop-1/webhooks/browser', {
        url: receiver.url, secret: 'browser-test-webhook-secret-0123456789', events: ['message.received'],
      });
      await desktop.getByTestId('demo-send').click();
      await waitForText(desktop.locator('#error'), '[missing_text]', 5 * SECOND);
      await desktop.getByRole('button', { name: 'Dismiss' }).click();
      const text = 'Hello from the browser test ' + Date.now();
      await desktop.getByLabel('Message text').fill(text);
      if ((await desktop.getByTestId('demo-text').inputValue()) !== text) throw new Error('demo-text is not labelled "Message text"');
      const sendAnswer = nextResponse(desktop, 'POST', '/v1/demo/sessions/shop-1/messages');
      await desktop.getByTestId('demo-send').click();
      const sendResponse = await sendAnswer;
      if (sendResponse.status() !== 200) throw new Error(`demo message: ${sendResponse.status()} ${await sendResponse.text()}`);
      const sent = await sendResponse.json();
      if (!sent.id || sent.to !== demoPaired.phone) throw new Error('demo message answered ' + JSON.stringify(sent));
      await waitForText(desktop.getByTestId('demo-sent'), sent.id, 5 * SECOND);
      if (await desktop.locator('#error').isVisible()) throw new Error('an error shows after sending');
      log(`page shows demo message ${sent.id} sent from +${sent.from}`);
      const hook = await receiver.waitFor((b) => b.data && b.data.message_id === sent.id, 60 * SECOND);
      if (hook.session !== 'shop-1' || hook.data.text !== text || hook.data.sender.phone !== sent.from) {
        throw new Error('the webhook got ' + JSON.stringify(hook));
      }
      log(`webhook got ${hook.type} ${hook.data.message_id}: ${JSON.stringify(hook.data.text)}`);
      await shot(desktop, '05c-demo-message');

      // 4c''. The recent-messages panel: the text arrived over the event
      //       WebSocket (on both pages); then the demo contact sends the
      //       built-in picture from the page's button, and its thumbnail
      //       loads through the authenticated media route (a blob: URL).
      for (const page of [desktop, phone]) {
        await waitForText(page.locator(`#recent-list li[data-id="${sent.id}"] .text`), text, 10 * SECOND);
      }
      const caption = 'A receipt from the browser test ' + Date.now();
      await desktop.getByLabel('Message text').fill(caption);
      const imageAnswer = nextResponse(desktop, 'POST', '/v1/demo/sessions/shop-1/messages');
      const mediaAnswer = desktop.waitForResponse(
        (r) => r.request().method() === 'GET' && /^\/v1\/sessions\/shop-1\/messages\/[^/]+\/media$/.test(new URL(r.url()).pathname),
        { timeout: 60 * SECOND },
      );
      await desktop.getByRole('button', { name: 'Send a picture' }).click();
      const imageResponse = await imageAnswer;
      if (imageResponse.status() !== 200) throw new Error(`demo picture: ${imageResponse.status()} ${await imageResponse.text()}`);
      const picture = await imageResponse.json();
      const pictureRow = desktop.locator(`#recent-list li[data-id="${picture.id}"]`);
      await pictureRow.waitFor({ timeout: 30 * SECOND });
      const thumb = pictureRow.locator('img.thumb');
      await desktop.waitForFunction(
        (id) => {
          const img = document.querySelector(`#recent-list li[data-id="${id}"] img.thumb`);
          return img && !img.hidden && img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:');
        },
        picture.id,
        { timeout: 30 * SECOND, polling: 100 },
      );
      const media = await mediaAnswer;
      if (!new URL(media.url()).pathname.includes(picture.id)) throw new Error('the page fetched ' + media.url());
      if (media.status() !== 200 || media.headers()['content-type'] !== 'image/png') {
        throw new Error(`media download: ${media.status()} ${media.headers()['content-type']}`);
      }
      const size = await thumb.evaluate((img) => [img.naturalWidth, img.getBoundingClientRect().width]);
      if (size[0] !== 96 || Math.round(size[1]) !== 96) throw new Error('thumbnail natural/shown width ' + size);
      await waitForText(pictureRow.locator('.text'), caption, 5 * SECOND);
      if (!(await thumb.getAttribute('alt')).includes('+' + picture.from)) throw new Error('thumbnail alt: ' + (await thumb.getAttribute('alt')));
      // Newest first: the picture above the text.
      const order = await desktop.locator('#recent-list li').evaluateAll((items) => items.map((li) => li.dataset.id));
      if (order[0] !== picture.id || order[1] !== sent.id) throw new Error('recent messages in order ' + order);
      await phone.waitForFunction(
        (id) => {
          const img = document.querySelector(`#recent-list li[data-id="${id}"] img.thumb`);
          return img && img.complete && img.naturalWidth > 0;
        },
        picture.id,
        { timeout: 30 * SECOND, polling: 100 },
      );
      const pictureHook = await receiver.waitFor((b) => b.data && b.data.message_id === picture.id, 60 * SECOND);
      if (pictureHook.data.caption !== caption && pictureHook.data.text !== caption) {
        throw new Error('the picture webhook got ' + JSON.stringify(pictureHook));
      }
      log(`recent messages: text ${sent.id} and picture ${picture.id} (thumbnail ${size[0]} px wide)`);
      await desktop.getByTestId('recent-messages').scrollIntoViewIfNeeded();
      await shot(desktop, '05e-recent-messages');
      receiver.close();

      // 4c'. Groups and contacts: the demo contact who wrote is in the
      //      session's contacts (filtered by the page's `q` box) and in its
      //      CSV download; the demo account is in no groups.
      const groupsStatus = desktop.getByTestId('groups-status');
      await desktop.locator('#groups-status[data-state="ready"]').waitFor({ timeout: 30 * SECOND });
      await waitForText(groupsStatus, 'This account is in no groups.', 5 * SECOND);
      if ((await desktop.locator('#groups-list li').count()) !== 0) throw new Error('groups listed for the demo account');
      const contactRow = desktop.locator(`#contact-rows tr[data-phone="${sent.from}"]`);
      // The directory records the sender as the message arrives: ask again
      // (bounded) until it answers with them.
      await desktop.getByLabel('Filter by phone, LID or name').fill(sent.from);
      for (let attempt = 1; ; attempt++) {
        const answer = nextResponse(desktop, 'GET', '/v1/sessions/shop-1/contacts');
        await desktop.getByRole('button', { name: 'Filter', exact: true }).click();
        const listed = await answer;
        if (listed.status() !== 200) throw new Error(`contacts: ${listed.status()} ${await listed.text()}`);
        try {
          await contactRow.waitFor({ timeout: SECOND });
          break;
        } catch (e) {
          if (attempt >= 20) throw new Error(`contact +${sent.from} not listed: ${await desktop.getByTestId('contacts').innerText()}`);
        }
      }
      await waitForText(contactRow.locator('td[data-label="Phone"]'), '+' + sent.from, 5 * SECOND);
      await waitForText(desktop.getByTestId('contacts-status'), '1 contact.', 5 * SECOND);
      await desktop.getByLabel('Filter by phone, LID or name').fill('no-such-person');
      await desktop.getByRole('button', { name: 'Filter', exact: true }).click();
      await waitForText(desktop.getByTestId('contacts-status'), 'No contact matches', 5 * SECOND);
      await desktop.getByLabel('Filter by phone, LID or name').fill('');
      await desktop.getByRole('button', { name: 'Filter', exact: true }).click();
      await contactRow.waitFor({ timeout: 5 * SECOND });
      demoContact = sent.from;
      log(`page lists contact +${sent.from}; no groups`);
      const downloading = desktop.waitForEvent('download', { timeout: 30 * SECOND });
      await desktop.getByRole('button', { name: 'Download CSV' }).click();
      const download = await downloading;
      const csv = readFileSync(await download.path(), 'utf8');
      if (!csv.startsWith('phone,lid,push_name,groups,first_seen_ms,last_seen_ms')) {
        throw new Error('the CSV download starts with ' + JSON.stringify(csv.slice(0, 80)));
      }
      if (!csv.split(/\r?\n/).some((line) => line.startsWith(sent.from + ','))) {
        throw new Error(`the CSV download has no row for +${sent.from}: ${JSON.stringify(csv.slice(0, 400))}`);
      }
      if (download.suggestedFilename() !== 'contacts-shop-1.csv') throw new Error('CSV named ' + download.suggestedFilename());
      log(`CSV download: ${csv.trim().split(/\r?\n/).length - 1} row(s), ${csv.length} bytes`);
      await desktop.getByTestId('contacts').scrollIntoViewIfNeeded();
      await shot(desktop, '05d-groups-contacts');

      // 4d. Reset again, so that the restart below interrupts a pairing.
      await desktop.getByRole('button', { name: 'Reset…' }).click();
      await dialog.waitFor({ state: 'visible', timeout: 5 * SECOND });
      await dialog.getByRole('button', { name: 'Reset' }).click();
      await dialog.waitFor({ state: 'hidden', timeout: 5 * SECOND });
      for (const page of [desktop, phone]) {
        await waitForQr(page, secondQr, 30 * SECOND);
        await page.getByTestId('demo-scan').waitFor({ timeout: 5 * SECOND });
        if (await page.getByTestId('demo-text').isVisible()) throw new Error('the demo message form outlived the link');
      }
      log('reset again: a new QR and the demo scan button are shown');
    } else {
      for (const id of ['demo-banner', 'demo-scan', 'demo-text', 'demo-send']) {
        if (await desktop.getByTestId(id).isVisible()) throw new Error(`${id} shows without demo mode`);
      }
    }

    // 5. The daemon restarts: the WebSocket drops; the page reconnects
    //    with a fresh ticket and a fresh snapshot, on the same address.
    await stopProcess(daemon.child);
    for (const page of [desktop, phone]) {
      await page.locator('#conn[data-state="reconnecting"]').waitFor({ timeout: 15 * SECOND });
    }
    for (const page of [desktop, phone]) {
      await page.locator('#qr').waitFor({ state: 'hidden', timeout: 5 * SECOND });
    }
    log('daemon stopped: indicator shows reconnecting, no stale QR');
    await shot(desktop, '06-reconnecting');
    await shot(phone, '06-reconnecting-phone');
    daemon = await startDaemon(writeConfig(daemon.addr, fake.wsUrl), fake);
    for (const page of [desktop, phone]) {
      await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30 * SECOND });
      // The pairing under way was interrupted by the restart.
      await waitForText(page.locator('#session-rows tr[data-id="shop-1"] .badge'), 'stopped', 10 * SECOND);
    }
    if (DEMO_FLAG) {
      // The new daemon is asked again; it demos too.
      await desktop.getByTestId('demo-banner').waitFor({ timeout: 10 * SECOND });
    }
    log('daemon restarted: indicator live again, fresh snapshot');
    if (DEMO_FLAG) {
      // A stopped session cannot ask WhatsApp for its groups: the API's 409
      // `not_connected` shows as a sentence; its contacts are still there.
      await desktop.locator('#groups-status[data-state="error"]').waitFor({ timeout: 10 * SECOND });
      await waitForText(desktop.getByTestId('groups-status'), 'it is not connected now', 5 * SECOND);
      // Both pages asked again after the restart: the phone's too lists
      // the demo contact it had not seen yet.
      for (const page of [desktop, phone]) {
        await page.locator(`#contact-rows tr[data-phone="${demoContact}"]`).waitFor({ timeout: 10 * SECOND });
      }
      if (await desktop.locator('#error').isVisible()) throw new Error('not_connected showed as an error');
      log('stopped session: groups say not connected, contacts still listed');
    }
    await shot(desktop, '07-live-again');
    await shot(phone, '07-live-again-phone');

    if (problems.length > 0) throw new Error('the page reported errors:\n' + problems.join('\n'));
    log(`PASS in ${((performance.now() - started) / SECOND).toFixed(1)} s`);
  } catch (e) {
    for (const [i, context] of browser.contexts().entries()) {
      for (const page of context.pages()) {
        await page.screenshot({ path: join(SHOTS, `failed-${i}.png`), fullPage: true }).catch(() => {});
      }
    }
    throw e;
  } finally {
    await browser.close();
  }
}

async function cleanup() {
  for (const child of [...children]) {
    await stopProcess(child, 'SIGTERM', 10 * SECOND).catch(() => child.kill('SIGKILL'));
  }
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const child of children) child.kill('SIGKILL');
    process.exit(130);
  });
}

try {
  await main();
  await cleanup();
  rmSync(work, { recursive: true, force: true });
} catch (e) {
  console.error(e);
  await cleanup();
  try {
    const daemonLog = readFileSync(join(work, 'daemon.log'), 'utf8').split('\n');
    console.error('--- daemon log (tail) ---\n' + daemonLog.slice(-60).join('\n'));
  } catch {
    // no log
  }
  console.error(`(work dir kept: ${work})`);
  process.exit(1);
}
