// The client's reconnect, resume, token and fallback policy against fake transports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '../../src/index.js';
import { fakeFetch, fakeWebSocket, json, sseBody, until } from './fakes.js';
import { seed } from '../seed.js';

const withId = (text, id) => `${text.slice(0, -1)},"id":"${id}"}`;

/** A client on fakes, recording events, states and token requests. */
function harness({ route = () => json(404, { error: 'Not found' }), ...options } = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const { fetch, requests } = fakeFetch(route);
  const rec = { events: [], resyncs: [], states: [], tokens: [], errors: [], fallbacks: [] };
  const client = connect({
    url: ['http://a.test', 'http://b.test'],
    token: (req) => {
      rec.tokens.push(req);
      return `jwt-${rec.tokens.length}`;
    },
    onEvent: (e) => rec.events.push(e),
    onResync: (e) => rec.resyncs.push(e),
    onStateChange: (s) => rec.states.push(s),
    onError: (e) => rec.errors.push(e),
    onFallback: (f) => rec.fallbacks.push(f),
    WebSocket: FakeWebSocket,
    fetch,
    random: () => 0.5,
    backoff: { baseMs: 2, maxMs: 8 },
    ...options,
  });
  return { client, sockets, requests, rec };
}

const waits = (rec) => rec.states.filter((s) => s.state === 'waiting');

test('WebSocket: typed events with exact data, resume with since on the next node after 1001', async () => {
  const h = harness({ random: () => 0.99, backoff: { baseMs: 60_000, maxMs: 60_000 } });
  const ws = await until(() => h.sockets[0], 'first socket');
  assert.equal(ws.url.origin, 'http://a.test'.replace('http', 'ws'));
  assert.equal(ws.url.pathname, '/ws');
  assert.equal(ws.url.searchParams.get('access_token'), 'jwt-1');
  assert.equal(ws.url.searchParams.has('since'), false);
  ws.open();
  ws.send(withId(seed.message, 'id-1'));
  ws.send(withId(seed.notification, 'id-2'));
  ws.send('{"type":"brand-new","data":[1.0]}');
  assert.deepEqual(h.rec.events.map((e) => e.type), ['message', 'notification', 'brand-new']);
  assert.equal(h.rec.events[0].data.text, 'testing12345678901234');
  assert.equal(h.rec.events[0].rawData, JSON.stringify(JSON.parse(seed.message).data));
  assert.equal(h.rec.events[2].rawData, '[1.0]');
  assert.equal(h.client.lastEventId, 'id-2');
  ws.serverClose(1001, 'going away');
  // 1001: the first retry is immediate (a backoff here would be ~59 s), on the other node.
  const ws2 = await until(() => h.sockets[1], 'reconnect after 1001');
  assert.equal(waits(h.rec).at(-1).delay, 0);
  assert.equal(ws2.url.host, 'b.test');
  assert.equal(ws2.url.searchParams.get('since'), 'id-2');
  assert.equal(h.rec.tokens.length, 2);
  assert.equal(h.rec.tokens[1].refresh, false);
  await h.client.close();
  assert.equal(h.rec.states.at(-1).state, 'closed');
  assert.equal(ws2.closedByClient, true);
});

test('typed handlers by type; a throwing handler is reported and the stream goes on', async () => {
  const got = [];
  const h = harness({
    on: {
      message: (e) => got.push(`m:${e.data.id}`),
      'new-conversation': (e) => got.push(`c:${e.data.participants.length}`),
      notification: () => {
        throw new Error('app bug');
      },
    },
  });
  const ws = await until(() => h.sockets[0], 'socket');
  ws.open();
  ws.send(seed.message);
  ws.send(seed.notification);
  ws.send(seed.newConversation);
  assert.deepEqual(got, ['m:1173', 'c:2']);
  assert.equal(h.rec.errors.length, 1);
  assert.equal(h.rec.events.length, 3);
  await h.client.close();
});

test('4001 and 4003 ask the token provider for fresh credentials; 4000 does not', async () => {
  const h = harness();
  for (const [i, code] of [4001, 4000, 4003].entries()) {
    const ws = await until(() => h.sockets[i], `socket ${i}`);
    ws.open();
    ws.serverClose(code);
  }
  await until(() => h.sockets[3], 'socket after 4003');
  assert.deepEqual(
    h.rec.tokens.map((t) => [t.refresh, t.reason]),
    [[false, 'connect'], [true, 'close 4001'], [false, 'close 4000'], [true, 'close 4003']],
  );
  assert.equal(h.sockets[3].url.searchParams.get('access_token'), 'jwt-4');
  await h.client.close();
});

test('full-jitter backoff grows while failing and resets once a stream opened', async () => {
  // Every upgrade fails and the probe finds no server: network failures, no fallback.
  const h = harness({
    route: () => {
      throw new TypeError('connection refused');
    },
  });
  for (let i = 0; i < 5; i++) (await until(() => h.sockets[i], `socket ${i}`)).serverClose(1006);
  const ws = await until(() => h.sockets[5], 'socket 5');
  // random = 0.5: half of min(8, 2 * 2^attempt)
  assert.deepEqual(waits(h.rec).map((w) => w.delay), [1, 2, 4, 4, 4]);
  assert.deepEqual(h.rec.fallbacks, []);
  ws.open();
  ws.serverClose(1006); // dropped after opening
  await until(() => h.sockets[6], 'socket 6');
  assert.equal(waits(h.rec).at(-1).delay, 1);
  await h.client.close();
});

test('a refused upgrade whose probe gets 401 refreshes the token and does not fall back', async () => {
  const h = harness({
    route: () => json(401, { error: 'Invalid credentials' }),
  });
  (await until(() => h.sockets[0], 'socket 0')).serverClose(1006);
  await until(() => h.sockets[1], 'socket 1');
  assert.deepEqual(h.rec.tokens.at(-1), { refresh: true, reason: 'http 401' });
  assert.deepEqual(h.rec.fallbacks, []);
  // The probe asked /sse with the same credentials.
  assert.equal(h.requests[0].url.pathname, '/sse');
  assert.equal(h.requests[0].url.searchParams.get('access_token'), 'jwt-1');
  await h.client.close();
});

test('upgrades refused while HTTP works: fall back to SSE after 2 attempts, resume with since', async () => {
  const streams = [];
  const h = harness({
    route: (url, init) => {
      const s = sseBody(init.signal);
      streams.push({ url, ...s });
      return s.response;
    },
  });
  const ws = await until(() => h.sockets[0], 'socket 0');
  ws.open();
  ws.send(withId(seed.message, 'id-1'));
  ws.serverClose(1006);
  // From now on every upgrade fails: probe answers 200 twice, then SSE.
  (await until(() => h.sockets[1], 'socket 1')).serverClose(1006);
  (await until(() => h.sockets[2], 'socket 2')).serverClose(1006);
  await until(() => h.rec.fallbacks.length, 'fallback');
  assert.deepEqual(h.rec.fallbacks, [{ from: 'websocket', to: 'sse' }]);
  assert.equal(waits(h.rec).at(-1).delay, 0);
  const stream = await until(() => streams[2], 'SSE request');
  assert.equal(stream.url.pathname, '/sse');
  assert.equal(stream.url.searchParams.get('since'), 'id-1');
  stream.write('retry: 1000\n\n');
  await until(() => h.client.state === 'open', 'SSE open');
  stream.write(`id: id-2\ndata: ${withId(seed.newConversation, 'id-2')}\n\n: ping\n\n`);
  await until(() => h.rec.events.length === 2, 'SSE event');
  assert.equal(h.rec.events[1].rawData, seed.newConversation.slice(seed.newConversation.indexOf('"data":') + 7, -1));
  // The server ends the stream for a token expiry: new token, resume on SSE.
  stream.write('event: close\ndata: {"code":4001,"reason":"credentials expired"}\n\n');
  const next = await until(() => streams[3], 'SSE after 4001');
  assert.equal(next.url.searchParams.get('since'), 'id-2');
  assert.deepEqual(h.rec.tokens.at(-1), { refresh: true, reason: 'close 4001' });
  assert.equal(h.sockets.length, 3, 'stays on SSE after the fallback');
  await h.client.close();
});

test('SSE: 429 waits Retry-After; silence beyond the heartbeat timeout reconnects', async () => {
  let n = 0;
  const streams = [];
  const h = harness({
    transports: ['sse'],
    heartbeatTimeoutMs: 50,
    route: (url, init) => {
      n += 1;
      if (n === 1) return json(429, { error: 'Too many connections' }, { 'retry-after': '0.02' });
      const s = sseBody(init.signal);
      streams.push(s);
      return s.response;
    },
  });
  const s = await until(() => streams[0], 'stream after 429');
  assert.equal(waits(h.rec)[0].delay, 20);
  s.write('retry: 1000\n\n');
  // Nothing more: the heartbeat timeout ends the attempt.
  await until(() => streams[1], 'reconnect after silence');
  assert.equal(waits(h.rec)[1].reason, 'heartbeat timeout');
  await h.client.close();
});

test('SSE whose body never streams (buffering proxy) falls back to long-poll', async () => {
  const polls = [];
  const h = harness({
    transports: ['sse', 'poll'],
    openTimeoutMs: 30,
    route: (url, init) => {
      if (url.pathname === '/sse') return sseBody(init.signal).response; // headers, then nothing
      polls.push(url);
      if (polls.length === 1) return json(200, { events: [] });
      if (polls.length === 2) return new Response(`{"events":[${withId(seed.message, 'p-1')},{"type":"resync","data":{"reason":"trimmed"},"id":"p-9"}]}`);
      return new Promise(() => {}); // the next poll hangs until close()
    },
  });
  await until(() => polls.length === 3, 'three polls');
  assert.deepEqual(h.rec.fallbacks, [{ from: 'sse', to: 'poll' }]);
  assert.equal(polls[0].searchParams.has('since'), false);
  assert.equal(polls[0].searchParams.get('timeout'), '25000ms');
  assert.equal(polls[1].searchParams.has('since'), false);
  assert.equal(h.rec.events.length, 1);
  assert.equal(h.rec.resyncs.length, 1);
  assert.equal(h.rec.resyncs[0].data.reason, 'trimmed');
  assert.equal(polls[2].searchParams.get('since'), 'p-9', 'resumes after the resync id');
  await h.client.close();
});

test('close() during a backoff wait stops at once and makes no further attempt', async () => {
  const h = harness({ backoff: { baseMs: 60_000, maxMs: 60_000 }, route: () => json(503, { error: 'x' }) });
  (await until(() => h.sockets[0], 'socket')).serverClose(1006);
  await until(() => h.client.state === 'waiting', 'waiting');
  await h.client.close();
  assert.equal(h.client.state, 'closed');
  assert.equal(h.sockets.length, 1);
});

test('long-poll: an answer with close 4003 delivers its events, then refreshes the token', async () => {
  const polls = [];
  const h = harness({
    transports: ['poll'],
    route: (url) => {
      polls.push(url);
      if (polls.length === 1) {
        return new Response(`{"events":[${withId(seed.notification, 'n-1')}],"close":{"code":4003,"reason":"disconnected"}}`);
      }
      return new Promise(() => {});
    },
  });
  await until(() => polls.length === 2, 'the poll after 4003');
  assert.deepEqual(h.rec.events.map((e) => e.id), ['n-1']);
  assert.deepEqual(h.rec.tokens.at(-1), { refresh: true, reason: 'close 4003' });
  assert.equal(polls[1].searchParams.get('since'), 'n-1');
  assert.equal(polls[1].searchParams.get('access_token'), 'jwt-2');
  await h.client.close();
});
