// Fake transports for the unit tests: a scriptable WebSocket and fetch.

/** Resolve once `fn()` is truthy; fail after `ms` (bounded waits, no timing assertions). */
export async function until(fn, what, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A WebSocket whose server side the test drives. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = new URL(url);
      this.onopen = this.onmessage = this.onclose = null;
      this.closedByClient = false;
      sockets.push(this);
    }
    open() {
      this.onopen?.({});
    }
    send(text) {
      this.onmessage?.({ data: text });
    }
    serverClose(code, reason = '') {
      this.onclose?.({ code, reason });
    }
    close() {
      this.closedByClient = true;
    }
  }
  return { FakeWebSocket, sockets };
}

/** An SSE body the test writes to; aborting the request errors it, as a real fetch does. */
export function sseBody(signal) {
  let controller;
  const body = new ReadableStream({
    start(c) {
      controller = c;
    },
  });
  const enc = new TextEncoder();
  signal?.addEventListener('abort', () => {
    try {
      controller.error(new DOMException('aborted', 'AbortError'));
    } catch {
      // already closed
    }
  });
  return {
    response: new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } }),
    write: (text) => controller.enqueue(enc.encode(text)),
    end: () => controller.close(),
  };
}

/**
 * A fetch that records requests and answers through `route(url, init)` (which may return a
 * Response, a promise of one, or throw for a network error).
 */
export function fakeFetch(route) {
  const requests = [];
  const fetch = async (input, init = {}) => {
    const url = new URL(input);
    requests.push({ url, init });
    if (init.signal?.aborted) throw new DOMException('aborted', 'AbortError');
    // Like a real fetch, an abort rejects a request that has no answer yet.
    return new Promise((resolve, reject) => {
      init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      Promise.resolve()
        .then(() => route(url, init))
        .then(resolve, reject);
    });
  };
  return { fetch, requests };
}

export const json = (status, body, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
