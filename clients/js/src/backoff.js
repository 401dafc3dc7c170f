// Full-jitter exponential backoff (docs/protocol.md, "Reconnect algorithm").

/**
 * Delay before reconnect attempt number `attempt` (0-based): random(0, min(maxMs, baseMs * 2^attempt)).
 * @param {number} attempt @param {{baseMs: number, maxMs: number}} settings
 * @param {() => number} random a number in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/**
 * Sleep `ms`, or less when `signal` aborts first.
 * @param {number} ms @param {AbortSignal} signal @returns {Promise<void>}
 */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done);
  });
}
