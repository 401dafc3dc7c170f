// The official client of the Gleepost realtime gateway. See ../README.md for the policy.

import { backoffDelay, sleep } from './backoff.js';
import { rawMember } from './json.js';
import { poll, sse, websocket } from './transports.js';

export { backoffDelay } from './backoff.js';
export { rawElements, rawMember } from './json.js';

const TRANSPORTS = { websocket, sse, poll };

/** Default settings; every one can be overridden in `connect()`'s options. */
export const defaults = Object.freeze({
  transports: Object.freeze(['websocket', 'sse', 'poll']),
  fallbackAfter: 2,
  backoff: Object.freeze({ baseMs: 500, maxMs: 30_000 }),
  openTimeoutMs: 10_000,
  heartbeatTimeoutMs: 65_000,
  pollTimeoutMs: 25_000,
});

/**
 * Open the event stream of the user whose credentials `options.token` provides, and keep it
 * open (reconnect, resume, fallback) until `close()`.
 * @param {import('./index.js').ConnectOptions} options
 * @returns {import('./index.js').Client}
 */
export function connect(options) {
  return new Client(options);
}

class Client {
  constructor(options) {
    const urls = [options.url].flat();
    if (!urls.length || typeof options.token !== 'function') {
      throw new TypeError('connect() needs `url` and a `token` provider function');
    }
    this.urls = urls.map((u) => new URL(u).toString());
    this.options = options;
    const pick = (key) => options[key] ?? defaults[key];
    this.settings = {
      fallbackAfter: pick('fallbackAfter'),
      openTimeoutMs: pick('openTimeoutMs'),
      heartbeatTimeoutMs: pick('heartbeatTimeoutMs'),
      pollTimeoutMs: pick('pollTimeoutMs'),
      backoff: { ...defaults.backoff, ...options.backoff },
      random: options.random ?? Math.random,
    };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    const names = pick('transports');
    for (const n of names) if (!TRANSPORTS[n]) throw new TypeError(`unknown transport ${n}`);
    // A transport whose platform API is missing (Node 20 has no global WebSocket) is skipped.
    const usable = names.filter((n) => (n === 'websocket' ? this.WebSocket : this.fetch));
    if (!usable.length) throw new TypeError('no usable transport: pass `WebSocket` or `fetch`');
    this.transports = usable.map((n) => TRANSPORTS[n]);
    this.lastEventId = options.lastEventId ?? undefined;
    this.state = 'connecting';
    this.transport = this.transports[0].name;
    this.url = this.urls[0];
    this.controller = new AbortController();
    this.done = this.loop();
  }

  /** Stop for good: closes the stream, cancels any wait. */
  close() {
    this.controller.abort();
    return this.done;
  }

  emitState(state, extra = {}) {
    this.state = state;
    this.call('onStateChange', { state, transport: this.transport, url: this.url, ...extra });
  }

  call(name, ...args) {
    const fn = this.options[name];
    if (typeof fn !== 'function') return;
    try {
      fn(...args);
    } catch (error) {
      if (name !== 'onError') this.call('onError', error);
    }
  }

  async credentials(refresh, reason) {
    try {
      const c = await this.options.token({ refresh, reason });
      if (typeof c === 'string' ? c : c && c.token) return c;
      throw new TypeError('the token provider returned no credentials');
    } catch (error) {
      this.call('onError', error);
      return undefined;
    }
  }

  handle(text) {
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      this.call('onError', new Error(`event is not JSON: ${error}`));
      return;
    }
    if (!parsed || typeof parsed !== 'object' || typeof parsed.type !== 'string') return;
    const event = { ...parsed, raw: text, rawData: rawMember(text, 'data') };
    if (event.type === 'resync') {
      if (typeof event.id === 'string') this.lastEventId = event.id;
      this.call('onResync', event);
      return;
    }
    this.call('onEvent', event);
    const typed = this.options.on && this.options.on[event.type];
    if (typeof typed === 'function') {
      try {
        typed(event);
      } catch (error) {
        this.call('onError', error);
      }
    }
    if (typeof event.id === 'string') this.lastEventId = event.id;
  }

  async loop() {
    const { signal } = this.controller;
    const s = this.settings;
    const random = s.random;
    let attempt = 0; // failures since the last open stream
    let refused = 0; // consecutive attempts of this transport that could not get through
    let ti = 0;
    let ui = 0;
    let refresh = false;
    let reason = 'connect';
    while (!signal.aborted) {
      this.transport = this.transports[ti].name;
      this.url = this.urls[ui];
      const credentials = await this.credentials(refresh, reason);
      let outcome;
      if (signal.aborted) break;
      let opened = false;
      if (credentials === undefined) outcome = { kind: 'network', reason: 'no credentials' };
      else {
        this.emitState('connecting');
        outcome = await this.transports[ti].run({
          base: this.url,
          credentials,
          since: () => this.lastEventId,
          signal,
          WebSocket: this.WebSocket,
          fetch: this.fetch,
          openTimeoutMs: s.openTimeoutMs,
          heartbeatTimeoutMs: s.heartbeatTimeoutMs,
          pollTimeoutMs: s.pollTimeoutMs,
          onOpen: () => {
            opened = true;
            attempt = 0;
            refused = 0;
            this.emitState('open');
          },
          onEvent: (text) => this.handle(text),
        });
      }
      if (outcome.kind === 'aborted' || signal.aborted) break;
      refresh = false;
      let minDelay = 0;
      let immediate = false;
      let nextUrl = !opened;
      if (outcome.kind === 'closed') {
        reason = `close ${outcome.code}`;
        if (outcome.code === 1001) {
          // The node is going away: another one takes us, at once for the first attempt.
          immediate = attempt === 0;
          nextUrl = true;
        } else if (outcome.code === 4001 || outcome.code === 4003) refresh = true;
      } else if (outcome.kind === 'http') {
        reason = `http ${outcome.status}`;
        if (outcome.status === 401) {
          refresh = true;
          nextUrl = false;
        } else if (outcome.status === 429) minDelay = outcome.retryAfter * 1000;
      } else if (outcome.kind === 'refused') {
        reason = `${this.transport} refused`;
        refused += 1;
        if (refused >= s.fallbackAfter && ti + 1 < this.transports.length) {
          ti += 1;
          refused = 0;
          attempt = 0;
          immediate = true;
          this.call('onFallback', { from: this.transport, to: this.transports[ti].name });
        }
      } else reason = outcome.reason ?? 'network';
      if (nextUrl) ui = (ui + 1) % this.urls.length;
      const delay = immediate ? 0 : Math.max(minDelay, backoffDelay(attempt, s.backoff, random));
      attempt += 1;
      this.emitState('waiting', { delay, reason });
      await sleep(delay, signal);
    }
    this.emitState('closed');
  }
}
