import {test} from 'node:test';
import assert from 'node:assert/strict';
import {counted, kvLines, kvPoolSize, rankLines, readoutText, reduction, span, tensorRun, terms,
  timingLine, watchedLines, weightLayout, weightParts, weightShares}
  from '../../kvscope/scope/static/js/logic/tensor-parallelism.js';
import {allocated, arrived, engineStarted, stepEnd} from './events.mjs';

// A toy model split over two ranks: 4 query heads and 2 KV heads of dim 2, 6 MLP
// neurons, a vocabulary of 10, hidden size 8.
const WEIGHTS = {qkv_proj: [8, 8], o_proj: [8, 4], gate_up_proj: [6, 8], down_proj: [8, 3],
                 embed_tokens: [5, 8], lm_head: [5, 8]};
const rank = (r) => ({rank: r, pid: 100 + r, load_s: 1.5, split: 'even',
                      q_heads: [2 * r, 2 * r + 2], kv_heads: [r, r + 1], intermediate: [3 * r, 3 * r + 3],
                      vocab: [5 * r, 5 * r + 5], kv_pool_shape: [2, 2, 4, 2, 1, 2], weights: {...WEIGHTS}});
const watched = (partial, reduced, columns, matmul, allReduce) => ({
  input_columns: columns, input_head: [0, 0, 0, 0], partial, reduced, matmul_ms: matmul, all_reduce_ms: allReduce});
const collectives = (n, collective, forward) => ({num_collectives: n, collective_ms: collective, forward_ms: forward});

function data({ranks = [rank(0), rank(1)], watch = true} = {}) {
  const events = [
    engineStarted({tensor_parallel_size: 2, num_heads: 4, num_kv_heads: 2, head_dim: 2, num_layers: 2,
                   kv_bytes_per_token: 64, ranks}),
    arrived(0, '0', [1, 2]),
    arrived(0, '1', [3, 4, 5]),
    allocated(0, '0', [0]),
    allocated(0, '1', [1, 2]),
    stepEnd(0, [], collectives(9, 2, 8)),
    allocated(1, '0', [3]),
    stepEnd(1, [], collectives(11, 1, 4)),
  ];
  const tensorParallel = {layer: 1, step: 1, ranks: [
    {o_proj: watched([0.5, -0.25, 1], [0.75, 0.25, 1.5], 4, 0.1234, 0.5),
     down_proj: watched([1, 2, 3], [0.5, 2.5, 3.5], 3, 0.2, 0.6)},
    {o_proj: watched([0.25, 0.5, 0.5], [0.75, 0.25, 1.5], 4, 0.1, 0.4),
     down_proj: watched([-0.5, 0.5, 0.5], [0.5, 2.5, 3.5], 3, 0.3, 0.7)},
  ]};
  return {events, outputs: [], tensor_parallel: watch ? tensorParallel : undefined};
}

test('span, counted and terms', () => {
  assert.deepEqual([span([0, 6]), span([2, 3])], ['0–5', '2']);
  assert.deepEqual([counted('query head', [0, 6]), counted('KV head', [2, 3])], ['query heads 0–5', 'KV head 2']);
  assert.equal(terms(['0.8759', '-0.7191', '0.1']), '0.8759 + (-0.7191) + 0.1');
});

test('tensorRun: requests in order of arrival with all their blocks, the steps, the element size', () => {
  const run = tensorRun(data());
  assert.deepEqual(run.order, ['0', '1']);
  assert.deepEqual([...run.blocks], [['0', [0, 3]], ['1', [1, 2]]]);
  assert.equal(run.steps.length, 2);
  assert.equal(run.elementBytes, 4);
  assert.equal(run.watched.layer, 1);
  assert.equal(tensorRun(data({watch: false})).watched, null);
});

test('reduction: the partials\' sum against the all-reduced vector on every rank', () => {
  const run = tensorRun(data());
  const red = reduction(run, 'o_proj');
  assert.deepEqual([red.sum, red.dims, red.same, red.agrees], [[0.75, 0.25, 1.5], 3, [true, true, true], true]);
  run.watched.ranks[1].o_proj.reduced = [0.75, 0.3, 1.5];
  assert.deepEqual([reduction(run, 'o_proj').same, reduction(run, 'o_proj').agrees], [[true, false, true], false]);
});

test('weightShares and kvPoolSize', () => {
  const run = tensorRun(data());
  assert.deepEqual(weightShares(run), [{rank: 0, count: 168, share: 0.5}, {rank: 1, count: 168, share: 0.5}]);
  assert.deepEqual(kvPoolSize(run, run.ranks[0]), {elements: 64, bytes: 256});
});

test('readoutText: the split, each rank, the watched layer, the blocks and the time', () => {
  assert.equal(readoutText(tensorRun(data())), [
    'tensor_parallel_size 2 (split: even): 4 query heads and 2 KV heads of dim 2, 2 layers',
    'rank 0: query heads 0–1, KV head 0, MLP neurons 0–2, vocabulary ids 0–4',
    '  weights: qkv_proj 8×8, o_proj 8×4, gate_up_proj 6×8, down_proj 8×3, embed_tokens 5×8, lm_head 5×8',
    '  KV pool: 2×2×4×2×1×2',
    'rank 1: query heads 2–3, KV head 1, MLP neurons 3–5, vocabulary ids 5–9',
    '  weights: qkv_proj 8×8, o_proj 8×4, gate_up_proj 6×8, down_proj 8×3, embed_tokens 5×8, lm_head 5×8',
    '  KV pool: 2×2×4×2×1×2',
    'per layer: rank 0 holds 168 weights (50.0%), rank 1 holds 168 (50.0%)',
    'layer 1, step 1 (the batch\'s last token row):',
    '  o_proj: 4 + 4 input columns; dim 0: 0.5000 + 0.2500 = 0.7500 (all-reduced 0.7500)',
    '  down_proj: 3 + 3 input columns; dim 0: 1.0000 + (-0.5000) = 0.5000 (all-reduced 0.5000)',
    '  all 3 dims of both: the partials add up to the all-reduced vector within 1e-4, on every rank',
    '  o_proj time: rank 0 matmul 0.123 ms, all-reduce 0.500 ms; rank 1 matmul 0.100 ms, all-reduce 0.400 ms',
    '  down_proj time: rank 0 matmul 0.200 ms, all-reduce 0.600 ms; rank 1 matmul 0.300 ms, all-reduce 0.700 ms',
    'KV blocks (each block on every rank: KV head 0 on rank 0, KV head 1 on rank 1):',
    '  request 0: blocks 0, 3',
    '  request 1: blocks 1, 2',
    'collectives: 9–11 per step, 2 steps; rank 0 spent 3.0 ms in them of 12.0 ms forward (25.0%)',
  ].join('\n'));
});

test('watchedLines reports a mismatch, or no watched layer', () => {
  const run = tensorRun(data());
  run.watched.ranks[0].down_proj.reduced = [0.5, 2.6, 3.5];
  assert.equal(watchedLines(run)[3],
    '  MISMATCH: in some of the 3 dims the partials do not add up to the all-reduced vector');
  assert.deepEqual(watchedLines(tensorRun(data({watch: false}))), ['no layer was watched']);
});

test('rankLines, kvLines and timingLine on equal collective counts', () => {
  const run = tensorRun(data());
  assert.equal(rankLines(run).length, 7);
  assert.equal(kvLines(run)[0], 'KV blocks (each block on every rank: KV head 0 on rank 0, KV head 1 on rank 1):');
  run.steps = run.steps.map((s) => ({...s, num_collectives: 9}));
  assert.match(timingLine(run), /^collectives: 9 per step, 2 steps;/);
});

test('weightParts: fused weights put each rank\'s piece of every part', () => {
  const run = tensorRun(data());
  assert.deepEqual(weightParts(run, 'qkv_proj'), [
    {rank: 0, size: 4, label: 'q 0–1'}, {rank: 1, size: 4, label: 'q 2–3'},
    {rank: 0, size: 2, label: 'k 0'}, {rank: 1, size: 2, label: 'k 1'},
    {rank: 0, size: 2, label: 'v 0'}, {rank: 1, size: 2, label: 'v 1'},
  ]);
  assert.deepEqual(weightParts(run, 'gate_up_proj').map((p) => p.label), ['gate 0–2', 'gate 3–5', 'up 0–2', 'up 3–5']);
  assert.deepEqual(weightParts(run, 'lm_head').map((p) => p.label), ['ids 0–4', 'ids 5–9']);
});

test('weightLayout: the full matrix and the split it is drawn with', () => {
  const run = tensorRun(data());
  const o = weightLayout(run, 'o_proj');
  assert.equal(o.info.kind, 'row-parallel');
  assert.deepEqual([o.local, o.full, o.along], [[[8, 4], [8, 4]], [8, 8], 'input columns']);
  assert.deepEqual(o.drawn, [{rank: 0, size: 4, label: 'heads 0–1'}, {rank: 1, size: 4, label: 'heads 2–3'}]);
  assert.deepEqual(weightLayout(run, 'qkv_proj').full, [16, 8]);
});

test('weightLayout falls back to one part per rank when the parts do not fit the shapes', () => {
  const ranks = [rank(0), rank(1)];
  ranks[0].weights.down_proj = [8, 2];
  const down = weightLayout(tensorRun(data({ranks})), 'down_proj');
  assert.deepEqual(down.full, [8, 5]);
  assert.deepEqual(down.drawn, [{rank: 0, size: 2, label: 'rank 0'}, {rank: 1, size: 3, label: 'rank 1'}]);
});
