// The attention-heads lesson's logic (js/logic/attention-heads.js) on a hand-made
// response that follows the /scope/api/inside/attention contract.
import {test} from 'node:test';
import assert from 'node:assert/strict';

import {cellText, clampIndex, gridMove, groupLine, kvLine, mix, readout, triangleMove,
  weightColor} from '../../kvscope/scope/static/js/logic/attention-heads.js';

const DATA = {
  tokens: ['The', ' cat', ' sat'], token_ids: [504, 2644, 3290], layer: 3, head: 4,
  num_layers: 30, num_heads: 9, num_kv_heads: 3, head_dim: 64, kv_head: 1, group: [3, 4, 5],
  probs: [[1], [0.75, 0.25], [0.5, 0.125, 0.375]],
  row_max: [{key: 0, weight: 1}, {key: 0, weight: 0.75}, {key: 0, weight: 0.5}],
  kv: {kv_bytes_per_token: 46080, kv_bytes_per_token_without_gqa: 138240, ratio: 3},
};

test('colours', () => {
  assert.equal(mix([0, 0, 0], [255, 100, 10], 0.5), 'rgb(128, 50, 5)');
  assert.equal(mix([0, 0, 0], [255, 100, 10], 2), 'rgb(255, 100, 10)');
  assert.equal(weightColor(0), 'rgb(255, 255, 255)');
  assert.equal(weightColor(1), 'rgb(0, 114, 178)');
  assert.equal(weightColor(0.25), 'rgb(128, 185, 217)');  // √0.25 = half way
  assert.equal(weightColor(-1e-9), 'rgb(255, 255, 255)');
});

test('arrow keys move within the lower triangle', () => {
  const at = (row, col) => ({row, col});
  assert.deepEqual(triangleMove(at(2, 1), 'ArrowLeft', 3), at(2, 0));
  assert.deepEqual(triangleMove(at(2, 0), 'ArrowLeft', 3), at(2, 0));
  assert.deepEqual(triangleMove(at(1, 1), 'ArrowRight', 3), at(1, 1));  // the diagonal is the end
  assert.deepEqual(triangleMove(at(2, 2), 'ArrowUp', 3), at(1, 1));      // clamped into row 1
  assert.deepEqual(triangleMove(at(0, 0), 'ArrowUp', 3), at(0, 0));
  assert.deepEqual(triangleMove(at(1, 1), 'ArrowDown', 3), at(2, 1));
  assert.deepEqual(triangleMove(at(2, 1), 'ArrowDown', 3), at(2, 1));
  assert.deepEqual(triangleMove(at(2, 1), 'End', 3), at(2, 2));
  assert.deepEqual(triangleMove(at(2, 1), 'Home', 3), at(2, 0));
  assert.deepEqual(triangleMove(at(2, 2), 'PageUp', 3), at(0, 0));
  assert.deepEqual(triangleMove(at(0, 0), 'PageDown', 3), at(2, 0));
  assert.equal(triangleMove(at(0, 0), 'a', 3), null);
  // a rectangle
  assert.deepEqual(gridMove(at(0, 3), 'ArrowRight', 2, () => 4), at(0, 3));
  assert.deepEqual(gridMove(at(0, 3), 'ArrowDown', 2, () => 4), at(1, 3));
});

test('what a cell says', () => {
  assert.equal(cellText(DATA, 2, 1), 'query 2 " sat" → key 1 " cat": weight 0.125');
  assert.equal(cellText(DATA, 0, 0), 'query 0 "The" → key 0 "The": weight 1');
});

test('group and KV lines', () => {
  assert.equal(groupLine(DATA), 'query head 4 reads KV head 1 of 3: shared by query heads 3, 4, 5');
  assert.equal(groupLine({...DATA, group: [4], num_kv_heads: 9, kv_head: 4}),
    'query head 4 reads KV head 4 of 9: no other query head shares it');
  assert.equal(kvLine(DATA),
    'KV cache per token: 46,080 bytes with GQA (3 KV heads), 138,240 bytes without (9): 3× smaller');
});

test('the readout', () => {
  assert.equal(readout(DATA), [
    'prompt: 3 tokens; layer 3 of 30, query head 4 of 9, head dim 64',
    'query head 4 reads KV head 1 of 3: shared by query heads 3, 4, 5',
    'KV cache per token: 46,080 bytes with GQA (3 KV heads), 138,240 bytes without (9): 3× smaller',
    'strongest key per query:',
    '  0 "The" → 0 "The": 1',
    '  1 " cat" → 0 "The": 0.75',
    '  2 " sat" → 0 "The": 0.5',
  ].join('\n'));
});

test('clamping a typed index', () => {
  assert.equal(clampIndex(40, 30), 29);
  assert.equal(clampIndex(-2, 30), 0);
  assert.equal(clampIndex(NaN, 30), 0);
  assert.equal(clampIndex(4.7, 9), 4);
});
