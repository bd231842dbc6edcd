import {test} from 'node:test';
import assert from 'node:assert/strict';
import {bars, batchText, bubble, bubbleLines, extras, firstFull, inFlight, ms, overlaps, pipelineRun, poolWords,
  readoutText, selectedLines, span, stageLine, stepLine, ticks, zoomWindow}
  from '../../kvscope/scope/static/js/logic/pipeline-parallelism.js';
import {arrived, engineStarted, stepEnd} from './events.mjs';

// A toy model of 4 layers in two stages, 2 KV heads of dim 2 (kv_bytes_per_token
// 2 × 4 × 2 × 2 × 4 bytes = 128: fp32). Times are in seconds, chosen to be exact in
// binary (multiples of 1/64) so the sums below are exact too.
const rank = (stage, layers, weights) => ({rank: stage, stage, tp_rank: 0, pid: 10 + stage, load_s: 1.25,
                                           layers, kv_pool_shape: [2, 2, 8, 4, 2, 2], weights});
const RANKS = [
  rank(0, [0, 2], {qkv_proj: [8, 4], embed_tokens: [10, 4]}),
  rank(1, [2, 4], {qkv_proj: [8, 4], lm_head: [10, 4]}),
];
const chunk = (rid, phase, n = 1) => ({request_id: rid, start: 0, num_tokens: n, phase, num_draft_tokens: 0});
const times = (...pairs) => pairs.map(([start, end], stage) => ({stage, start, end, num_collectives: 0,
                                                                 collective_ms: 0}));

function data() {
  const events = [
    engineStarted({pipeline_parallel_size: 2, num_layers: 4, num_kv_heads: 2, head_dim: 2,
                   kv_bytes_per_token: 128, ranks: RANKS}),
    arrived(0, '0', [1, 2]),
    arrived(0, '1', [3]),
    arrived(0, '2', [4]),
    // step 0 alone in the pipeline; step 1 starts on stage 0 while stage 1 runs step 0
    stepEnd(0, [chunk('0', 'prefill', 2), chunk('1', 'prefill')],
            {batches_in_flight: 1, stages: times([1, 1.25], [1.25, 1.5])}),
    stepEnd(1, [chunk('2', 'prefill')], {batches_in_flight: 2, stages: times([1.25, 1.375], [1.5, 1.625])}),
    stepEnd(2, [chunk('0', 'decode'), chunk('1', 'decode')],
            {batches_in_flight: 2, stages: times([1.5, 1.5625], [1.625, 1.75])}),
    // stages listed out of order: the run sorts them
    stepEnd(3, [chunk('2', 'decode')], {batches_in_flight: 2,
                                        stages: times([1.625, 1.6875], [1.75, 2]).reverse()}),
  ];
  return {events, outputs: []};
}

test('formatting: spans, in flight, milliseconds', () => {
  assert.deepEqual([span([0, 15]), span([3, 4])], ['0–14', '3']);
  assert.deepEqual([inFlight(1), inFlight(2)], ['1 batch in flight', '2 batches in flight']);
  assert.deepEqual([ms(0.0123), ms(0.25, 2)], ['12.3 ms', '250.00 ms']);
});

test('batchText groups consecutive requests of one phase', () => {
  assert.equal(batchText([chunk('0', 'decode'), chunk('1', 'decode'), chunk('2', 'prefill')]),
    '0, 1 (decode), 2 (prefill)');
  assert.equal(batchText([chunk('3', 'prefill'), chunk('4', 'decode'), chunk('5', 'prefill')]),
    '3 (prefill), 4 (decode), 5 (prefill)');
  assert.equal(batchText([]), 'no requests');
});

test('extras: the embedding on the first stage, the final norm and head on the last', () => {
  assert.deepEqual(extras({qkv_proj: [1, 1], embed_tokens: [1, 1]}), ['embedding']);
  assert.deepEqual(extras({lm_head: [1, 1]}), ['final norm and LM head']);
  assert.deepEqual(extras({embed_tokens: [1, 1], lm_head: [1, 1]}), ['embedding', 'final norm and LM head']);
  assert.deepEqual(extras({qkv_proj: [1, 1]}), []);
});

test('pipelineRun: the stages from the ranks, the steps with sorted stage times', () => {
  const run = pipelineRun(data());
  assert.equal(run.numStages, 2);
  assert.equal(run.elementBytes, 4);
  assert.equal(run.requests, 3);
  assert.deepEqual(run.stages.map((s) => [s.stage, s.layers, s.extras, s.kvElements, s.kvBytes]), [
    [0, [0, 2], ['embedding'], 512, 2048],
    [1, [2, 4], ['final norm and LM head'], 512, 2048],
  ]);
  assert.deepEqual(run.steps.map((s) => s.inFlight), [1, 2, 2, 2]);
  assert.deepEqual(run.steps[3].times, [{stage: 0, start: 1.625, end: 1.6875}, {stage: 1, start: 1.75, end: 2}]);
  assert.equal(poolWords(run.stages[0]),
    '2 layers × 2 (K, V) × 8 blocks × 4 slots × 2 KV heads × 2 dims = 512 values, 2.00 KiB');
});

test('bubble: span, busy shares, time two stages computed at once, the fraction', () => {
  const b = bubble(pipelineRun(data()));
  assert.deepEqual([b.first, b.last, b.span], [1, 2, 1]);
  // stage 0: 0.25 + 0.125 + 0.0625 + 0.0625; stage 1: 0.25 + 0.125 + 0.125 + 0.25
  assert.deepEqual(b.busy, [0.5, 0.75]);
  assert.deepEqual(b.share, [0.5, 0.75]);
  // overlaps: [1.25, 1.375] (steps 1 and 0), [1.5, 1.5625] (2 and 1), [1.625, 1.6875] (3 and 2)
  assert.equal(b.together, 0.25);
  assert.equal(b.fraction, 1 - 1.25 / 2);
  assert.equal(bubble(pipelineRun({events: [engineStarted({pipeline_parallel_size: 2})]})), null);
});

test('overlaps: the other stages\' steps during each stage of a step', () => {
  const run = pipelineRun(data());
  assert.deepEqual(overlaps(run, 0).map((t) => t.others), [[], [{step: 1, stage: 0, seconds: 0.125}]]);
  assert.deepEqual(overlaps(run, 1).map((t) => t.others),
    [[{step: 0, stage: 1, seconds: 0.125}], [{step: 2, stage: 0, seconds: 0.0625}]]);
  assert.equal(firstFull(run), 1);
});

test('zoomWindow, bars and ticks', () => {
  const run = pipelineRun(data());
  assert.deepEqual(zoomWindow(run, 0, 1), {lo: 0, hi: 1, from: 1, to: 1.625});
  assert.deepEqual(zoomWindow(run, 3, 1), {lo: 2, hi: 3, from: 1.5, to: 2});
  // [1.5, 2]: step 1's stage 1 ends at 1.625; step 1's stage 0 ended before the range
  const drawn = bars(run, 1.5, 2);
  assert.deepEqual(drawn.map((b) => [b.step, b.stage, b.left, b.width]), [
    [1, 1, 0, 0.25], [2, 0, 0, 0.125], [2, 1, 0.25, 0.25], [3, 0, 0.25, 0.125], [3, 1, 0.5, 0.5],
  ]);
  assert.deepEqual(ticks(1, 2, 1, 5), [0, 200, 400, 600, 800, 1000].map((v) => ({at: v / 1000, ms: v})));
  assert.deepEqual(ticks(1.5, 2, 1, 5).map((t) => t.ms), [500, 600, 700, 800, 900, 1000]);
  assert.deepEqual(ticks(1, 1, 1), []);
});

test('readoutText: the stages, every step, the bubble, the selected step', () => {
  const run = pipelineRun(data());
  assert.equal(readoutText(run, 1), [
    'pipeline_parallel_size 2: 4 layers over 2 stages, 1 worker process each; 4 steps, 3 requests',
    'stage 0: layers 0–1, embedding; KV pool 2×2×8×4×2×2 (2.00 KiB)',
    'stage 1: layers 2–3, final norm and LM head; KV pool 2×2×8×4×2×2 (2.00 KiB)',
    'step 0: 1 batch in flight, requests 0, 1 (prefill), stage 0 250.0 ms, stage 1 250.0 ms',
    'step 1: 2 batches in flight, requests 2 (prefill), stage 0 125.0 ms, stage 1 125.0 ms',
    'step 2: 2 batches in flight, requests 0, 1 (decode), stage 0 62.5 ms, stage 1 125.0 ms',
    'step 3: 2 batches in flight, requests 2 (decode), stage 0 62.5 ms, stage 1 250.0 ms',
    'steps with 2 batches in flight: 3 of 4',
    'span 1000.0 ms, from the first stage start to the last stage end',
    'busy (computed): stage 0 500.0 ms (50.0% of the span), stage 1 750.0 ms (75.0% of the span)',
    'two stages at once (computed): 250.0 ms (25.0% of the span)',
    'bubble 37.5% (computed: 1 − busy 1250.0 ms / (2 stages × span 1000.0 ms))',
    'selected: step 1 (stage 0 250.0–375.0 ms, stage 1 500.0–625.0 ms, after the first stage start)',
    '  while stage 0 computed it: stage 1 computed step 0 for 125.0 ms',
    '  while stage 1 computed it: stage 0 computed step 2 for 62.5 ms',
  ].join('\n'));
  assert.deepEqual(selectedLines(run, 3), [
    'selected: step 3 (stage 0 625.0–687.5 ms, stage 1 750.0–1000.0 ms, after the first stage start)',
    '  while stage 0 computed it: stage 1 computed step 2 for 62.5 ms',
    '  while stage 1 computed it: no other stage computed',
  ]);
  assert.equal(stageLine({stage: 1, layers: [2, 3], extras: [], kvPoolShape: [1, 2], kvBytes: 8}),
    'stage 1: layers 2; KV pool 1×2 (8 B)');
  assert.equal(stepLine(run.steps[0]).split(', stage')[0], 'step 0: 1 batch in flight, requests 0, 1 (prefill)');
});

test('a run without stage times says so', () => {
  const run = pipelineRun({events: [engineStarted({pipeline_parallel_size: 2, ranks: RANKS})]});
  assert.deepEqual(bubbleLines(run), ['no stage times: nothing to measure']);
  assert.equal(readoutText(run, 0).split('\n').length, 4);
});
