// The embeddings lesson's logic (js/logic/embeddings.js) on a hand-made response that
// follows the /scope/api/inside/embeddings contract.
import {test} from 'node:test';
import assert from 'node:assert/strict';

import {cellText, clampStart, heatColor, maxStart, readout, rowLine, sliceLabel, stripMove}
  from '../../kvscope/scope/static/js/logic/embeddings.js';

const DATA = {
  tokens: ['Hi', ' there'], token_ids: [17830, 905], hidden_size: 576, vocab_size: 49152,
  dim_start: 8, dim_count: 3,
  rows: [
    {position: 0, id: 17830, text: 'Hi', norm: 1.25, slice: [0.5, -0.25, 0],
     neighbours: [{id: 1, text: 'hi', cosine: 0.61}, {id: 2, text: ' Hello', cosine: 0.5}]},
    {position: 1, id: 905, text: ' there', norm: 0.875, slice: [-1, 0.125, 1e-7],
     neighbours: [{id: 3, text: ' There', cosine: 0.7}]},
  ],
  slice_abs_max: 1,
};

test('the diverging colour scale', () => {
  assert.equal(heatColor(0, 1), 'rgb(255, 255, 255)');
  assert.equal(heatColor(1, 1), 'rgb(213, 94, 0)');
  assert.equal(heatColor(-1, 1), 'rgb(0, 114, 178)');
  assert.equal(heatColor(-0.5, 2), 'rgb(191, 220, 236)');
  assert.equal(heatColor(3, 2), 'rgb(213, 94, 0)');   // beyond the scale: full colour
  assert.equal(heatColor(0.3, 0), 'rgb(255, 255, 255)');
});

test('what a cell says, and the arrow keys', () => {
  assert.equal(cellText(DATA, 1, 0), 'token 1 " there" (id 905), dim 8: -1');
  assert.equal(cellText(DATA, 1, 2), 'token 1 " there" (id 905), dim 10: 1e-7');
  assert.deepEqual(stripMove({row: 0, col: 2}, 'ArrowRight', DATA), {row: 0, col: 2});
  assert.deepEqual(stripMove({row: 0, col: 2}, 'ArrowDown', DATA), {row: 1, col: 2});
  assert.deepEqual(stripMove({row: 1, col: 0}, 'End', DATA), {row: 1, col: 2});
});

test('the slice control stays in range', () => {
  assert.equal(maxStart(576, 32), 544);
  assert.equal(maxStart(16, 32), 0);
  assert.equal(clampStart(560, 576, 32), 544);
  assert.equal(clampStart(-3, 576, 32), 0);
  assert.equal(clampStart(NaN, 576, 32), 0);
  assert.equal(clampStart(100, 576, 64), 100);
  assert.equal(sliceLabel(DATA), 'dims 8–10 of 576');
});

test('the readout', () => {
  assert.equal(rowLine(DATA.rows[1]), '1 " there" (id 905): norm 0.875; nearest: " There" 0.7');
  assert.equal(readout(DATA), [
    'tokens: 2; hidden size 576, vocabulary 49152',
    'slice: dims 8–10 of 576 (3 shown), largest |value| 1',
    '0 "Hi" (id 17830): norm 1.25; nearest: "hi" 0.61, " Hello" 0.5',
    '1 " there" (id 905): norm 0.875; nearest: " There" 0.7',
  ].join('\n'));
});
