// The why-cache-K-and-V lesson's DOM-free logic (js/logic/why-kv-cache.js), on a
// hand-made response that follows the /scope/api/inside/recompute contract.
import {test} from 'node:test';
import assert from 'node:assert/strict';

import {lineChart, readoutLines, tableRows, ticks} from '../../kvscope/scope/static/js/logic/why-kv-cache.js';

const response = {
  prompt_tokens: 4,
  text: ' on the',
  cached: [
    {index: 0, context_len: 4, time_ms: 12.5, token_id: 335, tokens_computed: 4},
    {index: 1, context_len: 5, time_ms: 3, token_id: 260, tokens_computed: 1},
  ],
  recompute: [
    {index: 0, context_len: 4, time_ms: 12, token_id: 335, tokens_computed: 4},
    {index: 1, context_len: 5, time_ms: 14.25, token_id: 261, tokens_computed: 5},
  ],
  identical: false,
  totals: {cached_ms: 15.5, recompute_ms: 26.25, cached_tokens_computed: 5, recompute_tokens_computed: 9},
};

test('axis ticks split the rounded maximum in five', () => {
  assert.deepEqual(ticks(20), [0, 4, 8, 12, 16, 20]);
  assert.deepEqual(ticks(0.5), [0, 0.1, 0.2, 0.3, 0.4, 0.5]);
});

test('line chart: context on x, time on y, both from 0 to a rounded maximum', () => {
  const chart = lineChart(response, {width: 110, height: 120, left: 10, right: 0, top: 10, bottom: 10});
  assert.equal(chart.xMax, 5);   // context 5 -> 5
  assert.equal(chart.yMax, 20);  // 14.25 ms -> 20
  const [cached, recompute] = chart.series;
  assert.equal(cached.name, 'with the KV cache');
  // x = 10 + 100 * c / 5, y = 10 + 100 * (1 - t / 20)
  assert.deepEqual(cached.points.map((p) => [p.x, p.y]), [[90, 47.5], [110, 95]]);
  assert.equal(recompute.line, '90,50 110,38.75');
  assert.deepEqual(chart.yTicks.map((t) => [t.v, t.at]), [[0, 110], [4, 90], [8, 70], [12, 50], [16, 30], [20, 10]]);
});

test('the readout: totals, tokens computed, identical', () => {
  assert.deepEqual(readoutLines(response), [
    'prompt: 4 tokens; generated 2 tokens: " on the"',
    'with the KV cache: 15.5 ms in all, 5 tokens computed',
    '  first token: 12.5 ms at context 4 (4 computed); last token: 3 ms at context 5 (1 computed)',
    'recomputing everything: 26.25 ms in all, 9 tokens computed',
    '  first token: 12 ms at context 4 (4 computed); last token: 14.25 ms at context 5 (5 computed)',
    'identical tokens: no',
  ]);
  assert.equal(readoutLines({...response, identical: true}).at(-1), 'identical tokens: yes');
});

test('table rows pair the two runs token by token', () => {
  assert.deepEqual(tableRows(response), [
    {index: 0, context: 4, cachedMs: 12.5, cachedComputed: 4, recomputeMs: 12, recomputeComputed: 4, same: true},
    {index: 1, context: 5, cachedMs: 3, cachedComputed: 1, recomputeMs: 14.25, recomputeComputed: 5, same: false},
  ]);
});
