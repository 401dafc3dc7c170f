import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rawElements, rawMember } from '../../src/index.js';
import { seed } from '../seed.js';

test('rawMember returns the seed data byte for byte', () => {
  for (const text of Object.values(seed)) {
    const data = rawMember(text, 'data');
    // The seed ends with `"data":<value>}`: the value is everything between.
    const expected = text.slice(text.indexOf('"data":') + 7, -1);
    assert.equal(data, expected);
    assert.deepEqual(JSON.parse(data), JSON.parse(text).data);
  }
});

test('rawMember keeps number formatting and skips tricky strings', () => {
  const text = ' { "a" : "x\\"}]{,", "data" : {"n":1.50,"e":1e400,"s":"}"} , "id":"k-1" } ';
  assert.equal(rawMember(text, 'data'), '{"n":1.50,"e":1e400,"s":"}"}');
  assert.equal(rawMember(text, 'id'), '"k-1"');
  assert.equal(rawMember(text, 'a'), '"x\\"}]{,"');
  assert.equal(rawMember(text, 'missing'), undefined);
  assert.equal(rawMember('[1]', 'data'), undefined);
  assert.equal(rawMember('{"data":7}', 'data'), '7');
});

test('rawElements splits an array into exact element texts', () => {
  assert.deepEqual(rawElements('[]'), []);
  assert.deepEqual(rawElements(' [ {"a":[1,2]} , "]" ,3.0 ] '), ['{"a":[1,2]}', '"]"', '3.0']);
  const events = `[${seed.message},${seed.notification}]`;
  assert.deepEqual(rawElements(events), [seed.message, seed.notification]);
});
