// End-to-end harness: a real redis-server, real gateway processes, a real headless Chromium.
// Every wait is bounded; a missing prerequisite fails with a message saying how to get it.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
/** The repository's root directory. */
export const ROOT = here('../../../../');
export const JWT_SECRET = 'js-e2e-secret-0123456789abcdef0123456789';
export const API_KEY = 'js-e2e-api-key';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const GATEWAY_BIN = process.env.GATEWAY_BIN ?? join(ROOT, 'target/debug/gleepost-gateway');

/** Resolve once `fn()` resolves truthy; reject after `ms` with `what`. */
export async function eventually(fn, what, ms = 15_000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (error) {
      last = error;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});
/** Kill `child` when the test process exits; `child.exited` resolves with its {code, signal}. */
export function track(child) {
  children.add(child);
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.exited.then(() => children.delete(child));
  return child;
}

/** A redis-server on a free port, nothing on disk. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'gp-js-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  const failed = new Promise((_, reject) => child.on('error', (e) => reject(new Error(`redis-server could not start (${e.message}); install it: apt-get install -y redis-server`))));
  track(child);
  await Promise.race([failed, eventually(() => redisPing(port), `redis-server on port ${port}`)]);
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGKILL');
      await child.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      s.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
    s.on('error', () => resolve(false));
  });
}

/** A gateway process on free ports; `env` adds settings. Resolves once /readyz answers 200. */
export async function startGateway({ redisUrl, env = {}, args = [] }) {
  if (!existsSync(GATEWAY_BIN)) {
    throw new Error(`${GATEWAY_BIN} not found: build it first (cargo build --bins), or set GATEWAY_BIN`);
  }
  const child = track(
    spawn(GATEWAY_BIN, ['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--log-format', 'json', ...args], {
      env: {
        PATH: process.env.PATH,
        GATEWAY_JWT_SECRET: JWT_SECRET,
        GATEWAY_API_KEY: API_KEY,
        ...(redisUrl ? { REDIS_URL: redisUrl } : {}),
        GATEWAY_PRE_DRAIN_DELAY: '0s',
        GATEWAY_DRAIN_WINDOW: '500ms',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  child.stdout.resume();
  const addrs = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('gateway printed no "listening" line within 20 s')), 20_000);
    child.on('exit', (code) => reject(new Error(`gateway exited (${code}) before listening`)));
    createInterface({ input: child.stderr }).on('line', (line) => {
      if (process.env.GP_E2E_LOG) process.stderr.write(`[gateway ${child.pid}] ${line}\n`);
      try {
        const v = JSON.parse(line);
        if (v.message === 'listening') {
          clearTimeout(timer);
          resolve({ public: v.public, admin: v.admin });
        }
      } catch {
        // not a log line of ours
      }
    });
  });
  const gw = {
    child,
    url: `http://${addrs.public}`,
    admin: `http://${addrs.admin}`,
    /** The value of `sample` (name and labels as /metrics writes them, e.g. `x{a="b"}`); 0 if absent. */
    async metric(sample) {
      const text = await (await fetch(`${gw.admin}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
      return line === undefined ? 0 : Number(line.slice(sample.length + 1));
    },
    /** SIGTERM: drain, then exit; resolves with the exit status. */
    async terminate() {
      child.kill('SIGTERM');
      return child.exited;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await child.exited;
    },
  };
  await eventually(async () => (await fetch(`${gw.admin}/readyz`)).status === 200, 'gateway /readyz');
  return gw;
}

/** An HS256 JWT for `user`, valid for `ttlSeconds`. */
export function jwt(user, ttlSeconds = 3600) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: String(user), iat: now, exp: now + ttlSeconds })}`;
  return `${head}.${createHmac('sha256', JWT_SECRET).update(head).digest('base64url')}`;
}

/** Publish the event JSON text `event` to `users` through a node's admin API; the ids. */
export async function publish(gw, users, event) {
  const res = await fetch(`${gw.admin}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: `{"users":${JSON.stringify(users)},"event":${event}}`,
  });
  const body = await res.text();
  if (res.status !== 200) throw new Error(`publish: ${res.status} ${body}`);
  return JSON.parse(body).ids;
}

/** Does this gateway serve `path` (the SSE and long-poll endpoints landed later than /ws)? */
export async function serves(gw, path) {
  const res = await fetch(`${gw.url}${path}?access_token=${jwt(9)}&timeout=1ms`);
  await res.body?.cancel();
  return res.status !== 404;
}

/**
 * The test page's origin: serves the client's ES modules under /client/ and test/e2e/page.html.
 */
export async function startPageServer() {
  const files = {
    '/page.html': [here('./page.html'), 'text/html'],
    '/client/index.js': [here('../../src/index.js'), 'text/javascript'],
    '/client/transports.js': [here('../../src/transports.js'), 'text/javascript'],
    '/client/backoff.js': [here('../../src/backoff.js'), 'text/javascript'],
    '/client/json.js': [here('../../src/json.js'), 'text/javascript'],
  };
  const server = http.createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': file[1] }).end(readFileSync(file[0]));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}/page.html`, close: () => new Promise((r) => server.close(r)) };
}

/**
 * A proxy in front of `target` that forwards plain HTTP (streaming) but answers every WebSocket
 * upgrade with 403, as some corporate proxies do. `dropAll()` cuts every open connection.
 */
export async function upgradeRefusingProxy(target) {
  const sockets = new Set();
  const upstream = new URL(target);
  const server = http.createServer((req, res) => {
    const out = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  let upgradesRefused = 0;
  server.on('upgrade', (req, socket) => {
    upgradesRefused += 1;
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    upgradesRefused: () => upgradesRefused,
    dropAll: () => sockets.forEach((s) => s.destroy()),
    close: () => {
      sockets.forEach((s) => s.destroy());
      return new Promise((r) => server.close(r));
    },
  };
}

/** Headless Debian Chromium through playwright-core (no browser download). */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: the browser tests need Debian's Chromium (apt-get install -y --no-install-recommends chromium), or set CHROMIUM`);
  }
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * A page running the client with `options` (urls, transports, lastEventId…) and a token for
 * user 9; `events()` reads what it received: `{type, id, rawData, transport, url}`.
 */
export async function openClientPage(browser, pageUrl, options) {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  await page.goto(pageUrl);
  await page.evaluate((o) => window.startClient(o), { token: jwt(9), ...options });
  return {
    page,
    events: () => page.evaluate(() => window.received),
    states: () => page.evaluate(() => window.states),
    fallbacks: () => page.evaluate(() => window.fallbacks),
    tokenRequests: () => page.evaluate(() => window.tokenRequests),
    close: async () => {
      await page.evaluate(() => window.client.close());
      await page.close();
    },
  };
}

/**
 * The usual setup of a test file, as `before`/`after` hooks of its top-level suite: a Redis
 * (`redis: false`: none), a gateway on it when `gateway` is given (its `startGateway` options,
 * e.g. `{}`), the page server (`pages: false`: none) and Chromium. Returns the object the
 * `before` hook fills in: `{ redis, gw, pages, browser }`; `after` stops all of it. Start what
 * depends on it inside the test: Node 20 runs a file's top-level `before` hooks concurrently.
 */
export function setup({ redis = true, gateway, pages = true } = {}) {
  const env = {};
  const stops = [];
  before(async () => {
    if (redis) {
      env.redis = await startRedis();
      stops.push(() => env.redis.stop());
    }
    if (gateway) {
      env.gw = await startGateway({ redisUrl: env.redis?.url, ...gateway });
      stops.push(() => env.gw.stop());
    }
    if (pages) {
      env.pages = await startPageServer();
      stops.push(() => env.pages.close());
    }
    env.browser = await launchBrowser();
    stops.push(() => env.browser.close());
  });
  after(async () => {
    for (const stop of stops.reverse()) await stop();
  });
  return env;
}
