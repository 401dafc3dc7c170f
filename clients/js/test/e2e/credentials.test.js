// Credentials in a real browser: a refused token (401, which browsers hide from WebSocket
// scripts) and a backend disconnect (4003) both make the client ask for fresh credentials.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { API_KEY, eventually, openClientPage, publish, setup } from './harness.js';
import { seed } from '../seed.js';

const env = setup({ gateway: {} });

test('401 on the WebSocket upgrade: fresh token, stays on WebSocket (no fallback)', async () => {
  const c = await openClientPage(env.browser, env.pages.url, { url: env.gw.url, badFirstToken: true });
  await eventually(async () => (await c.states()).some((s) => s.state === 'open'), 'open');
  assert.deepEqual((await c.tokenRequests()).map((r) => [r.refresh, r.reason]), [[false, 'connect'], [true, 'http 401']]);
  assert.deepEqual(await c.fallbacks(), []);
  assert.equal(await c.page.evaluate(() => window.client.transport), 'websocket');
  await c.close();
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: POST /v1/disconnect (4003) makes the client fetch fresh credentials and resume`, async () => {
    const anchor = (await publish(env.gw, [9], seed.message))['9'];
    const c = await openClientPage(env.browser, env.pages.url, { url: env.gw.url, transports: [transport], lastEventId: anchor });
    const first = (await publish(env.gw, [9], seed.notification))['9'];
    await eventually(async () => (await c.events()).length === 1, 'the first event');
    const res = await fetch(`${env.gw.admin}/v1/disconnect`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: '{"users":[9]}',
    });
    assert.equal(res.status, 200, await res.text());
    await eventually(async () => (await c.tokenRequests()).some((r) => r.refresh && r.reason === 'close 4003'), 'a token refresh after 4003');
    const second = (await publish(env.gw, [9], seed.newConversation))['9'];
    const got = await eventually(async () => {
      const e = await c.events();
      return e.length >= 2 && e;
    }, 'the event after the reconnect');
    assert.deepEqual(got.map((e) => e.id), [first, second]);
    await c.close();
  });
}
