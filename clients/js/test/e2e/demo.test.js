// `--dev`: GET / serves the demo page, which shows the printed user's live events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { jwt, publish, setup, startGateway } from './harness.js';
import { seed } from '../seed.js';

// The embedded broker, as `make run`; no page server: the gateway serves the page.
const env = setup({ redis: false, gateway: { args: ['--dev'] }, pages: false });

test('the dev page shows a published seed event, data byte-exact', async () => {
  const page = await env.browser.newPage();
  page.setDefaultTimeout(20_000);
  await page.goto(`${env.gw.url}/#access_token=${jwt(9)}`);
  await page.locator('#status[data-state=open]').waitFor();
  await publish(env.gw, [9], seed.message);
  const shown = await page.locator('#events li pre').first().textContent();
  const data = seed.message.slice(seed.message.indexOf('"data":') + 7, -1);
  assert.ok(shown.includes(`"data":${data}`), shown);
  assert.equal(await page.locator('#events li .type').first().textContent(), 'message');
  await page.close();
});

test('the page is served with the client files as they are in clients/js/src', async () => {
  const served = await (await fetch(`${env.gw.url}/client/transports.js`)).text();
  assert.equal(served, readFileSync(new URL('../../src/transports.js', import.meta.url), 'utf8'));
  const res = await fetch(`${env.gw.url}/`);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.match(await res.text(), /import \{ connect \} from '\/client\/index.js'/);
});

test('without --dev there is no page', async () => {
  const prod = await startGateway({});
  try {
    assert.equal((await fetch(`${prod.url}/`)).status, 404);
    assert.equal((await fetch(`${prod.url}/client/index.js`)).status, 404);
  } finally {
    await prod.stop();
  }
});
