import {test} from 'node:test';
import assert from 'node:assert/strict';
import {checkSetting, differences, frontier, layout, logTicks, nearest, niceTicks, pointOf,
  readoutLines, runBody, settingDistance, settingLabel, sweepPoints, sweepSummary, tableRow}
  from '../../kvscope/scope/static/js/logic/tuning-lab.js';

const SETTING = {max_num_seqs: 4, max_num_batched_tokens: 256, num_blocks: 64,
                 enable_prefix_caching: true, speculative: 'off', request_rate: null};
const WORKLOAD = {num_requests: 8, input_len: 64, output_len: 24, shared_prefix_len: 32, seed: 0};
const MACHINE = {cpu: 'Test CPU', torch_threads: 2, kernel_isa: 'avx2', model: 'm.gguf',
                 dtype: 'bfloat16', weights: 'dense'};

// A measured point as the server writes it (bench/tuning.py measure_setting).
function raw(setting, {ttft = 500, tpot = 50, tok = 30, steps = 20} = {}) {
  return {
    setting: {...SETTING, ...setting}, workload: WORKLOAD,
    metrics: {requests: 8, completed: 8, failed: 0, duration_s: 2.5, output_tokens: 192,
              prompt_tokens: 512, ttft_ms: {mean: ttft, p99: ttft * 2},
              tpot_ms: {mean: tpot, p99: tpot * 1.5}, itl_ms: {mean: tpot, p99: tpot * 3},
              e2e_ms: {mean: 1500, p99: 2000}, output_throughput: tok, request_throughput: 3.2},
    engine: {steps, preemptions: 0, prefix_cache_hit_rate: 0.4375, draft_acceptance_rate: null},
    budget_wait_s: 0,
  };
}

function sweep(points) {
  return {kind: 'kvscope-tuning-sweep', version: 1, date: '2026-01-01T00:00:00+00:00',
          command: 'kvscope bench sweep', workload: WORKLOAD, machine: MACHINE, points};
}

test('a setting reads as one short label', () => {
  assert.equal(settingLabel(SETTING), 'seqs 4 · budget 256 · 64 blocks · prefix on · ngram off · all at once');
  assert.equal(settingLabel({...SETTING, speculative: 'ngram', request_rate: 2, enable_prefix_caching: false}),
    'seqs 4 · budget 256 · 64 blocks · prefix off · ngram on · 2 req/s');
});

test('the knobs are checked with the server\'s bounds and the workload\'s length', () => {
  assert.deepEqual(checkSetting(SETTING, WORKLOAD), SETTING);
  assert.throws(() => checkSetting({...SETTING, max_num_seqs: 0}, WORKLOAD),
    /max_num_seqs must be a whole number from 1 to 32; got 0/);
  assert.throws(() => checkSetting({...SETTING, max_num_seqs: NaN}, WORKLOAD), /got nothing/);
  assert.throws(() => checkSetting({...SETTING, max_num_batched_tokens: 4096}, WORKLOAD), /from 16 to 2048/);
  assert.throws(() => checkSetting({...SETTING, num_blocks: 2.5}, WORKLOAD), /num_blocks/);
  // 64 + 24 tokens need 6 blocks of 16, 64 + 24 + 4 draft tokens too
  assert.equal(checkSetting({...SETTING, num_blocks: 6}, WORKLOAD).num_blocks, 6);
  assert.throws(() => checkSetting({...SETTING, num_blocks: 5}, WORKLOAD),
    /num_blocks 5 holds 80 tokens, but one request needs 88: give the pool at least 6 blocks/);
  assert.throws(() => checkSetting({...SETTING, request_rate: 0}, WORKLOAD), /request_rate/);
  assert.equal(checkSetting({...SETTING, request_rate: 4}, WORKLOAD).request_rate, 4);
  assert.deepEqual(runBody(SETTING, WORKLOAD), {...SETTING, ...WORKLOAD});
  assert.deepEqual(runBody(SETTING, undefined), SETTING);
});

test('the recorded sweep becomes points; another file is refused', () => {
  const points = sweepPoints(sweep([raw({}), raw({max_num_seqs: 8}, {tok: 60})]));
  assert.equal(points.length, 2);
  assert.deepEqual([points[1].source, points[1].index, points[1].tokPerS, points[1].ttftP99],
    ['recorded', 1, 60, 1000]);
  assert.throws(() => sweepPoints({points: []}), /not a kvscope-tuning-sweep/);
  const lines = sweepSummary(sweep([raw({}), raw({max_num_seqs: 8}, {tok: 60, ttft: 900})]), points);
  assert.match(lines[0], /^2 recorded points, measured 2026-01-01T00:00:00\+00:00 on Test CPU, 2 torch threads/);
  assert.equal(lines[1], 'Workload: 8 requests of 64 prompt tokens (the first 32 shared) and 24 output tokens each, greedy.');
  assert.equal(lines.length, 3);
  const busy = sweepSummary({...sweep([raw({})]), load_average: [6.62, 6.66, 5.09]}, points);
  assert.equal(busy.at(-1), 'The machine\'s load average was 6.62 when the sweep ended (on 2 threads; '
    + 'a busy machine makes single points noisy).');
});

test('the frontier keeps the points nobody beats on both axes', () => {
  const a = pointOf(raw({max_num_seqs: 1}, {tok: 10, ttft: 100}), 'recorded', 0);
  const b = pointOf(raw({max_num_seqs: 2}, {tok: 20, ttft: 300}), 'recorded', 1);
  const c = pointOf(raw({max_num_seqs: 4}, {tok: 15, ttft: 400}), 'recorded', 2);  // beaten by b
  const d = pointOf(raw({max_num_seqs: 8}, {tok: 40, ttft: 1000}), 'live', 0);
  assert.deepEqual(frontier([d, c, b, a], 'ttftMean'), [a, b, d]);
});

test('ticks: round linear steps from 0, and 1-2-5 on a log scale', () => {
  assert.deepEqual(niceTicks(37), [0, 10, 20, 30, 40]);
  assert.deepEqual(niceTicks(4.2), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(logTicks(30, 1000), [50, 100, 200, 500, 1000]);
});

test('layout puts throughput on x and latency on a log y, leaving out missing values', () => {
  const a = pointOf(raw({}, {tok: 20, ttft: 100}), 'recorded', 0);
  const b = pointOf(raw({}, {tok: 40, ttft: 1000}), 'recorded', 1);
  const c = pointOf(raw({}, {tok: 30}), 'live', 0);
  c.ttftMean = null;
  const plot = layout([a, b, c], 'ttftMean', {width: 200, height: 120, pad: {l: 20, r: 0, t: 0, b: 20}});
  assert.equal(plot.dots.length, 2);
  // x: 0..40 over 180 px from 20; y: 100..1000 ms over 100 px, log
  assert.deepEqual(plot.dots.map((d) => [d.x, d.y]), [[110, 100], [200, 0]]);
  assert.deepEqual(plot.xTicks.map((t) => t.v), [0, 10, 20, 30, 40]);
  assert.deepEqual(plot.yTicks.map((t) => t.v), [100, 200, 500, 1000]);
  assert.equal(plot.line, '110,100 200,0');
});

test('the nearest recorded point: the same setting first, else the fewest doublings away', () => {
  const recorded = [raw({max_num_seqs: 1}), raw({max_num_seqs: 4}), raw({max_num_seqs: 8, speculative: 'ngram'})]
    .map((r, i) => pointOf(r, 'recorded', i));
  const same = pointOf(raw({max_num_seqs: 4}), 'live', 0);
  assert.equal(nearest(same, recorded), recorded[1]);
  const six = pointOf(raw({max_num_seqs: 6}), 'live', 1);
  assert.equal(nearest(six, recorded), recorded[1]);  // log2(6/4) < log2(6/8) + 1
  assert.equal(settingDistance(SETTING, {...SETTING, request_rate: 2}), 1);
  assert.equal(settingDistance({...SETTING, request_rate: 2}, {...SETTING, request_rate: 8}), 2);
  assert.deepEqual(differences(SETTING, {...SETTING, num_blocks: 8, speculative: 'ngram'}), ['blocks', 'ngram']);
  assert.equal(nearest(same, []), null);
});

test('the readout states the live figures, the neighbour and both machines', () => {
  const live = pointOf({...raw({max_num_seqs: 4}, {ttft: 612.345, tpot: 48.25, tok: 33.333}), budget_wait_s: 0.5},
    'live', 0);
  const neighbour = pointOf(raw({max_num_seqs: 4}, {ttft: 600, tpot: 50, tok: 30}), 'recorded', 3);
  const lines = readoutLines(live, 1, neighbour, {...MACHINE, dtype: 'float32'}, MACHINE);
  assert.deepEqual(lines, [
    'live point 1: seqs 4 · budget 256 · 64 blocks · prefix on · ngram off · all at once',
    'measured: 8 of 8 requests in 2.50 s; output 33.3 tok/s, 3.20 req/s',
    'TTFT mean 612.3 ms, p99 1224.7 ms; TPOT mean 48.3 ms, p99 72.4 ms; ITL mean 48.3 ms, p99 144.8 ms',
    'engine: 20 steps, 0 preemptions, prefix-cache hit rate 43.8%, draft acceptance –',
    'the run waited 0.50 s for the server\'s own requests; its times include that',
    'nearest recorded point: seqs 4 · budget 256 · 64 blocks · prefix on · ngram off · all at once (same setting): '
      + 'TTFT mean 600.0 ms, TPOT mean 50.0 ms, 30.0 tok/s',
    'live ÷ recorded: TTFT 1.02×, TPOT 0.96×, throughput 1.11×',
    'measured on: Test CPU, 2 torch threads, kernels avx2; m.gguf in float32 (weights dense)',
    'the recorded sweep: Test CPU, 2 torch threads, kernels avx2; m.gguf in bfloat16 (weights dense) '
      + '(not the same: compare the shapes, not the numbers)',
  ]);
  const alone = readoutLines({...live, waitS: 0}, 2, null, MACHINE, null);
  assert.equal(alone[4], 'nearest recorded point: none (the recorded sweep did not load)');
  assert.equal(alone.length, 6);
  assert.equal(readoutLines(live, 1, neighbour, MACHINE, MACHINE).at(-1),
    'the recorded sweep: the same CPU, threads, dtype and weights');
  assert.deepEqual(tableRow(live), ['live 1', live.label, '612.3 ms', '1224.7 ms', '48.3 ms', '72.4 ms',
    '48.3 ms', '33.3', '3.20']);
});
