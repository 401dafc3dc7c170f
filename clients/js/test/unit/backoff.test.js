import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, defaults } from '../../src/index.js';

test('full jitter: random(0, min(max, base * 2^attempt))', () => {
  const s = defaults.backoff;
  assert.equal(backoffDelay(0, s, () => 0), 0);
  assert.equal(backoffDelay(0, s, () => 0.5), 250);
  assert.equal(backoffDelay(3, s, () => 0.5), 2000);
  // capped at 30 s, also for huge attempt counts
  assert.equal(backoffDelay(10, s, () => 0.5), 15000);
  assert.equal(backoffDelay(5000, s, () => 0.999999), 29999);
});
