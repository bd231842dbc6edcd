import {test} from 'node:test';
import assert from 'node:assert/strict';
import {BATCHES, SEQ_LENS, CP_SIZES, shortTokens, ranks, tokens, flop, valueText, shortText, figureLine,
  nearestEp, query, rankBars, a2aText, epHeader, cpRows, cpBars, cpHeader, readoutLines}
  from '../../kvscope/scope/static/js/logic/expert-context-parallelism.js';

const fig = (key, value, unit, formula = 'f', source = 's') => ({key, label: key.replaceAll('_', ' '), value, unit, formula, source});

// A toy answer of /scope/api/parallel-math: a model of 4 experts over 2 ranks, and two
// models' context-parallel figures.
const DATA = {
  note: 'computed, not run',
  models: [{key: 'toy', name: 'Toy-MoE', num_experts: 4, experts_per_token: 2, num_layers: 3, ep_sizes: [1, 2, 4]}],
  expert_parallel: {
    model: 'toy', name: 'Toy-MoE', ep: 2, batch: 1, one_device_bytes: 4096,
    ranks: [{rank: 0, experts: [0, 2], expert_bytes: 1024, dense_bytes: 1024},
            {rank: 1, experts: [2, 4], expert_bytes: 1024, dense_bytes: 1024}],
    figures: [fig('params_per_expert', 96, 'params', '3 × 4 × 8', 'computed from the published config.json'),
              fig('expert_share', 0.5, 'fraction'),
              fig('tokens_per_expert', 0.5, 'tokens'),
              fig('all_to_all_bytes_per_layer', 16, 'bytes'),
              fig('all_to_all_bytes_per_step', 3 * 1024 * 1024, 'bytes')],
  },
  context_parallel: {
    cp: 2, seq_len: 4096,
    models: [
      {name: 'tiny', loaded: true, dtype: 'float32',
       figures: [fig('kv_bytes_per_token', 512, 'bytes'), fig('kv_bytes_sequence', 2 * 1024 * 1024, 'bytes'),
                 fig('kv_bytes_per_rank', 1024 * 1024, 'bytes'), fig('ring_bytes_received_per_rank', 1024 * 1024, 'bytes'),
                 fig('attention_flops_per_rank', 4.5e15, 'flop'), fig('attention_flops_busiest_contiguous', 999, 'flop')]},
      {name: 'Big', loaded: false, dtype: 'bfloat16',
       figures: [fig('kv_bytes_per_token', 1024, 'bytes'), fig('kv_bytes_sequence', 4 * 1024 * 1024, 'bytes'),
                 fig('kv_bytes_per_rank', 2 * 1024 * 1024, 'bytes'), fig('ring_bytes_received_per_rank', 2 * 1024 * 1024, 'bytes'),
                 fig('attention_flops_per_rank', 1234, 'flop'), fig('attention_flops_busiest_contiguous', 12345678, 'flop')]},
    ],
  },
};

test('slider stops', () => {
  assert.equal(BATCHES[0], 1);
  assert.equal(BATCHES[8], 256);
  assert.equal(BATCHES.at(-1), 16384);
  assert.deepEqual([SEQ_LENS[0], SEQ_LENS[5], SEQ_LENS.at(-1)], [4096, 131072, 1048576]);
  assert.equal(SEQ_LENS.length, 9);
  assert.deepEqual(CP_SIZES, [1, 2, 4, 8]);
});

test('words for the sliders', () => {
  assert.equal(shortTokens(4096), '4k');
  assert.equal(shortTokens(131072), '128k');
  assert.equal(shortTokens(1048576), '1M');
  assert.equal(shortTokens(512), '512');
  assert.equal(ranks(1), '1 rank');
  assert.equal(ranks(8), '8 ranks');
  assert.equal(tokens(1), '1 token');
  assert.equal(tokens(131072), '131,072 tokens');
});

test('flop: decimal prefixes, three significant digits', () => {
  assert.equal(flop(999), '999 FLOP');
  assert.equal(flop(1234), '1.23 kFLOP');
  assert.equal(flop(12345678), '12.3 MFLOP');
  assert.equal(flop(4.5e15), '4.50 PFLOP');
  assert.equal(flop(4503633987108864), '4.50 PFLOP');
  assert.equal(flop(2.9e20), '290 EFLOP');
});

test('valueText and shortText by unit', () => {
  assert.equal(valueText(fig('a', 176160768, 'params')), '176,160,768');
  assert.equal(valueText(fig('a', 8, 'experts')), '8');
  assert.equal(valueText(fig('a', 0.9656256314690496, 'fraction')), '96.6%');
  assert.equal(valueText(fig('a', 64, 'tokens')), '64');
  assert.equal(valueText(fig('a', 0.25, 'tokens')), '0.25');
  assert.equal(valueText(fig('a', 1000, 'bytes')), '1,000 B');
  assert.equal(valueText(fig('a', 7340032, 'bytes')), '7,340,032 B (7.00 MiB)');
  assert.equal(shortText(fig('a', 7340032, 'bytes')), '7.00 MiB');
  assert.equal(shortText(fig('a', 4.5e15, 'flop')), '4.50 PFLOP');
  assert.equal(figureLine(fig('params_per_expert', 96, 'params', '3 × 4 × 8', 'computed')),
    'params per expert: 96 = 3 × 4 × 8 [computed]');
});

test('nearestEp: the largest size that still splits the experts, not above the current one', () => {
  assert.equal(nearestEp([1, 2, 3, 4, 5, 6], 8), 6);
  assert.equal(nearestEp([1, 2, 4, 8], 6), 4);
  assert.equal(nearestEp([1, 2, 4, 8], 3), 2);
  assert.equal(nearestEp([1, 2, 4, 8], 8), 8);
});

test('query: the API parameters', () => {
  assert.equal(query({model: 'qwen1.5-moe-a2.7b', ep: 3, batch: 256, cp: 4, seqLen: 131072}),
    'model=qwen1.5-moe-a2.7b&ep=3&batch=256&cp=4&seq_len=131072');
});

test('rankBars: each rank against one device', () => {
  const bars = rankBars(DATA.expert_parallel);
  assert.deepEqual(bars.map((b) => [b.rank, b.densePct, b.expertPct]), [[0, 25, 25], [1, 25, 25]]);
  assert.equal(bars[1].label,
    'rank 1: experts 2–3, 1.00 KiB of experts + 1.00 KiB replicated = 2.00 KiB (50.0% of 4.00 KiB on one device)');
  const one = rankBars({...DATA.expert_parallel, ranks: [{rank: 0, experts: [5, 6], expert_bytes: 0, dense_bytes: 0}]});
  assert.match(one[0].label, /^rank 0: expert 5, /);
});

test('a2aText and epHeader', () => {
  assert.equal(a2aText(DATA.expert_parallel),
    'All-to-all, all ranks together: 16 B per MoE layer per step, 3.00 MiB per step over every layer; '
    + 'each expert expects 0.50 tokens a step (computed, assuming uniform routing).');
  assert.equal(epHeader(DATA),
    'expert parallelism: Toy-MoE, 4 experts (top-2) in each of 3 layers, over 2 ranks, batch of 1 token per step');
});

test('cpRows and cpBars', () => {
  const rows = cpRows(DATA.context_parallel);
  assert.deepEqual(rows.map((r) => [r.name, r.loaded]), [['tiny (the loaded model, float32)', true], ['Big (bfloat16)', false]]);
  assert.deepEqual(rows[0].cells, ['512 B', '2.00 MiB', '1.00 MiB', '1.00 MiB', '4.50 PFLOP', '999 FLOP']);
  assert.deepEqual(rows[1].cells, ['1.00 KiB', '4.00 MiB', '2.00 MiB', '2.00 MiB', '1.23 kFLOP', '12.3 MFLOP']);
  const bars = cpBars(DATA.context_parallel);
  assert.deepEqual(bars.map((b) => [b.name, b.rankPct, b.wholePct]), [['tiny', 25, 50], ['Big', 50, 100]]);
  assert.equal(bars[0].label, 'tiny: 1.00 MiB of KV per rank, of 2.00 MiB for the whole sequence');
  assert.equal(cpHeader(DATA.context_parallel), 'context parallelism: one sequence of 4,096 tokens over 2 ranks');
});

test('readoutLines: every figure with its formula and source', () => {
  const lines = readoutLines(DATA);
  assert.equal(lines.length, 1 + 1 + 5 + 2 + 1 + 2 * (1 + 6));
  assert.equal(lines[0], 'computed, not run');
  assert.equal(lines[2], '  params per expert: 96 = 3 × 4 × 8 [computed from the published config.json]');
  assert.equal(lines[3], '  expert share: 50.0% = f [s]');
  assert.equal(lines[7], '  rank 0: experts 0–1, 1.00 KiB of experts + 1.00 KiB replicated = 2.00 KiB '
    + '(50.0% of 4.00 KiB on one device)');
  assert.equal(lines[9], 'context parallelism: one sequence of 4,096 tokens over 2 ranks');
  assert.equal(lines[10], '  tiny (the loaded model, float32):');
  assert.equal(lines[11], '    kv bytes per token: 512 B = f [s]');
  assert.equal(lines[13], '    kv bytes per rank: 1,048,576 B (1.00 MiB) = f [s]');
  assert.equal(lines[17], '  Big (bfloat16):');
  assert.equal(lines.at(-1), '    attention flops busiest contiguous: 12.3 MFLOP = f [s]');
});
