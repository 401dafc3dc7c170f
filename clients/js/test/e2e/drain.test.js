// A gateway SIGTERM drain moves the page to the other node through the load balancer with 0
// events lost (issue 12): HAProxy running docs/haproxy.cfg unchanged in front of two nodes on
// one Redis, the page given the balancer's URL only. The node the page is on fails /readyz at
// once, HAProxy takes it out of the pool while it still runs (the pre-drain delay), then the
// node ends the page's stream with 1001 and the client reconnects through HAProxy, now to the
// other node, resuming after its last id.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, openClientPage, publish, setup, startGateway } from './harness.js';
import { NODES, startHaproxy } from './haproxy.js';

const env = setup();
// The default pre-drain delay: the health checks of docs/haproxy.cfg (every 1 s, down after
// 2 failures) take the node out of the pool well inside it.
const NODE_ENV = { GATEWAY_PRE_DRAIN_DELAY: '5s', GATEWAY_DRAIN_WINDOW: '500ms' };
/** The gateway's name of each transport in its metrics. */
const LABEL = { websocket: 'ws', sse: 'sse', poll: 'poll' };
const event = (seq) => `{"type":"message","location":"/conversations/1","data":{"seq":${seq}}}`;

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: SIGTERM of the page's node moves it through HAProxy to the other node, 0 events lost`, async () => {
    const nodes = [await startGateway({ redisUrl: env.redis.url, env: NODE_ENV }), await startGateway({ redisUrl: env.redis.url, env: NODE_ENV })];
    let lb;
    try {
      lb = await startHaproxy(nodes);
      const open = (gw) => gw.metric(`gleepost_gateway_transport_connections{transport="${LABEL[transport]}"}`);
      // Resume from an anchor id: the first long-poll answer (which is when poll knows it is
      // through) may come with the first events, and none may be lost before it.
      const anchor = (await publish(nodes[0], [9], event(-1)))['9'];
      const c = await openClientPage(env.browser, env.pages.url, { url: lb.url, transports: [transport], lastEventId: anchor });
      const ids = [];
      const send = async (gw) => {
        ids.push((await publish(gw, [9], event(ids.length)))['9']);
        await new Promise((r) => setTimeout(r, 25));
      };
      for (let i = 0; i < 10; i++) await send(nodes[i % 2]);
      await eventually(async () => (await c.events()).length >= 10, 'the first 10 events');
      // Which node HAProxy sent the page to (a long-poll: the node its waiting poll is on; no
      // event comes until the SIGTERM, so it stays there).
      const counts = await eventually(async () => {
        const seen = (await Promise.all(nodes.map(open))).join();
        return ['1,0', '0,1'].includes(seen) && seen;
      }, "the page's connection on one node");
      const from = counts === '1,0' ? 0 : 1;
      const to = 1 - from;

      const exited = nodes[from].terminate();
      // Publish all along the drain: while the node is still in the pool, once HAProxy took it
      // out (its /readyz answers 503 while it runs), and after it closed the page's stream.
      let down;
      let gone = false;
      exited.then(() => (gone = true));
      // Published through the node that stays; it reaches the other one through Redis.
      for (let i = 0; !gone && i < 1000; i++) {
        await send(nodes[to]);
        const stat = await lb.server(NODES[from]);
        if (!gone && stat.status === 'DOWN') down ??= stat;
      }
      assert.deepEqual(await exited, { code: 0, signal: null }, 'the node drained and exited 0');
      for (let i = 0; i < 10; i++) await send(nodes[to]);

      const got = await eventually(async () => {
        const e = await c.events();
        return e.length >= ids.length && e;
      }, `all ${ids.length} events`, 30_000);
      assert.deepEqual(got.map((e) => e.rawData), ids.map((_, i) => `{"seq":${i}}`), 'in order, none lost, none twice');
      assert.deepEqual(got.map((e) => e.id), ids);
      assert.ok(got.every((e) => e.transport === transport && e.url === `${lb.url}/`), 'one transport, one URL: the balancer');
      assert.deepEqual(
        down && [down.checkStatus, down.checkCode],
        ['L7STS', '503'],
        `HAProxy took ${NODES[from]} out of the pool because /readyz answered 503, before it exited: ${JSON.stringify(down)}`,
      );
      // The page is on the other node now, through the balancer.
      await eventually(async () => (await open(nodes[to])) === 1, `the page's connection on ${NODES[to]}`);
      assert.ok((await lb.server(NODES[to])).sessions >= 1);
      if (transport !== 'poll') {
        // A stream is told why it ends: 1001, and the first retry is immediate.
        const states = await c.states();
        assert.ok(states.some((s) => s.state === 'waiting' && s.reason === 'close 1001' && s.delay === 0), JSON.stringify(states));
      }
      await c.close();
    } finally {
      await lb?.stop();
      for (const gw of nodes) await gw.stop();
    }
  });
}
