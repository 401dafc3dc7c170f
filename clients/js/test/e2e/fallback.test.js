// WebSocket upgrades refused by a proxy: the page falls back to SSE and loses nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, openClientPage, publish, serves, setup, upgradeRefusingProxy } from './harness.js';
import { seed } from '../seed.js';

const dataOf = (text) => text.slice(text.indexOf('"data":') + '"data":'.length, -1);
const env = setup({ gateway: {} });

test('upgrades answered 403: fallback to SSE, nothing lost across the fallback and a dropped stream', async () => {
  assert.ok(await serves(env.gw, '/sse'), 'the gateway does not serve /sse (issue 12 item 1 not on this branch)');
  const proxy = await upgradeRefusingProxy(env.gw.url);
  try {
    // The page resumes from an id it kept; events published while its upgrades are refused
    // must all arrive once it is on SSE.
    const start = (await publish(env.gw, [9], seed.message))['9'];
    const c = await openClientPage(env.browser, env.pages.url, { url: proxy.url, lastEventId: start });
    const expected = [];
    for (const text of [seed.message, seed.newConversation, seed.notification]) {
      expected.push({ id: (await publish(env.gw, [9], text))['9'], rawData: dataOf(text) });
    }
    const first = await eventually(async () => {
      const e = await c.events();
      return e.length >= 3 && e;
    }, 'the seed events over SSE');
    assert.deepEqual(first.map(({ id, rawData }) => ({ id, rawData })), expected);
    assert.ok(first.every((e) => e.transport === 'sse'), JSON.stringify(first.map((e) => e.transport)));
    assert.deepEqual(await c.fallbacks(), [{ from: 'websocket', to: 'sse' }]);
    assert.ok(proxy.upgradesRefused() >= 2, `upgrades refused: ${proxy.upgradesRefused()}`);

    // The proxy cuts the stream while events keep coming: the client resumes with `since`.
    for (let i = 0; i < 10; i++) {
      if (i === 3) proxy.dropAll();
      expected.push({ id: (await publish(env.gw, [9], `{"type":"message","location":"/conversations/1","data":{"seq":${i}}}`))['9'], rawData: `{"seq":${i}}` });
      await new Promise((r) => setTimeout(r, 20));
    }
    const all = await eventually(async () => {
      const e = await c.events();
      return e.length >= expected.length && e;
    }, 'every event after the dropped stream');
    assert.deepEqual(all.map(({ id, rawData }) => ({ id, rawData })), expected);
    await c.close();
  } finally {
    await proxy.close();
  }
});
