// The transformer-block lesson's DOM-free logic (js/logic/transformer-block.js), on a
// hand-made response that follows the /scope/api/inside/block contract.
import {test} from 'node:test';
import assert from 'node:assert/strict';

import {STEPS, flowRows, largest, neuronRows, positionOptions, readoutLines, residualChart,
  residualSeries} from '../../kvscope/scope/static/js/logic/transformer-block.js';

const names = ['residual in', 'input RMSNorm', 'attention output', 'residual after attention',
  'post-attention RMSNorm', 'MLP output', 'residual out'];
const norms = [2, 8, 1, 2.5, 10, 1.5, 4];

const response = {
  tokens: ['The', ' cat'],
  token_ids: [504, 2644],
  position: 1,
  layer: 1,
  num_layers: 2,
  hidden_size: 576,
  intermediate_size: 1536,
  path: names.map((name, i) => ({name, norm: norms[i]})),
  mlp_top: [
    {neuron: 17, gate: 3.5, up: -2, activation: -6.5},
    {neuron: 901, gate: 1.25, up: 2, activation: 1.625},
  ],
  layers: [
    {layer: 0, residual_in: 1, input_norm: 7, attention_output: 0.5, residual_mid: 1.5,
     post_attention_norm: 9, mlp_output: 1, residual_out: 2},
    {layer: 1, residual_in: 2, input_norm: 8, attention_output: 1, residual_mid: 2.5,
     post_attention_norm: 10, mlp_output: 1.5, residual_out: 4},
  ],
  embedding_norm: 1,
  final_norm: 30.5,
};

test('the seven steps, in the contract order', () => {
  assert.deepEqual(STEPS.map((s) => s.name), names);
});

test('flow rows: bars scaled to the largest norm, the stream points marked', () => {
  const rows = flowRows(response.path);
  assert.deepEqual(rows.map((r) => r.width), [20, 80, 10, 25, 100, 15, 40]);
  assert.deepEqual(rows.map((r) => r.stream), [true, false, false, true, false, false, true]);
  assert.equal(rows[3].op, 'residual in + attention output');
  assert.equal(rows[6].norm, 4);
});

test('neuron rows: bars by |activation|, sign kept', () => {
  const rows = neuronRows(response.mlp_top);
  assert.deepEqual(rows.map((r) => [r.neuron, r.width, r.sign]), [[17, 100, 'neg'], [901, 25, 'pos']]);
});

test('residual series: the embedding, then every layer output', () => {
  const series = residualSeries(response);
  assert.deepEqual(series.map((s) => [s.at, s.label, s.value]),
                   [[0, 'embedding', 1], [1, 'after layer 0', 2], [2, 'after layer 1', 4]]);
  assert.deepEqual(largest(series), {at: 2, label: 'after layer 1', layer: 1, value: 4});
});

test('residual chart coordinates', () => {
  const chart = residualChart(residualSeries(response),
                              {width: 110, height: 120, left: 10, right: 0, top: 10, bottom: 10});
  // x: 10 + 100 * at / 2; y: 10 + 100 * (1 - v / 4)
  assert.deepEqual(chart.points.map((p) => [p.x, p.y]), [[10, 85], [60, 60], [110, 10]]);
  assert.equal(chart.line, '10,85 60,60 110,10');
  assert.equal(chart.baseline, 110);
  assert.equal(chart.maxValue, 4);
});

test('position options name every token', () => {
  assert.deepEqual(positionOptions(response.tokens),
                   [{value: '0', text: '0: "The"'}, {value: '1', text: '1: " cat"'}]);
});

test('the readout', () => {
  assert.deepEqual(readoutLines(response), [
    'prompt: 2 tokens; position 1 (" cat", id 2644); layer 1 of 2 (0–1)',
    'hidden size 576, MLP intermediate size 1536',
    'vector norms along the path:',
    '  residual in: 2',
    '  input RMSNorm: 8',
    '  attention output: 1',
    '  residual after attention: 2.5',
    '  post-attention RMSNorm: 10',
    '  MLP output: 1.5',
    '  residual out: 4',
    'top 2 MLP neurons by |silu(gate)·up|:',
    '  neuron 17: gate 3.5, up -2, silu(gate)·up -6.5',
    '  neuron 901: gate 1.25, up 2, silu(gate)·up 1.625',
    'embedding norm: 1',
    'residual out by layer: 2, 4',
    'after the final RMSNorm: 30.5',
    'largest residual norm: 4 (after layer 1)',
  ]);
});
