import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser } from '../../src/transports.js';

test('SSE parser: events, ids, comments, retry, named close event', () => {
  const p = new SseParser();
  const all = [
    ...p.push('retry: 1000\n\n: ping\n\nid: a-1\ndata: {"type":"x"}\n\n'),
    ...p.push('event: close\ndata: {"code":1001,"reason":"shutdown"}\n\n'),
  ];
  assert.deepEqual(all, [
    { event: 'message', data: '{"type":"x"}' },
    { event: 'close', data: '{"code":1001,"reason":"shutdown"}' },
  ]);
});

test('SSE parser: any chunking and line ending gives the same events', () => {
  const stream = 'id: 1\r\ndata: {"a":"b c"}\r\n\r\ndata:line1\rdata: line2\r\rdata: {"z":1}\n\n';
  const expected = [
    { event: 'message', data: '{"a":"b c"}' },
    { event: 'message', data: 'line1\nline2' },
    { event: 'message', data: '{"z":1}' },
  ];
  for (let size = 1; size <= stream.length; size++) {
    const p = new SseParser();
    const got = [];
    for (let i = 0; i < stream.length; i += size) got.push(...p.push(stream.slice(i, i + size)));
    assert.deepEqual(got, expected, `chunk size ${size}`);
  }
});
