// The three transports. Each `run(ctx)` makes one attempt and resolves with its outcome once
// the attempt is over; it never rejects. While it runs it calls `ctx.onOpen()` once the stream
// is proven to work and `ctx.onEvent(text)` with the JSON text of every event.
//
// Outcomes:
//   {kind: 'closed', code, reason}   the server ended an open stream (WebSocket close code, the
//                                    SSE `close` event or a poll answer's `close` member, which
//                                    carry the same codes)
//   {kind: 'http', status, retryAfter} the server refused the request (401, 429, 503, …)
//   {kind: 'refused'}                the transport itself does not get through (a WebSocket
//                                    upgrade failed while plain HTTP to /sse answers 200, or an
//                                    SSE response whose body never streams): counts to fallback
//   {kind: 'network', reason}        no answer, or the connection dropped
//   {kind: 'aborted'}                close() was called

import { rawElements, rawMember } from './json.js';

/** The URL of `path` on `base` with the credentials and `params` in the query. */
export function endpoint(base, path, credentials, params = {}) {
  const url = new URL(path, base);
  if (typeof credentials === 'string') url.searchParams.set('access_token', credentials);
  else {
    url.searchParams.set('id', String(credentials.id));
    url.searchParams.set('token', credentials.token);
  }
  for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v);
  return url;
}

function httpOutcome(res) {
  const seconds = Number(res.headers.get('retry-after'));
  return { kind: 'http', status: res.status, retryAfter: Number.isFinite(seconds) ? seconds : 0 };
}

/**
 * An abort signal that follows `signal` and also fires `ms` after it is (re)armed.
 * @param {number} ms @param {AbortSignal} signal
 */
function deadline(ms, signal) {
  const ctl = new AbortController();
  const onAbort = () => ctl.abort();
  signal.addEventListener('abort', onAbort);
  const state = { timedOut: false, timer: undefined };
  const arm = (after) => {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => {
      state.timedOut = true;
      ctl.abort();
    }, after);
  };
  arm(ms);
  return {
    signal: ctl.signal,
    rearm: arm,
    timedOut: () => state.timedOut,
    abort: () => ctl.abort(),
    done() {
      clearTimeout(state.timer);
      signal.removeEventListener('abort', onAbort);
    },
  };
}

/** WebSocket: `GET /ws`. */
export const websocket = {
  name: 'websocket',
  run(ctx) {
    return new WebSocketAttempt(ctx).outcome;
  },
};

class WebSocketAttempt {
  constructor(ctx) {
    this.ctx = ctx;
    this.opened = false;
    this.outcome = new Promise((resolve) => (this.resolve = resolve));
    const url = endpoint(ctx.base, '/ws', ctx.credentials, { since: ctx.since() });
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new ctx.WebSocket(url.toString());
    } catch (error) {
      this.resolve({ kind: 'network', reason: String(error) });
      return;
    }
    this.ws = ws;
    const openTimer = setTimeout(() => this.finish(null), ctx.openTimeoutMs);
    this.openTimer = openTimer;
    this.onAbort = () => this.finish({ kind: 'aborted' });
    ctx.signal.addEventListener('abort', this.onAbort);
    ws.onopen = () => {
      clearTimeout(openTimer);
      this.opened = true;
      ctx.onOpen();
    };
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') ctx.onEvent(e.data);
    };
    ws.onclose = (e) => {
      clearTimeout(openTimer);
      if (this.opened) {
        // 1006: the connection dropped without a close frame (network, missed pong).
        this.finish(
          e.code === 1006 ? { kind: 'network', reason: 'dropped' } : { kind: 'closed', code: e.code, reason: e.reason },
        );
      } else this.finish(null);
    };
  }

  /** End the attempt; `null` = failed before it opened: ask plain HTTP why. */
  async finish(outcome) {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.openTimer);
    this.ctx.signal.removeEventListener('abort', this.onAbort);
    const ws = this.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      // Already closed.
    }
    this.resolve(outcome ?? (await probe(this.ctx)));
  }
}

/**
 * Why did a WebSocket upgrade fail? Browsers hide the HTTP answer of a refused upgrade, so ask
 * `GET /sse` with the same credentials and read only its status: 401/429/503 are the server's
 * answer (not the transport's fault); 200 means HTTP gets through where the upgrade did not.
 */
async function probe(ctx) {
  if (ctx.signal.aborted) return { kind: 'aborted' };
  const t = deadline(ctx.openTimeoutMs, ctx.signal);
  try {
    const res = await ctx.fetch(endpoint(ctx.base, '/sse', ctx.credentials).toString(), {
      signal: t.signal,
      cache: 'no-store',
    });
    t.abort(); // the status is all we need
    if (res.status === 200) return { kind: 'refused' };
    return httpOutcome(res);
  } catch (error) {
    return ctx.signal.aborted ? { kind: 'aborted' } : { kind: 'network', reason: String(error) };
  } finally {
    t.done();
  }
}

/** Server-Sent Events: `GET /sse`, read with `fetch` streaming (status codes visible). */
export const sse = {
  name: 'sse',
  async run(ctx) {
    const url = endpoint(ctx.base, '/sse', ctx.credentials, { since: ctx.since() });
    const t = deadline(ctx.openTimeoutMs, ctx.signal);
    let opened = false;
    try {
      const res = await ctx.fetch(url.toString(), {
        signal: t.signal,
        cache: 'no-store',
        headers: { accept: 'text/event-stream' },
      });
      if (res.status !== 200) return httpOutcome(res);
      if (!res.body) return { kind: 'refused' };
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return { kind: 'network', reason: 'stream ended' };
        if (!opened) {
          opened = true;
          ctx.onOpen();
        }
        // Any byte (events, `: ping` comments) proves the stream alive.
        t.rearm(ctx.heartbeatTimeoutMs);
        for (const ev of parser.push(value)) {
          if (ev.event === 'close') {
            const { code, reason } = parseClose(ev.data);
            return { kind: 'closed', code, reason };
          }
          if (ev.event === 'message' && ev.data) ctx.onEvent(ev.data);
        }
      }
    } catch (error) {
      if (ctx.signal.aborted) return { kind: 'aborted' };
      // Headers came but no byte of the body within the open timeout: a buffering proxy.
      if (t.timedOut() && !opened) return { kind: 'refused' };
      return { kind: 'network', reason: t.timedOut() ? 'heartbeat timeout' : String(error) };
    } finally {
      t.done();
      t.abort();
    }
  },
};

function parseClose(text) {
  try {
    const v = JSON.parse(text);
    return { code: Number(v.code) || 1006, reason: String(v.reason ?? '') };
  } catch {
    return { code: 1006, reason: '' };
  }
}

/** Incremental `text/event-stream` parser (the WHATWG rules this gateway needs). */
export class SseParser {
  constructor() {
    this.buffer = '';
    this.data = [];
    this.event = '';
  }

  /** Feed a chunk; returns the events it completed, `{event, data}`. */
  push(chunk) {
    this.buffer += chunk;
    const out = [];
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const sep = this.buffer.startsWith('\r\n', nl) ? 2 : 1;
      // A lone `\r` at the end may be the first half of `\r\n`: wait for more.
      if (sep === 1 && this.buffer[nl] === '\r' && nl === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + sep);
      if (line === '') {
        if (this.data.length) out.push({ event: this.event || 'message', data: this.data.join('\n') });
        this.data = [];
        this.event = '';
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
    }
    return out;
  }
}

/** Long-poll: `GET /poll?since=<id>&timeout=<s>`, one request after another. */
export const poll = {
  name: 'poll',
  async run(ctx) {
    let opened = false;
    while (!ctx.signal.aborted) {
      const url = endpoint(ctx.base, '/poll', ctx.credentials, {
        since: ctx.since(),
        timeout: `${Math.round(ctx.pollTimeoutMs)}ms`,
      });
      // The server answers by its timeout; allow the open timeout on top for the network.
      const t = deadline(ctx.pollTimeoutMs + ctx.openTimeoutMs, ctx.signal);
      try {
        const res = await ctx.fetch(url.toString(), { signal: t.signal, cache: 'no-store' });
        if (res.status !== 200) return httpOutcome(res);
        const text = await res.text();
        const events = rawMember(text, 'events');
        if (events === undefined) return { kind: 'network', reason: 'malformed poll answer' };
        if (!opened) {
          opened = true;
          ctx.onOpen();
        }
        for (const ev of rawElements(events)) ctx.onEvent(ev);
        // The server ended the poll for a reason (drain 1001, 4000, 4001, 4003): the same
        // codes as a WebSocket close, after the events that came with it.
        const close = rawMember(text, 'close');
        if (close !== undefined) return { kind: 'closed', ...parseClose(close) };
      } catch (error) {
        if (ctx.signal.aborted) break;
        return { kind: 'network', reason: t.timedOut() ? 'poll timeout' : String(error) };
      } finally {
        t.done();
      }
    }
    return { kind: 'aborted' };
  },
};
