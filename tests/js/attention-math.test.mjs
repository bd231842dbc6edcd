import {test} from 'node:test';
import assert from 'node:assert/strict';
import {limitsText, list, phaseCount, phaseName, readoutLines}
  from '../../kvscope/scope/static/js/logic/attention-math.js';

const range = (n) => Array.from({length: n}, (_, i) => i / 10);

// A query at position 3 over a context of 4 tokens in two blocks of 2 (physical 5, then 2).
const DATA = {
  tokens: ['The', ' cat', ' sat', ' on', ' the'], position: 3, layer: 1, head: 2, kv_head: 1,
  head_dim: 4, scale: 0.5, block_size: 2, block_table: [5, 2],
  blocks: [
    {index: 0, block_id: 5, start: 0, end: 2, scores: [1, 2], block_max: 2, block_sum_exp: 1.3679,
     running_max: 2, running_sum_exp: 1.3679},
    {index: 1, block_id: 2, start: 2, end: 4, scores: [0.5, 3], block_max: 3, block_sum_exp: 1.0821,
     running_max: 3, running_sum_exp: 1.5853},
  ],
  weights: [0.1, 0.2, 0.05, 0.65],
  output_blockwise: range(10), output_contiguous: range(10), max_abs_diff: 0, max_abs_diff_online: 1e-7,
};
const HEADER = [
  'prompt: 5 tokens; query position 3 (" on"), layer 1, head 2 (KV head 1), head dim 4, scale 0.5',
  'block size 2, block table [5, 2]',
];

test('one step per block, then the softmax, then the weighted sum', () => {
  assert.equal(phaseCount(DATA), 4);
  assert.deepEqual([0, 1, 2, 3].map((p) => phaseName(DATA, p)),
    ['block 1 of 2', 'block 2 of 2', 'softmax over all 4 scores', 'weighted sum of values']);
  assert.equal(list([1, 0.5]), '1, 0.5');
});

test('readoutLines at a block step', () => {
  assert.deepEqual(readoutLines(DATA, 1), [...HEADER,
    'phase: block 2 of 2',
    'logical block 1 → physical block 2, positions 2–3',
    'scores: 0.5, 3',
    'block max: 3',
    'block sum exp: 1.0821',
    'running max: 3, running sum exp: 1.5853',
  ]);
});

test('readoutLines at the softmax and at the weighted sum', () => {
  assert.deepEqual(readoutLines(DATA, 2).slice(2), [
    'phase: softmax over all 4 scores',
    'max over blocks: 3',
    'sum of exp: 1.5853',
    'weights: 0.1, 0.2, 0.05, 0.65',
  ]);
  assert.deepEqual(readoutLines(DATA, 3).slice(2), [
    'phase: weighted sum of values',
    'output block-wise (first 8): 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7',
    'output contiguous (first 8): 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7',
    'max abs diff, block-wise vs contiguous: 0',
    'max abs diff, online vs block-wise: 1e-7',
  ]);
});

test('limitsText, with and without the query head count', () => {
  const engine = {num_layers: 30, num_heads: 9, num_kv_heads: 3, head_dim: 64};
  assert.equal(limitsText(engine),
    'The loaded model has 30 layers (0–29), 9 query heads (0–8) sharing 3 KV heads of dimension 64.');
  assert.equal(limitsText({...engine, num_heads: undefined}),
    'The loaded model has 30 layers (0–29) sharing 3 KV heads of dimension 64.');
});
