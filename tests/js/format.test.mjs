import {test} from 'node:test';
import assert from 'node:assert/strict';
import {bytes, int, pct, plural} from '../../kvscope/scope/static/js/format.js';

test('int groups thousands with commas and rounds', () => {
  assert.deepEqual([int(0), int(999), int(1234567), int(1499.6)], ['0', '999', '1,234,567', '1,500']);
});

test('bytes picks a binary unit and 2, 1 or 0 decimals', () => {
  assert.deepEqual([bytes(512), bytes(1024), bytes(23040), bytes(150 * 1024 * 1024)],
    ['512 B', '1.00 KiB', '22.5 KiB', '150 MiB']);
});

test('pct and plural', () => {
  assert.deepEqual([pct(0.125), pct(1)], ['12.5%', '100.0%']);
  assert.deepEqual([plural(1, 'block'), plural(0, 'block'), plural(2, 'token')], ['1 block', '0 blocks', '2 tokens']);
});
